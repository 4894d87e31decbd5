"""MeshNet face features: known answers on small solids, cleaning, simplification, padding."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from pretext3d.data.errors import DataFormatError
from pretext3d.data.meshes import Mesh, load_mesh, normalize_mesh
from pretext3d.data.meshnet import clean_mesh, face_neighbours, fit_face_count, mesh_face_features
from tests.conftest import shared_data


def tetrahedron() -> Mesh:
    vertices = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float)
    return Mesh(vertices, np.array([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]]))


def cube() -> Mesh:
    box = trimesh.creation.box()
    return Mesh(np.asarray(box.vertices, float), np.asarray(box.faces, np.int64))


def assert_neighbours_are_mutual(faces: np.ndarray, neighbours: np.ndarray) -> None:
    for f, row in enumerate(neighbours):
        for g in row:
            if g != f:
                assert f in neighbours[g], (f, g)
                assert len(set(faces[f]) & set(faces[g])) == 2  # they share an edge


def test_tetrahedron_known_answer():
    mesh = tetrahedron()
    result = mesh_face_features(mesh, 4)
    assert not result.simplified and result.padded == 0
    for f in range(4):
        assert sorted(result.neighbours[f]) == sorted(set(range(4)) - {f})  # every face touches the other three
    tri = mesh.vertices[mesh.faces]
    np.testing.assert_allclose(result.centers, tri.mean(1), atol=1e-6)
    np.testing.assert_allclose(result.corners.reshape(4, 3, 3), tri - tri.mean(1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(result.normals, axis=1), 1.0, atol=1e-6)
    # face 0 by hand: (b - a) x (c - a) = (0, -2, -2) x (-2, 0, -2) = (4, 4, -4), pointing away
    # from the opposite corner (-1, -1, 1)
    np.testing.assert_allclose(result.normals[0], np.array([1, 1, -1]) / np.sqrt(3), atol=1e-6)


def test_cube_neighbours_are_edge_adjacent_and_mutual():
    mesh = cube()
    result = mesh_face_features(mesh, 12)
    assert (result.neighbours != np.arange(12)[:, None]).all()  # closed: every edge has a partner
    assert_neighbours_are_mutual(mesh.faces, result.neighbours)


def test_open_edges_point_to_the_face_itself():
    square = Mesh(np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float), np.array([[0, 1, 2], [0, 2, 3]]))
    neighbours = face_neighbours(square.faces)
    np.testing.assert_array_equal(np.sort(neighbours, axis=1), [[0, 0, 1], [0, 1, 1]])


def test_padding_an_open_mesh_keeps_self_for_open_edges():
    square = Mesh(np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float), np.array([[0, 1, 2], [0, 2, 3]]))
    result = mesh_face_features(square, 6, seed=0)
    assert result.padded == 4
    for copy in range(2, 6):
        original = next(f for f in range(2) if np.allclose(result.features[f], result.features[copy]))
        other = 1 - original
        assert sorted(result.neighbours[copy]) == sorted([other, copy, copy])  # shared edge, then itself


def test_padding_copies_faces_and_nobody_points_at_a_copy():
    mesh = cube()
    result = mesh_face_features(mesh, 20, seed=3)
    assert result.padded == 8 and result.features.shape == (20, 15) and result.neighbours.shape == (20, 3)
    assert result.neighbours[:12].max() < 12  # originals link to originals
    for copy in range(12, 20):
        original = next(f for f in range(12) if np.allclose(result.features[f], result.features[copy]))
        np.testing.assert_array_equal(np.sort(result.neighbours[copy]), np.sort(result.neighbours[original]))


def test_cleaning_welds_soups_and_drops_double_sided_and_degenerate_faces():
    box = cube()
    soup = Mesh(box.vertices[box.faces].reshape(-1, 3), np.arange(36).reshape(12, 3))  # no shared vertices
    flipped = soup.faces[:, ::-1] + 36  # every face again, reversed (ShapeNet's double-sided faces)
    degenerate = np.array([[0, 0, 1]])
    messy = Mesh(np.concatenate([soup.vertices, soup.vertices]), np.concatenate([soup.faces, flipped, degenerate]))
    cleaned = clean_mesh(messy)
    assert len(cleaned.vertices) == 8 and len(cleaned.faces) == 12
    result = mesh_face_features(messy, 12)
    assert (result.neighbours != np.arange(12)[:, None]).all()


def test_simplification_reaches_the_count_and_keeps_the_shape():
    sphere = trimesh.creation.icosphere(subdivisions=4)  # 5120 faces
    mesh = Mesh(np.asarray(sphere.vertices, float), np.asarray(sphere.faces, np.int64))
    result = mesh_face_features(mesh, 512)
    assert result.simplified and result.features.shape == (512, 15)
    assert result.padded < 512 * 0.1
    radius = np.linalg.norm(result.centers, axis=1)
    assert np.abs(radius - 1).max() < 0.08  # face centres still lie near the unit sphere
    real = 512 - result.padded
    assert (result.neighbours[:real] != np.arange(real)[:, None]).mean() > 0.95


def test_many_small_parts_are_merged_not_cut():
    """A 'bench' of 400 separate boxes (4800 faces): decimation alone stalls at 4 faces per
    part; vertex clustering merges parts so the count is reached without dropping faces."""
    parts = [trimesh.creation.box(extents=(0.02, 0.3, 0.02)).apply_translation((i * 0.025, 0, 0)) for i in range(400)]
    merged = trimesh.util.concatenate(parts)
    mesh = Mesh(np.asarray(merged.vertices, float), np.asarray(merged.faces, np.int64))
    fitted, simplified, padded = fit_face_count(mesh, 1024)
    assert simplified and len(fitted.faces) == 1024
    # the simplified bench spans the same box
    np.testing.assert_allclose(fitted.vertices[np.unique(fitted.faces)].min(0), mesh.vertices.min(0), atol=0.05)
    np.testing.assert_allclose(fitted.vertices[np.unique(fitted.faces)].max(0), mesh.vertices.max(0), atol=0.05)


def test_mesh_without_area_is_an_error_naming_it():
    flat = Mesh(np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], float), np.array([[0, 1, 2]]))
    with pytest.raises(DataFormatError, match="thing.off.*no face of positive area"):
        mesh_face_features(flat, 8, origin="thing.off")


def test_shapenet_meshes_give_well_connected_features():
    files = sorted(shared_data("shapenet_mini").glob("*/*/models/*.obj"))[::9]
    for file in files:
        result = mesh_face_features(normalize_mesh(load_mesh(file))[0], 1024, origin=str(file))
        assert result.features.shape == (1024, 15) and np.isfinite(result.features).all()
        assert result.neighbours.min() >= 0 and result.neighbours.max() < 1024
        assert np.abs(result.centers).max() <= 1.0 + 1e-5
        assert (result.neighbours == np.arange(1024)[:, None]).mean() < 0.25, file
