"""Cameras: known answers for look-at / perspective / projection, and the viewpoint layouts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pretext3d.geometry.cameras import (
    dodecahedron_viewpoints,
    fit_fov,
    look_at,
    make_cameras,
    perspective,
    project_points,
    random_sphere_viewpoints,
    ring_viewpoints,
)


def test_look_at_from_plus_z_is_a_pure_translation():
    view = look_at(np.array([[0.0, 0.0, 3.0]]), up="y")[0]
    expected = np.eye(4)
    expected[2, 3] = -3.0
    np.testing.assert_allclose(view, expected, atol=1e-12)


@pytest.mark.parametrize("up", ["x", "y", "z"])
def test_look_at_is_rigid_and_points_minus_z_at_the_target(up):
    eyes = random_sphere_viewpoints(50, 2.5, seed=1, up=up)
    views = look_at(eyes, up=up)
    rotations = views[:, :3, :3]
    np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rotations.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-12)
    eye_cam = np.einsum("vij,vj->vi", views, np.c_[eyes, np.ones(50)])
    np.testing.assert_allclose(eye_cam[:, :3], 0.0, atol=1e-12)  # the eye is the camera origin
    origin_cam = views[:, :3, 3]
    np.testing.assert_allclose(origin_cam[:, :2], 0.0, atol=1e-12)  # the target is straight ahead ...
    np.testing.assert_allclose(origin_cam[:, 2], -2.5, atol=1e-12)  # ... on the -z axis


@pytest.mark.parametrize(("eye", "up"), [((0.0, 0.0, 2.0), "z"), ((1.0, 1.0, 1.0), np.array([2.0, 2.0, 2.0]))])
def test_look_at_survives_an_eye_on_the_up_axis(eye, up):
    view = look_at(np.array([eye]), up=up)[0]
    assert np.isfinite(view).all()
    np.testing.assert_allclose(view[:3, :3] @ view[:3, :3].T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(view[:3, 3], [0.0, 0.0, -np.linalg.norm(eye)], atol=1e-12)  # still looks at the origin


def test_perspective_known_answer():
    proj = perspective(90.0, 1.0, 1.0, 3.0)  # f = 1/tan(45 deg) = 1
    clip = proj @ np.array([1.0, 0.5, -2.0, 1.0])
    ndc = clip[:3] / clip[3]
    np.testing.assert_allclose(ndc[:2], [0.5, 0.25])
    np.testing.assert_allclose(perspective(90.0, 1.0, 1.0, 3.0) @ [0, 0, -1, 1] / 1.0, [0, 0, -1, 1])  # near -> -1
    far = proj @ np.array([0.0, 0.0, -3.0, 1.0])
    assert far[2] / far[3] == pytest.approx(1.0)  # far -> +1


def test_project_points_pixel_convention():
    cameras = make_cameras(np.array([[0.0, 0.0, 3.0]]), up="y")
    points = np.array([[0.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.5, 0.0, 0.0]])
    uv, depth = project_points(points, cameras.view[0], cameras.proj[0], (100, 200))
    np.testing.assert_allclose(uv[0], [100.0, 50.0])  # the target is at the image centre
    assert uv[1, 1] < 50.0 and uv[1, 0] == pytest.approx(100.0)  # up in the world -> up in the image (smaller row)
    assert uv[2, 0] > 100.0 and uv[2, 1] == pytest.approx(50.0)  # +x -> right
    np.testing.assert_allclose(depth, 3.0)


def test_fit_fov_frames_the_unit_sphere():
    rng = np.random.default_rng(0)
    sphere = rng.normal(size=(2000, 3))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    cameras = make_cameras("dodecahedron", distance=2.5, margin=1.0)
    uv, depth = project_points(sphere, cameras.view, cameras.proj, 64)
    assert (uv >= -1e-6).all() and (uv <= 64 + 1e-6).all() and (depth > 0).all()
    # and nearly touches the border: the view is not wasted
    assert (uv.min(axis=(1, 2)) < 2.0).all()
    assert fit_fov(2.0, 1.0, 1.0) == pytest.approx(60.0)  # asin(1/2) = 30 deg
    with pytest.raises(ValueError, match="inside the sphere"):
        fit_fov(0.5)


def test_dodecahedron_is_regular():
    vertices = dodecahedron_viewpoints(2.0)
    assert vertices.shape == (20, 3)
    np.testing.assert_allclose(np.linalg.norm(vertices, axis=1), 2.0)
    distances = np.linalg.norm(vertices[:, None] - vertices[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest = np.sort(distances, axis=1)[:, :4]
    edge = nearest[0, 0]
    np.testing.assert_allclose(nearest[:, :3], edge, rtol=1e-9)  # every vertex has three equal edges
    assert (nearest[:, 3] > edge * 1.2).all()


def test_random_layout_respects_jing_ranges_and_seed():
    eyes = random_sphere_viewpoints(500, 3.0, seed=7, up="z")
    np.testing.assert_allclose(np.linalg.norm(eyes, axis=1), 3.0)
    polar = np.degrees(np.arccos(eyes[:, 2] / 3.0))
    azimuth = np.degrees(np.arctan2(eyes[:, 1], eyes[:, 0])) % 360
    assert polar.min() >= 10 - 1e-9 and polar.max() <= 165 + 1e-9
    assert azimuth.min() >= 10 - 1e-9 and azimuth.max() <= 340 + 1e-9
    np.testing.assert_array_equal(eyes, random_sphere_viewpoints(500, 3.0, seed=7, up="z"))
    y_up = random_sphere_viewpoints(500, 3.0, seed=7, up="y")
    np.testing.assert_allclose(np.degrees(np.arccos(y_up[:, 1] / 3.0)), polar)


def test_ring12_elevation_and_spacing():
    eyes = ring_viewpoints(12, 2.0, elevation=30.0, up="z")
    np.testing.assert_allclose(eyes[:, 2], 2.0 * math.sin(math.radians(30)))
    azimuth = np.degrees(np.arctan2(eyes[:, 1], eyes[:, 0])) % 360
    np.testing.assert_allclose(np.diff(azimuth), 30.0)


def test_make_cameras_layouts_and_errors():
    assert len(make_cameras("dodecahedron")) == 20
    assert len(make_cameras("ring12")) == 12
    assert len(make_cameras("random", 7)) == 7
    assert len(make_cameras("dodecahedron", 5)) == 5
    with pytest.raises(ValueError, match="has 12 views"):
        make_cameras("ring12", 13)
    with pytest.raises(ValueError, match="unknown camera layout"):
        make_cameras("spiral")
