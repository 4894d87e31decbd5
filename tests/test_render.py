"""Renderers: the projection contract (points land in the mask), known answers, backend parity."""

from __future__ import annotations

import numpy as np
import pytest

from pretext3d import _kernels
from pretext3d.data.builtin import make_shape
from pretext3d.data.meshes import Mesh, load_mesh, normalize_mesh
from pretext3d.geometry.cameras import make_cameras, project_points
from pretext3d.geometry.sampling import mesh_to_points
from pretext3d.render import Lighting, gl_available, gl_unavailable_reason, render_mesh, render_points
from pretext3d.render.shading import shade
from pretext3d.render.splat import _splat_zbuffer_numpy, estimate_normals, splat_zbuffer
from tests.conftest import shared_data
from tests.tests_helpers import project_to_pixels

needs_gl = pytest.mark.skipif(not gl_available(), reason=f"no OpenGL here: {gl_unavailable_reason()}")


def fraction_in_mask(points: np.ndarray, views) -> np.ndarray:
    """Per view, the fraction of points whose pixel is inside the image and the mask."""
    rows, cols, inside, _ = project_to_pixels(points, views.view, views.proj, views.mask.shape[1:])
    return (views.mask[np.arange(len(views))[:, None], rows, cols] & inside).mean(axis=1)


def depth_not_behind(points: np.ndarray, views, tolerance: float = 0.02) -> float:
    """Fraction of (view, point) pairs whose pixel's rendered depth is at most the point's own
    depth (+ tolerance): the visible surface there is the point's or something in front of it."""
    rows, cols, _, depth = project_to_pixels(points, views.view, views.proj, views.mask.shape[1:])
    rendered = views.depth[np.arange(len(views))[:, None], rows, cols]
    return float((rendered <= depth + tolerance).mean())


def unit_chair() -> Mesh:
    return normalize_mesh(make_shape("chair", 3))[0]


@needs_gl
def test_gl_mesh_vertices_and_surface_points_land_in_the_mask():
    mesh = unit_chair()
    cameras = make_cameras("dodecahedron", up="z")
    points, normals, _ = mesh_to_points(mesh.vertices, mesh.faces, 1024, 4, 0)
    views = render_mesh(mesh, cameras, 96, surface_points=points, surface_normals=normals)
    assert views.info["renderer"] == "gl"
    assert fraction_in_mask(mesh.vertices, views).min() >= 0.99
    assert fraction_in_mask(points, views).min() >= 0.99
    assert depth_not_behind(mesh.vertices, views) >= 0.99
    assert (views.depth[~views.mask] == 0).all() and (views.depth[views.mask] > 0).all()
    assert (views.images[~views.mask] == 255).all()  # white background


@needs_gl
def test_gl_projection_contract_on_shapenet_meshes():
    root = shared_data("shapenet_mini")
    files = sorted(root.glob("*/*/models/*.obj"))[::12]
    cameras = make_cameras("dodecahedron", up="y")
    for file in files:
        mesh = normalize_mesh(load_mesh(file))[0]
        points, normals, _ = mesh_to_points(mesh.vertices, mesh.faces, 2048, 4, 0)
        views = render_mesh(mesh, cameras, 224, surface_points=points, surface_normals=normals)
        assert fraction_in_mask(mesh.vertices, views).mean() >= 0.99, file
        assert fraction_in_mask(points, views).mean() >= 0.99, file
        assert depth_not_behind(mesh.vertices, views) >= 0.99, file


@needs_gl
def test_gl_square_known_answer():
    """A square of side 1 facing the camera at distance 2: its silhouette and flat colour."""
    square = Mesh(np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], float),
                  np.array([[0, 1, 2], [0, 2, 3]]))
    cameras = make_cameras(np.array([[0.0, 0.0, 2.0]]), up="y")
    lighting = Lighting(specular=0.0)
    views = render_mesh(square, cameras, 101, color=(0.5, 0.5, 0.5), lighting=lighting)
    uv, _ = project_points(square.vertices, cameras.view[0], cameras.proj[0], 101)
    lo, hi = uv.min(0), uv.max(0)
    expected = np.zeros((101, 101), bool)
    centres = np.arange(101) + 0.5
    expected[np.ix_((centres > lo[1]) & (centres < hi[1]), (centres > lo[0]) & (centres < hi[0]))] = True
    assert (views.mask[0] ^ expected).sum() <= 4 * 101 * 0.05  # boundary pixels only
    colour = shade(np.array([[0.0, 0.0, 1.0]]), np.array([[0.0, 0.0, -2.0]]), np.array([0.5, 0.5, 0.5]), lighting)
    assert abs(int(views.images[0, 50, 50, 0]) - colour[0, 0] * 255) <= 2
    assert views.depth[0, 50, 50] == pytest.approx(2.0, abs=1e-4)


