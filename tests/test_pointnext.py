"""Ball query (known answers, kernel vs torch path vs brute force) and PointNeXt (stages,
locality of set abstraction, interpolation, point-wise variant, training step)."""

from __future__ import annotations

import math

import pytest
import torch

from pretext3d.geometry import ball_query
from pretext3d.geometry.neighbors import _ball_query_torch
from pretext3d.models import build_backbone
from pretext3d.models.pointnext import SetAbstraction, interpolate
from pretext3d.pretext.parae import ParAE


def brute_force_ball_query(points: torch.Tensor, query: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    out = torch.zeros(query.shape[0], query.shape[1], k, dtype=torch.int64)
    for b in range(query.shape[0]):
        for q in range(query.shape[1]):
            d = (points[b].double() - query[b, q].double()).square().sum(-1)
            inside = [j for j in range(points.shape[1]) if d[j] < radius**2][:k]
            first = inside[0] if inside else 0
            out[b, q] = torch.tensor(inside + [first] * (k - len(inside)))
    return out


@pytest.mark.parametrize("query_fn", [ball_query, _ball_query_torch], ids=["auto", "torch"])
def test_ball_query_known_answer(query_fn):
    """Points on the x axis at 0, 0.1, ..., 0.9. Around x = 0 with radius 0.25: 0, 0.1, 0.2 are
    inside, padded with the first; x = 0.45 with radius 0.22 holds 0.3 to 0.6 and with radius
    0.1 only 0.4 and 0.5; a query at x = 5
    finds none (all 0); a point exactly on the sphere is outside (strict <)."""
    points = torch.zeros(1, 10, 3, dtype=torch.float64)
    points[0, :, 0] = torch.arange(10) / 10
    query = torch.tensor([[[0.0, 0, 0], [0.45, 0, 0], [5.0, 0, 0], [0.0, 0.5, 0]]], dtype=torch.float64)
    assert query_fn(points, query[:, :3:2], 0.25, 4).tolist() == [[[0, 1, 2, 0], [0, 0, 0, 0]]]
    assert query_fn(points, query[:, 1:2], 0.22, 4).tolist() == [[[3, 4, 5, 6]]]
    assert query_fn(points, query[:, 1:2], 0.1, 4).tolist() == [[[4, 5, 4, 4]]]
    on_sphere = torch.tensor([[[0.0, 0.0, 0.5]]], dtype=torch.float64)  # |(0, 0, 0.5) - (0, 0, 0)| = 0.5
    assert query_fn(points, on_sphere, 0.5, 2).tolist() == [[[0, 0]]]  # point 0 not inside: none found
    assert query_fn(points, on_sphere, 0.5 + 1e-9, 2).tolist() == [[[0, 0]]]  # point 0 inside, padded


def test_ball_query_agrees_with_brute_force_on_both_paths():
    torch.manual_seed(0)
    points = torch.rand(3, 200, 3)
    query = torch.rand(3, 40, 3)
    expected = brute_force_ball_query(points, query, 0.2, 16)
    assert torch.equal(ball_query(points, query, 0.2, 16), expected)
    assert torch.equal(_ball_query_torch(points, query, 0.2, 16), expected)
    assert torch.equal(ball_query(points[:, :10], query, 0.9, 16), brute_force_ball_query(points[:, :10], query, 0.9, 16))
    with pytest.raises(ValueError, match="radius"):
        ball_query(points, query, 0.0, 4)


def test_pointnext_s_stages_radii_and_outputs():
    model = build_backbone("pointnext").eval()
    assert model.widths == [32, 64, 128, 256, 512]
    assert [round(r, 6) for r in model.stage_radii[1:]] == [round(0.15 * 1.5**i, 6) for i in range(4)]
    points = torch.rand(2, 256, 3) * 2 - 1
    with torch.no_grad():
        stages = model.stages(points)
        out = model(points)
    assert [s.points.shape[1] for s in stages] == [256, 128, 64, 32, 16]
    for coarse, fine in zip(stages[1:], stages[:-1]):  # centres are points of the finer stage (FPS)
        assert (torch.cdist(coarse.points, fine.points, compute_mode="donot_use_mm_for_euclid_dist").amin(-1) == 0).all()
    assert out.global_.shape == (2, 1024) and out.local.shape == (2, 16, 512)
    assert torch.equal(out.centres, stages[-1].points)  # local features carry their centres


def test_set_abstraction_is_local():
    """A centre's output depends only on the features of points in its ball (and its own)."""
    torch.manual_seed(1)
    sa = SetAbstraction(8, 16, stride=4, radius=0.3, neighbours=32).eval()
    points, features = torch.rand(1, 64, 3), torch.randn(1, 64, 8)
    with torch.no_grad():
        centres, before = sa(points, features)
        idx = ball_query(points, centres, 0.3, 32)[0]
        target = int(idx[0, 1])  # a neighbour of the first centre
        changed = features.clone()
        changed[0, target] += 3.0
        _, after = sa(points, changed)
    moved = (before - after).abs().amax(-1)[0] > 1e-6
    uses_point = (idx == target).any(-1)  # in the ball (a centre is in its own ball)
    assert uses_point.any() and (~uses_point).any()
    assert torch.equal(moved, uses_point)


def test_interpolation_known_answers():
    coarse = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [10.0, 0, 0]]])
    values = torch.tensor([[[1.0], [3.0], [100.0]]])
    fine = torch.tensor([[[1.0, 0, 0], [0.5, 0, 0]]])
    out = interpolate(coarse, values, fine)
    torch.testing.assert_close(out[0, 0], torch.tensor([3.0]))  # on a coarse point: its value
    # midway between the first two: equal weights 1/0.25, the far point weighs 1/90.25
    w = torch.tensor([4.0, 4.0, 1 / 90.25])
    torch.testing.assert_close(out[0, 1], (w * torch.tensor([1.0, 3.0, 100.0])).sum(0, keepdim=True) / w.sum())


def test_pointnext_seg_and_a_training_step_with_blocks():
    model = build_backbone("pointnext-seg", num_outputs=6, blocks=(0, 1, 1, 0, 0), width=16)
    points = torch.rand(2, 128, 3) * 2 - 1
    out = model(points)
    assert out.point_logits.shape == (2, 128, 6) and out.local.shape == (2, 128, 16) and out.global_.shape == (2, 512)
    out.point_logits.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    normals = build_backbone("pointnext", in_channels=6)
    assert normals(points, torch.nn.functional.normalize(points, dim=-1)).global_.shape == (2, 1024)


def test_parae_trains_with_the_pointnext_point_wise_network():
    torch.manual_seed(0)
    method = ParAE("pointnext-seg", partitions=8, backbone_config={"width": 16})
    points = torch.rand(4, 128, 3) * 2 - 1
    loss = method({"points": points})["loss"]
    loss.backward()
    assert math.isfinite(loss.item()) and method.backbone.head[1].weight.grad.abs().sum() > 0
