"""MeshNet's face features: a mesh with exactly ``num_faces`` faces, described face by face.

For each face f with corners a, b, c: its centre m = (a + b + c) / 3, the corners relative to
the centre (a - m, b - m, c - m), the unit normal (b - a) x (c - a) / |.|, and the indices of the
(up to) three faces sharing an edge with it, one per edge, the face's own index where an edge
has no other face (MeshNet's convention).

Real meshes (ShapeNet's OBJ files) are triangle soups with vertices duplicated per material or
UV seam, degenerate and repeated faces, and non-manifold edges. ``mesh_face_features``:

1. welds vertices that coincide (to 1e-6 of the object size) and drops degenerate and repeated faces;
2. simplifies with quadric decimation (fast-simplification) when there are more faces than
   wanted; where that stalls (many small closed parts), merges vertices on a grid first
   (vertex clustering) and decimates again; if even that cannot reach the count, the smallest
   faces are left out;
3. pads with copies of randomly chosen faces (seeded) when there are fewer, as MeshNet does;
4. computes neighbours on the final faces (an edge shared by more than two faces links the
   face to the first other face on it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pretext3d.data.errors import DataFormatError
from pretext3d.data.meshes import Mesh

__all__ = ["MeshFaces", "clean_mesh", "face_neighbours", "fit_face_count", "mesh_face_features"]


@dataclass
class MeshFaces:
    """features: (F, 15) float32 = centre (3) | corners - centre (9) | unit normal (3);
    neighbours: (F, 3) int32 edge-adjacent faces (self where none); ``simplified`` / ``padded``
    say what was done to reach F."""

    features: np.ndarray
    neighbours: np.ndarray
    source_faces: int
    simplified: bool
    padded: int

    @property
    def centers(self) -> np.ndarray:
        return self.features[:, 0:3]

    @property
    def corners(self) -> np.ndarray:
        return self.features[:, 3:12]

    @property
    def normals(self) -> np.ndarray:
        return self.features[:, 12:15]


def clean_mesh(mesh: Mesh, tolerance: float = 1e-6) -> Mesh:
    """Weld coincident vertices, drop unused vertices, degenerate faces and repeated faces."""
    extent = float(np.ptp(mesh.vertices, axis=0).max()) or 1.0
    keys = np.round(mesh.vertices / (tolerance * extent)).astype(np.int64)
    _, first, welded = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    faces = welded.reshape(-1)[mesh.faces]
    distinct = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    vertices = mesh.vertices[first]
    tri = vertices[faces]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    keep = distinct & (area2 > 1e-12 * extent**2)
    _, unique_faces = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    repeated = np.ones(len(faces), bool)
    repeated[unique_faces] = False
    faces = faces[keep & ~repeated]
    used, faces = np.unique(faces, return_inverse=True)
    return Mesh(vertices[used], faces.reshape(-1, 3).astype(np.int64))


def _quadric_decimate(mesh: Mesh, num_faces: int) -> Mesh:
    import fast_simplification

    for _ in range(2):  # a second pass often gets the last few percent
        if len(mesh.faces) <= num_faces:
            break
        vertices, faces = fast_simplification.simplify(mesh.vertices, mesh.faces.astype(np.int32),
                                                       target_count=num_faces)
        mesh = clean_mesh(Mesh(np.asarray(vertices, np.float64), np.asarray(faces, np.int64)))
    return mesh


def _cluster_vertices(mesh: Mesh, cell: float) -> Mesh:
    """Vertex-clustering decimation: vertices in one grid cell merge into their mean."""
    keys = np.floor(mesh.vertices / cell).astype(np.int64)
    _, cluster = np.unique(keys, axis=0, return_inverse=True)
    cluster = cluster.reshape(-1)
    counts = np.bincount(cluster)
    merged = np.zeros((len(counts), 3))
    np.add.at(merged, cluster, mesh.vertices)
    return clean_mesh(Mesh(merged / counts[:, None], cluster[mesh.faces]))


def _decimate(mesh: Mesh, num_faces: int) -> Mesh:
    """At most ``num_faces`` faces if it can be done without cutting holes: quadric
    decimation, and where it stalls (many small closed parts, e.g. a bench's slats, cannot lose
    faces), vertex clustering on a grid growing from 1/256 of the object's size, then quadric
    decimation again."""
    decimated = _quadric_decimate(mesh, num_faces)
    extent = float(np.ptp(mesh.vertices, axis=0).max())
    cell = extent / 256
    while len(decimated.faces) > num_faces and cell < extent / 8:
        clustered = _cluster_vertices(decimated, cell)
        if len(clustered.faces) > 0:
            decimated = _quadric_decimate(clustered, num_faces)
        cell *= 2
    return decimated


def fit_face_count(mesh: Mesh, num_faces: int, seed: int = 0, origin: str = "mesh") -> tuple[Mesh, bool, int]:
    """The mesh with exactly ``num_faces`` faces: (mesh, was simplified, faces padded)."""
    mesh = clean_mesh(mesh)
    if len(mesh.faces) == 0:
        raise DataFormatError(origin, "has no face of positive area")
    simplified = len(mesh.faces) > num_faces
    if simplified:
        decimated = _decimate(mesh, num_faces)
        mesh = decimated if len(decimated.faces) > 0 else mesh
        if len(mesh.faces) > num_faces:  # decimation stalled: keep the largest faces
            tri = mesh.vertices[mesh.faces]
            area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
            largest = np.sort(np.argsort(-area2, kind="stable")[:num_faces])
            mesh = Mesh(mesh.vertices, mesh.faces[largest])
    padded = num_faces - len(mesh.faces)
    if padded > 0:
        rng = np.random.default_rng(seed)
        copies = rng.choice(len(mesh.faces), size=padded, replace=True)
        mesh = Mesh(mesh.vertices, np.concatenate([mesh.faces, mesh.faces[copies]]))
    return mesh, simplified, max(padded, 0)


def face_neighbours(faces: np.ndarray) -> np.ndarray:
    """(F, 3) int32: for edges (a, b), (b, c), (c, a) of each face, the first other face (in
    face order) with that edge, or the face itself. A repeated face (padding) is nobody's
    neighbour and has its original's neighbours (itself where the original has none)."""
    n = len(faces)
    _, first, group = np.unique(np.sort(faces, axis=1), axis=0, return_index=True, return_inverse=True)
    original = first[group.reshape(-1)]  # (F,) the first face with the same corners
    slots = ((0, 1), (1, 2), (2, 0))
    faces_on_edge: dict[tuple[int, int], list[int]] = {}
    for f in np.flatnonzero(original == np.arange(n)):  # a plain loop: F is ~1k, this takes ~ms
        for i, j in slots:
            a, b = faces[f, i], faces[f, j]
            faces_on_edge.setdefault((min(a, b), max(a, b)), []).append(int(f))
    neighbours = np.empty((n, 3), np.int32)
    for f in range(n):
        for slot, (i, j) in enumerate(slots):
            a, b = faces[f, i], faces[f, j]
            on_edge = faces_on_edge[(min(a, b), max(a, b))]
            neighbours[f, slot] = next((g for g in on_edge if g != original[f]), f)
    return neighbours


def mesh_face_features(mesh: Mesh, num_faces: int = 1024, seed: int = 0, origin: str = "mesh") -> MeshFaces:
    """MeshNet inputs for a mesh (normalise it first): see the module docstring."""
    source_faces = len(mesh.faces)
    fitted, simplified, padded = fit_face_count(mesh, num_faces, seed, origin)
    tri = fitted.vertices[fitted.faces]  # (F, 3, 3)
    centre = tri.mean(1)
    corners = (tri - centre[:, None]).reshape(-1, 9)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    features = np.concatenate([centre, corners, normal], axis=1).astype(np.float32)
    return MeshFaces(features, face_neighbours(fitted.faces), source_faces, simplified, padded)