@needs_gl
def test_gl_and_splat_backends_agree_on_the_silhouette():
    mesh = unit_chair()
    cameras = make_cameras("ring12", up="z")
    gl = render_mesh(mesh, cameras, 96, backend="gl")
    splat = render_mesh(mesh, cameras, 96, backend="splat", splat_samples=30000)
    iou = (gl.mask & splat.mask).sum() / (gl.mask | splat.mask).sum()
    assert iou > 0.85
    assert splat.info["renderer"] == "splat"


def test_mesh_renderer_without_gl_falls_back_to_splats(monkeypatch):
    monkeypatch.setenv("PRETEXT3D_NO_GL", "1")
    mesh = unit_chair()
    views = render_mesh(mesh, make_cameras("ring12", 3, up="z"), 64, splat_samples=20000)
    assert views.info["renderer"] == "splat"
    assert fraction_in_mask(mesh.vertices, views).min() >= 0.99
    with pytest.raises(RuntimeError, match="PRETEXT3D_NO_GL"):
        render_mesh(mesh, make_cameras("ring12", 1, up="z"), 32, backend="gl")


def test_point_splats_cover_every_point_and_keep_depth_order():
    mesh = unit_chair()
    points, normals, _ = mesh_to_points(mesh.vertices, mesh.faces, 1024, 4, 1)
    views = render_points(points, make_cameras("dodecahedron", up="z"), 128, normals=normals)
    assert (fraction_in_mask(points, views) == 1.0).all()
    assert depth_not_behind(points, views, tolerance=1e-5) == 1.0
    assert views.images.shape == (20, 128, 128, 3) and views.depth.dtype == np.float32


def test_modelnet40_points_land_in_the_splat_mask():
    data = np.load(shared_data("modelnet40_1024.npz"))
    cameras = make_cameras("dodecahedron", up="z")
    for i in (0, 500, 5000):
        cloud = data["train_x"][i].astype(np.float64)
        cloud = (cloud - cloud.mean(0)) / np.linalg.norm(cloud - cloud.mean(0), axis=1).max()
        views = render_points(cloud, cameras, 224)
        assert fraction_in_mask(cloud, views).min() >= 0.99


def test_splat_zbuffer_numba_matches_numpy():
    if not _kernels.AVAILABLE:
        pytest.skip("numba is unavailable: only the numpy version runs")
    rng = np.random.default_rng(0)
    n = 400
    u, v = rng.uniform(-3, 40, n), rng.uniform(-3, 30, n)
    z = rng.uniform(-0.5, 5, n)
    z[:10] = z[10:20]  # exact depth ties: the lower index wins in both
    radius = rng.uniform(0.75, 3.0, n)
    fast = splat_zbuffer(u, v, z, radius, 32, 40)
    slow = _splat_zbuffer_numpy(u, v, z, radius, np.full((32, 40), np.inf), np.full((32, 40), -1, np.int64))
    np.testing.assert_array_equal(fast[1], slow[1])
    np.testing.assert_array_equal(fast[0], slow[0])


def test_estimate_normals_on_a_plane():
    rng = np.random.default_rng(0)
    plane = np.c_[rng.uniform(-1, 1, (500, 2)), np.zeros(500)]
    normals = estimate_normals(plane, 12)
    np.testing.assert_allclose(np.abs(normals[:, 2]), 1.0, atol=1e-6)


def test_grayscale_views_are_single_channel():
    mesh = unit_chair()
    views = render_points(mesh.vertices, make_cameras("ring12", 2, up="z"), 48, grayscale=True)
    assert views.images.shape == (2, 48, 48) and views.images.dtype == np.uint8


@needs_gl
def test_double_sided_faces_render_like_single_sided_ones():
    """ShapeNet repeats faces with reversed winding; their vertex normals must not cancel."""
    mesh = unit_chair()
    both = Mesh(mesh.vertices, np.concatenate([mesh.faces, mesh.faces[:, ::-1]]))
    cameras = make_cameras("ring12", 4, up="z")
    for smooth in (False, True):
        single = render_mesh(mesh, cameras, 96, smooth=smooth)
        double = render_mesh(both, cameras, 96, smooth=smooth)
        np.testing.assert_array_equal(double.mask, single.mask)
        difference = np.abs(double.images.astype(int) - single.images.astype(int))
        assert difference.mean() < 1.0, smooth
