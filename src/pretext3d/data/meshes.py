"""Triangle meshes: a small container and a validating reader (trimesh underneath)."""

from __future__ import annotations

import io

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretext3d.data.errors import DataFormatError

__all__ = ["Mesh", "load_mesh", "normalize_mesh", "MESH_SUFFIXES"]

MESH_SUFFIXES = (".off", ".obj", ".ply", ".stl")


@dataclass
class Mesh:
    """vertices: (V, 3) float64; faces: (F, 3) int64; face_labels: optional (F,) int64 part ids."""

    vertices: np.ndarray
    faces: np.ndarray
    face_labels: np.ndarray | None = None

    def validate(self, origin: str = "mesh") -> "Mesh":
        """Raise DataFormatError naming ``origin`` if the mesh cannot be sampled."""
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3 or len(self.vertices) == 0:
            raise DataFormatError(origin, "has no vertices")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3 or len(self.faces) == 0:
            raise DataFormatError(origin, f"has {len(self.vertices)} vertices but no faces (a point cloud? "
                                  "give point clouds as .npy/.ply/.xyz/.txt, or an npz/h5 data set)")
        if not np.isfinite(self.vertices).all():
            raise DataFormatError(origin, "has NaN or infinite vertex coordinates")
        if self.faces.min() < 0 or self.faces.max() >= len(self.vertices):
            raise DataFormatError(origin, "has a face index outside the range of its vertices")
        if self.face_labels is not None and len(self.face_labels) != len(self.faces):
            raise DataFormatError(origin, "has a different number of face labels and faces")
        a, b, c = (self.vertices[self.faces[:, i]] for i in range(3))
        if not (np.linalg.norm(np.cross(b - a, c - a), axis=1) > 0).any():
            raise DataFormatError(origin, "has no face of positive area")
        return self


def _check_off_header(path: Path, text: str) -> None:
    """Clear messages for the usual OFF defects (trimesh's own are cryptic)."""
    tokens = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    tokens = [t for t in tokens if t]
    if not tokens:
        raise DataFormatError(path, "is empty")
    head = tokens[0]
    if not head.upper().startswith("OFF"):
        raise DataFormatError(path, f"has a wrong header: expected 'OFF', found {head.split()[0]!r}")
    counts = head[3:].split() or (tokens[1].split() if len(tokens) > 1 else [])  # ModelNet writes 'OFF8 12 0'
    body_start = 1 if head[3:].split() else 2
    try:
        n_vertices, n_faces = int(counts[0]), int(counts[1])
    except (IndexError, ValueError):
        raise DataFormatError(path, "has no vertex/face counts after the OFF header") from None
    if n_faces == 0:
        raise DataFormatError(path, "has no faces")
    available = len(tokens) - body_start
    if available < n_vertices + n_faces:
        raise DataFormatError(
            path, f"is truncated: the header declares {n_vertices} vertices and {n_faces} faces, "
            f"the file has {available} data lines"
        )


def load_mesh(path: str | Path) -> Mesh:
    """Read an OFF/OBJ/PLY/STL file as one triangle mesh (groups merged, quads split).

    Raises DataFormatError naming the file when it is empty, truncated, has a wrong header,
    no faces, or NaN coordinates.
    """
    import trimesh

    path = Path(path)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise DataFormatError(path, f"is not a mesh file (expected one of {', '.join(MESH_SUFFIXES)})")
    if path.is_symlink() and not path.exists():
        raise DataFormatError(path, "is a symbolic link to a missing file (or a loop of links)")
    if path.is_dir():
        raise DataFormatError(path, "is a folder, not a mesh file")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise DataFormatError(path, f"cannot be read ({err.strerror})") from None
    if size == 0:
        raise DataFormatError(path, "is empty")
    if path.suffix.lower() == ".off":
        _check_off_header(path, path.read_text(errors="replace"))
    try:
        str(path).encode("utf-8")
        source, options = str(path), {}
    except UnicodeEncodeError:  # a file name that is not UTF-8: hand trimesh the bytes, not the name
        source, options = io.BytesIO(path.read_bytes()), {"file_type": path.suffix.lower()[1:]}
    try:
        loaded = trimesh.load(source, force="mesh", process=False, **options)
    except Exception as err:  # trimesh raises many types for malformed files
        raise DataFormatError(path, f"could not be parsed ({type(err).__name__}: {err})") from None
    vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), dtype=np.float64)
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    if len(vertices) == 0:  # forcing a mesh drops the vertices of a file without faces: count them for the message
        vertices = _loose_vertices(trimesh, source, options)
    return Mesh(vertices.reshape(-1, 3), faces).validate(str(path))


def _loose_vertices(trimesh, source, options: dict) -> np.ndarray:
    """The vertices of a file trimesh reads as a point cloud (none when it cannot)."""
    if isinstance(source, io.BytesIO):
        source.seek(0)
    try:
        loaded = trimesh.load(source, process=False, **options)
    except Exception:  # the forced read already failed to find vertices; this only refines the message
        return np.zeros((0, 3))
    return np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), dtype=np.float64)


def normalize_mesh(mesh: Mesh) -> tuple[Mesh, np.ndarray, float]:
    """The mesh centred on its area-weighted surface centroid and scaled so that its farthest
    vertex is at distance 1 (the unit-sphere normalisation of point clouds, for meshes).

    Returns (normalised mesh, centre (3,), scale): ``normalised = (vertices - centre) / scale``.
    """
    tri = mesh.vertices[mesh.faces]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    centre = (tri.mean(1) * area[:, None]).sum(0) / area.sum()
    used = np.unique(mesh.faces)
    scale = float(np.linalg.norm(mesh.vertices[used] - centre, axis=1).max())
    vertices = (mesh.vertices - centre) / scale
    return Mesh(vertices, mesh.faces, mesh.face_labels), centre, scale
