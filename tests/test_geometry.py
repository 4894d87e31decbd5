"""Geometry: every fast path against a brute-force definition on small inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pretext3d import _kernels
from pretext3d.geometry import (
    farthest_point_sample,
    gather_max,
    gather_sum,
    jitter,
    knn,
    neighbour_counts,
    normalize_unit_sphere,
    random_point_dropout,
    random_rotate_up,
    random_scale,
    random_translate,
    rotation_about_axis,
    sample_surface,
)
from pretext3d.geometry import neighbors


@pytest.fixture(params=["kernel", "torch"])
def backend(request, monkeypatch):
    """Run a test once with the numba kernels and once with the pure-torch twins."""
    if request.param == "kernel" and not _kernels.AVAILABLE:
        pytest.skip("numba not available")
    if request.param == "torch":
        monkeypatch.setattr(neighbors, "uses_fast_kernels", lambda t: False)
    return request.param


def brute_knn_sets(points: torch.Tensor, query: torch.Tensor, k: int) -> list[list[set[int]]]:
    d = torch.cdist(query.double(), points.double())
    idx = d.argsort(dim=-1)[..., :k]
    return [[set(row.tolist()) for row in cloud] for cloud in idx]


def as_sets(idx: torch.Tensor) -> list[list[set[int]]]:
    return [[set(row.tolist()) for row in cloud] for cloud in idx]


@pytest.mark.parametrize("n, c, k", [(100, 3, 7), (37, 5, 5), (1000, 3, 3), (257, 17, 20), (64, 64, 64)])
def test_knn_matches_brute_force(backend, n, c, k):
    g = torch.Generator().manual_seed(n + c + k)
    pts = torch.rand(3, n, c, generator=g)
    assert as_sets(knn(pts, k)) == brute_knn_sets(pts, pts, k)


def test_knn_with_separate_queries_and_sorted_order(backend):
    g = torch.Generator().manual_seed(0)
    pts, qry = torch.rand(2, 300, 3, generator=g), torch.rand(2, 50, 3, generator=g)
    idx = knn(pts, 9, query=qry, sorted=True)
    d = torch.cdist(qry.double(), pts.double())
    expected = d.argsort(dim=-1)[..., :9]
    assert torch.equal(idx, expected)


def test_knn_includes_self_and_chunks_agree(backend, monkeypatch):
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(2, 500, 6, generator=g)
    whole = knn(pts, 10)
    monkeypatch.setattr(neighbors, "_CHUNK_BYTES", 4 * 500 * 7)  # 7 rows per chunk
    chunked = knn(pts, 10)
    assert as_sets(whole) == as_sets(chunked)
    assert all(i in s for cloud in as_sets(whole) for i, s in enumerate(cloud))


def test_knn_rejects_bad_k():
    with pytest.raises(ValueError, match="k=11"):
        knn(torch.rand(1, 10, 3), 11)


def brute_gather(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    b = torch.arange(values.shape[0]).view(-1, 1, 1)
    return values[b, idx]  # (B, M, k, C)


@pytest.mark.parametrize("reduce", ["max", "sum"])
def test_gather_reductions_and_gradients(backend, reduce):
    g = torch.Generator().manual_seed(2)
    values = torch.randn(3, 40, 21, generator=g, dtype=torch.float64)
    idx = torch.stack([torch.stack([torch.randperm(40, generator=g)[:6] for _ in range(25)]) for _ in range(3)])
    fast_in = values.clone().requires_grad_()
    ref_in = values.clone().requires_grad_()
    fast = gather_max(fast_in, idx) if reduce == "max" else gather_sum(fast_in, idx)
    gathered = brute_gather(ref_in, idx)
    ref = gathered.max(dim=2).values if reduce == "max" else gathered.sum(dim=2)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    weights = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (fast * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(fast_in.grad, ref_in.grad, rtol=0, atol=1e-12)


def test_gather_add_leaky_relu_and_gradients(backend):
    """Against the definition leaky(values[idx] + centres) written out, with repeated neighbours
    (a point several times in one neighbourhood) and values exactly 0 at the kink."""
    g = torch.Generator().manual_seed(3)
    values = torch.randn(2, 30, 9, generator=g, dtype=torch.float64)
    values[0, :5] = 0.0
    centres = torch.randn(2, 17, 9, generator=g, dtype=torch.float64)
    centres[0] = 0.0
    idx = torch.randint(0, 30, (2, 17, 5), generator=g)
    idx[1, 3] = 4  # one point five times in one neighbourhood
    fast_values, fast_centres = values.clone().requires_grad_(), centres.clone().requires_grad_()
    ref_values, ref_centres = values.clone().requires_grad_(), centres.clone().requires_grad_()
    fast = neighbors.gather_add_leaky_relu(fast_values, fast_centres, idx, 0.2)
    pre = brute_gather(ref_values, idx) + ref_centres.unsqueeze(2)
    ref = torch.where(pre > 0, pre, 0.2 * pre)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    weights = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (fast * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(fast_values.grad, ref_values.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast_centres.grad, ref_centres.grad, rtol=0, atol=1e-12)


def test_edge_max_and_moments_and_gradients(backend):
    """Against the definition: the winner of sign * e over k (max for +1, min for -1), the sums
    of e and e^2 over every edge; gradients of all three against autograd of the written-out form."""
    g = torch.Generator().manual_seed(4)
    edges = torch.randn(3, 11, 7, 5, generator=g, dtype=torch.float64)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    fast_in, ref_in = edges.clone().requires_grad_(), edges.clone().requires_grad_()
    best, total, total_sq = neighbors.edge_max_and_moments(fast_in, sign)
    winners = torch.where(sign > 0, ref_in.max(dim=2).values, ref_in.min(dim=2).values)
    torch.testing.assert_close(best, winners, rtol=0, atol=0)
    torch.testing.assert_close(total, ref_in.sum(dim=(0, 1, 2)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(total_sq, (ref_in**2).sum(dim=(0, 1, 2)), rtol=1e-12, atol=1e-12)
    assert total.dtype == total_sq.dtype == torch.float64
    w_best = torch.randn(best.shape, generator=g, dtype=torch.float64)
    w_sum, w_sq = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    ((best * w_best).sum() + (total * w_sum).sum() + (total_sq * w_sq).sum()).backward()
    ((winners * w_best).sum() + (ref_in.sum(dim=(0, 1, 2)) * w_sum).sum() + ((ref_in**2).sum(dim=(0, 1, 2)) * w_sq).sum()).backward()
    torch.testing.assert_close(fast_in.grad, ref_in.grad, rtol=1e-12, atol=1e-12)


def test_neighbour_counts():
    idx = torch.tensor([[[0, 1], [1, 2], [1, 0]], [[2, 2], [0, 2], [1, 2]]])
    assert neighbour_counts(idx, 3).tolist() == [[2, 3, 1], [1, 1, 4]]


def brute_fps(points: np.ndarray, m: int, start: int = 0) -> list[int]:
    chosen = [start]
    dist = np.full(len(points), np.inf)
    for _ in range(m - 1):
        dist = np.minimum(dist, ((points.astype(np.float64) - points[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(np.argmax(dist)))
    return chosen


@pytest.mark.parametrize("fps_backend", ["numba", "torch", "fpsample"])
def test_fps_matches_brute_force(fps_backend):
    if fps_backend == "numba" and not _kernels.AVAILABLE:
        pytest.skip("numba not available")
    if fps_backend == "fpsample":
        pytest.importorskip("fpsample", reason="optional benchmark dependency")
    rng = np.random.default_rng(3)
    pts = rng.random((2, 500, 3)).astype(np.float32)
    got = farthest_point_sample(pts, 64, start=7, backend=fps_backend)
    assert isinstance(got, np.ndarray) and got.shape == (2, 64)
    for b in range(2):
        assert got[b].tolist() == brute_fps(pts[b], 64, start=7)


def test_fps_torch_input_single_cloud_and_errors():
    pts = torch.rand(200, 3, generator=torch.Generator().manual_seed(4))
    idx = farthest_point_sample(pts, 10)
    assert isinstance(idx, torch.Tensor) and idx.tolist() == brute_fps(pts.numpy(), 10)
    with pytest.raises(ValueError, match="cannot draw 201"):
        farthest_point_sample(pts, 201)


def test_fps_covers_a_grid():
    """On the 8 corners of a cube plus interior points, the first 8 samples are the corners."""
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float32)
    inner = np.random.default_rng(5).uniform(0.3, 0.7, (100, 3)).astype(np.float32)
    pts = np.concatenate([inner[:1], corners, inner[1:]])
    idx = farthest_point_sample(pts, 9)
    assert set(idx[1:].tolist()) == set(range(1, 9))


def test_sample_surface_is_area_weighted_and_on_the_mesh():
    # two triangles in the z=0 plane with areas 0.5 and 1.5
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0], [5, 0, 0], [2, 1, 0]], np.float64)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    pts, nrm, face = sample_surface(vertices, faces, 40_000, seed=0)
    frac_small = (face == 0).mean()
    assert abs(frac_small - 0.25) < 0.01  # binomial std 0.002
    assert np.allclose(pts[:, 2], 0) and np.allclose(np.abs(nrm[:, 2]), 1)
    small = pts[face == 0]
    assert (small[:, 0] >= -1e-6).all() and (small[:, 1] >= -1e-6).all() and (small.sum(1) <= 1 + 1e-6).all()
    again, _, _ = sample_surface(vertices, faces, 40_000, seed=0)
    assert np.array_equal(again, pts)  # deterministic for a seed


def test_sample_surface_rejects_degenerate_mesh():
    with pytest.raises(ValueError, match="no faces"):
        sample_surface(np.zeros((3, 3)), np.array([[0, 1, 2]]), 10)


@pytest.mark.parametrize("center", ["mean", "bbox"])
def test_normalize_unit_sphere(center):
    rng = np.random.default_rng(6)
    pts = rng.normal(size=(4, 100, 3)) * 5 + 3
    out = normalize_unit_sphere(pts, center=center)
    assert np.allclose(np.linalg.norm(out, axis=-1).max(-1), 1)
    if center == "mean":
        assert np.allclose(out.mean(1), 0, atol=1e-12)
    else:
        assert np.allclose(out.max(1) + out.min(1), 0, atol=1e-12)
    torch_out = normalize_unit_sphere(torch.from_numpy(pts), center=center)
    assert np.allclose(torch_out.numpy(), out)


def test_rotation_matrices_are_right_handed():
    quarter = torch.tensor([math.pi / 2])
    ex, ey, ez = torch.eye(3)
    assert torch.allclose(rotation_about_axis(quarter, "z")[0] @ ex, ey, atol=1e-6)
    assert torch.allclose(rotation_about_axis(quarter, "x")[0] @ ey, ez, atol=1e-6)
    assert torch.allclose(rotation_about_axis(quarter, "y")[0] @ ez, ex, atol=1e-6)


def make_cloud_with_normals(seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randn(4, 50, 3, generator=g)
    nrm = torch.nn.functional.normalize(torch.randn(4, 50, 3, generator=g), dim=-1)
    return torch.cat([xyz, nrm], -1)


@pytest.mark.parametrize("axis", ["y", "z"])
def test_random_rotate_up_keeps_height_norms_and_normals(axis):
    pts = make_cloud_with_normals()
    out = random_rotate_up(pts, axis, generator=torch.Generator().manual_seed(0))
    a = "xyz".index(axis)
    assert torch.allclose(out[..., a], pts[..., a], atol=1e-6)
    assert torch.allclose(out[..., :3].norm(dim=-1), pts[..., :3].norm(dim=-1), atol=1e-5)
    # normals stay attached: the dot product between point and normal is rotation invariant
    assert torch.allclose((out[..., :3] * out[..., 3:]).sum(-1), (pts[..., :3] * pts[..., 3:]).sum(-1), atol=1e-5)
    again = random_rotate_up(pts, axis, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_random_scale_and_translate_bounds():
    pts = make_cloud_with_normals()
    scaled = random_scale(pts, 0.5, 2.0, generator=torch.Generator().manual_seed(1))
    factors = scaled[..., :3] / pts[..., :3]
    assert (factors >= 0.5 - 1e-5).all() and (factors <= 2.0 + 1e-5).all()
    assert torch.allclose(factors.std(dim=1), torch.zeros(4, 3), atol=1e-4)  # one factor per cloud/axis
    assert torch.allclose(scaled[..., 3:].norm(dim=-1), torch.ones(4, 50), atol=1e-5)
    # a normal stays perpendicular to a tangent direction after scaling: check on a plane z = 0
    plane = torch.zeros(1, 3, 6)
    plane[0, :, :2] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    plane[0, :, 5] = 1.0
    assert torch.allclose(random_scale(plane)[0, :, 3:], plane[0, :, 3:])
    moved = random_translate(pts, -0.2, 0.2, generator=torch.Generator().manual_seed(2))
    shift = moved[..., :3] - pts[..., :3]
    assert (shift.abs() <= 0.2 + 1e-6).all() and torch.allclose(shift.std(dim=1), torch.zeros(4, 3), atol=1e-6)
    assert torch.equal(moved[..., 3:], pts[..., 3:])


def test_jitter_is_clipped_and_leaves_normals():
    pts = make_cloud_with_normals()
    out = jitter(pts, sigma=1.0, clip=0.05, generator=torch.Generator().manual_seed(3))
    delta = out[..., :3] - pts[..., :3]
    assert delta.abs().max() <= 0.05 + 1e-6 and delta.abs().max() > 0.04
    assert torch.equal(out[..., 3:], pts[..., 3:])


def test_random_point_dropout_replaces_with_first_point():
    pts = make_cloud_with_normals()
    out = random_point_dropout(pts, max_ratio=0.875, generator=torch.Generator().manual_seed(4))
    changed = (out != pts).any(-1)
    assert torch.equal(out[changed], pts[:, :1].expand_as(pts)[changed])
    assert changed.any() and out.shape == pts.shape


def test_knn_rejects_non_finite_points_and_keeps_float64_precision(backend):
    bad = torch.rand(1, 64, 3)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        knn(bad, 5)
    # a tight cloud far from the origin: |x|^2 - 2 x.y in float32 would scramble the ordering
    g = torch.Generator().manual_seed(8)
    pts = 100.0 + 1e-2 * torch.rand(1, 300, 3, generator=g, dtype=torch.float64)
    assert as_sets(knn(pts, 6)) == brute_knn_sets(pts, pts, 6)
    assert as_sets(knn(pts.float(), 6)) != brute_knn_sets(pts, pts, 6)


def test_gathers_and_fps_check_their_indices():
    values = torch.randn(1, 10, 4)
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        gather_max(values, torch.full((1, 10, 3), 10))
    with pytest.raises(ValueError, match="k >= 1"):
        gather_sum(values, torch.zeros(1, 10, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="start index"):
        farthest_point_sample(torch.rand(10, 3), 3, start=50)


def test_augmentations_keep_half_precision_inputs():
    pts = make_cloud_with_normals().half()
    for augment in (random_rotate_up, random_scale, random_translate, jitter, random_point_dropout):
        out = augment(pts, generator=torch.Generator().manual_seed(0))
        assert out.dtype == torch.float16 and torch.isfinite(out).all()
