"""What a search query can be, read with the same safe readers as everything else: a mesh file,
a point-cloud file, an image file, or an array. Every reader names the file and the problem
(``QueryError``) instead of raising whatever the parser raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pretext3d.data.errors import DataFormatError
from pretext3d.data.meshes import MESH_SUFFIXES, Mesh, load_mesh
from pretext3d.data.readers import read_text_table

__all__ = ["QueryError", "Query", "read_query_file", "query_from_value", "CLOUD_SUFFIXES", "IMAGE_SUFFIXES",
           "QUERY_SUFFIXES", "MAX_QUERY_POINTS"]

CLOUD_SUFFIXES = (".npy", ".xyz", ".txt", ".pts")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# .ply is a mesh when it has faces, else a cloud
QUERY_SUFFIXES = tuple(sorted({*MESH_SUFFIXES, *CLOUD_SUFFIXES, *IMAGE_SUFFIXES}))
MAX_QUERY_POINTS = 2_000_000  # a cloud query larger than this is refused (memory), not sampled
MAX_IMAGE_PIXELS = 40_000_000  # PIL's decompression-bomb guard, made an error


class QueryError(ValueError):
    """A query that cannot be searched with; the message names it and the problem."""


@dataclass
class Query:
    """One query, read: kind "points" (cloud (N, 3)), "image" (a PIL image) or "mesh" (a Mesh)."""

    kind: str
    value: Any
    origin: str


def _cloud(points: np.ndarray, origin: str) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3 or len(points) == 0:
        raise QueryError(f"{origin}: a point cloud must be (N, 3) (or (N, 6) with normals) with N >= 1, got shape "
                         f"{points.shape}")
    if len(points) > MAX_QUERY_POINTS:
        raise QueryError(f"{origin}: holds {len(points):,d} points; a query takes at most {MAX_QUERY_POINTS:,d}")
    if not np.issubdtype(points.dtype, np.number):
        raise QueryError(f"{origin}: holds {points.dtype} values, not numbers")
    points = points[:, :3].astype(np.float64)
    if not np.isfinite(points).all():
        raise QueryError(f"{origin}: holds NaN or infinite coordinates")
    if np.ptp(points, axis=0).max() == 0:
        raise QueryError(f"{origin}: every point is the same point: nothing to search with")
    return points


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise QueryError(f"{path}: not a plain numeric .npy array ({err})") from None
    except (OSError, EOFError) as err:
        raise QueryError(f"{path}: is not a readable .npy file ({err})") from None


def _read_ply(path: Path) -> Query:
    """A PLY with faces is a mesh; one with vertices only is a cloud."""
    import trimesh

    try:
        loaded = trimesh.load(str(path), process=False)
    except Exception as err:  # trimesh raises many types for malformed files
        raise QueryError(f"{path}: could not be parsed as PLY ({type(err).__name__}: {err})") from None
    faces = getattr(loaded, "faces", None)
    if faces is not None and len(faces):
        return Query("mesh", _mesh(path), str(path))
    vertices = getattr(loaded, "vertices", None)
    if vertices is None:
        raise QueryError(f"{path}: holds neither faces nor vertices")
    return Query("points", _cloud(np.asarray(vertices), str(path)), str(path))


def _mesh(path: Path) -> Mesh:
    try:
        mesh = load_mesh(path)
    except DataFormatError as err:
        raise QueryError(str(err)) from None
    if not np.isfinite(mesh.vertices).all():
        raise QueryError(f"{path}: holds NaN or infinite vertex coordinates")
    return mesh


def _image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            if opened.width * opened.height > MAX_IMAGE_PIXELS:
                raise QueryError(f"{path}: {opened.width} x {opened.height} pixels; a query image takes at most "
                                 f"{MAX_IMAGE_PIXELS:,d} pixels")
            opened.load()
            return opened.convert("RGB")
    except QueryError:
        raise
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError) as err:
        raise QueryError(f"{path}: not a readable image ({err})") from None


def read_query_file(path: str | Path) -> Query:
    """A query file by its suffix: meshes (.off .obj .stl; .ply with faces), clouds (.npy, .xyz
    .txt .pts as 'x y z [nx ny nz]' rows; .ply without faces) and images (.png .jpg .jpeg .webp
    .bmp). Raises QueryError naming the file and the problem."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise QueryError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise QueryError(f"{path}: is empty")
    if suffix not in QUERY_SUFFIXES:
        raise QueryError(f"{path}: not a query file type (expected one of {' '.join(QUERY_SUFFIXES)})")
    if suffix in IMAGE_SUFFIXES:
        return Query("image", _image(path), str(path))
    if suffix == ".ply":
        return _read_ply(path)
    if suffix in MESH_SUFFIXES:
        return Query("mesh", _mesh(path), str(path))
    if suffix == ".npy":
        return Query("points", _cloud(_read_npy(path), str(path)), str(path))
    try:
        table = read_text_table(path, (3, 4, 6, 7), "x y z, x y z value, or x y z nx ny nz")
    except DataFormatError as err:
        raise QueryError(str(err)) from None
    return Query("points", _cloud(table, str(path)), str(path))


def query_from_value(value: Any) -> Query:
    """An in-memory query: (N, 3) points, an (H, W[, C]) image array or a PIL image, a Mesh or a
    trimesh mesh, or a file path."""
    if isinstance(value, (str, Path)):
        return read_query_file(value)
    if isinstance(value, Mesh):
        return Query("mesh", value, "mesh")
    if hasattr(value, "vertices") and hasattr(value, "faces"):
        return Query("mesh", Mesh(np.asarray(value.vertices, np.float64), np.asarray(value.faces, np.int64)), "mesh")
    if type(value).__module__.startswith("PIL."):
        return Query("image", value.convert("RGB"), "image")
    array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    if array.ndim == 2 and array.shape[1] in (3, 6) and np.issubdtype(array.dtype, np.floating):
        return Query("points", _cloud(array, "points"), "points")
    if array.ndim == 3 and array.shape[2] in (1, 3, 4) or (array.ndim == 2 and np.issubdtype(array.dtype, np.integer)):
        return Query("image", array, "image")
    raise QueryError(f"a query must be a file path, (N, 3) float points, an (H, W, C) image or a mesh; got an array "
                     f"of shape {array.shape} ({array.dtype})")
