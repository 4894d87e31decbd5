"""Pic@Point's region assignment on a synthetic scene: a rendered cube, its mask, crops and
flips of the image, and points hidden behind the cube."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from pretext3d.data.meshes import Mesh
from pretext3d.data.multimodal import crop_flip_ndc
from pretext3d.geometry.cameras import make_cameras
from pretext3d.pretext.picpoint import project_to_regions
from pretext3d.render import render_mesh

SIZE = 112


@pytest.fixture(scope="module")
def scene():
    """A cube of side 0.3 centred at (0.35, 0.25, 0.3), seen from (2.5, -0.6, 0.9)."""
    box = trimesh.creation.box(extents=(0.3, 0.3, 0.3))
    centre = np.array([0.35, 0.25, 0.3])
    mesh = Mesh(np.asarray(box.vertices) + centre, np.asarray(box.faces, dtype=np.int64))
    cameras = make_cameras(np.array([[2.5, -0.6, 0.9]]))
    views = render_mesh(mesh, cameras, SIZE)
    surface, _ = trimesh.sample.sample_surface_even(trimesh.Trimesh(mesh.vertices, mesh.faces), 3000, seed=0)
    return {"centre": centre, "mask": views.mask[0], "view": cameras.view[0], "proj": cameras.proj[0],
            "surface": np.asarray(surface), "camera": np.array([2.5, -0.6, 0.9])}


def regions_of(points: np.ndarray, view: np.ndarray, proj: np.ndarray, size=(SIZE, SIZE), cloud=None):
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)[None]  # noqa: E731
    return project_to_regions(t(points), t(view), t(proj), size, cloud=None if cloud is None else t(cloud))


def mask_region(mask: np.ndarray, grid: int = 7) -> int:
    """The 7x7 region holding the centroid of a mask."""
    rows, cols = np.nonzero(mask)
    return int(rows.mean() * grid // mask.shape[0]) * grid + int(cols.mean() * grid // mask.shape[1])


def test_the_cube_centre_falls_in_the_region_of_the_rendered_cube(scene):
    assignment = regions_of(scene["centre"][None], scene["view"], scene["proj"])
    assert assignment.usable.all()
    region = int(assignment.region[0, 0])
    assert region == mask_region(scene["mask"])
    assert region != 3 * 7 + 3  # off-centre: the test can tell regions apart


@pytest.mark.parametrize("flip", [False, True])
def test_regions_follow_a_crop_and_a_flip_of_the_image(scene, flip):
    x0, y0, w, h = 30.0, 10.0, 70.0, 80.0
    proj = crop_flip_ndc((x0, y0, w, h), SIZE, SIZE, flip) @ scene["proj"]
    crop = scene["mask"][int(y0):int(y0 + h), int(x0):int(x0 + w)]
    crop = crop[:, ::-1] if flip else crop
    assignment = regions_of(scene["centre"][None], scene["view"], proj, size=(int(h), int(w)))
    assert int(assignment.region[0, 0]) == mask_region(crop)


def test_points_behind_the_cube_or_off_screen_are_not_used(scene):
    surface = scene["surface"]
    towards_camera = scene["camera"] - scene["centre"]
    towards_camera /= np.linalg.norm(towards_camera)
    depth_along = (surface - scene["centre"]) @ towards_camera
    front, back = surface[depth_along > 0.12], surface[depth_along < -0.12]  # near and far sides
    assert len(front) > 100 and len(back) > 100
    assignment = regions_of(np.concatenate([front, back]), scene["view"], scene["proj"], cloud=surface)
    visible = assignment.visible[0].numpy()
    assert visible[: len(front)].mean() > 0.95 and visible[len(front):].mean() < 0.05
    off_screen = regions_of(np.array([[0.0, 3.0, 0.0], [4.0, -1.0, 1.5]]), scene["view"], scene["proj"])
    assert not off_screen.inside.any() and not off_screen.usable.any()


# --- the method ------------------------------------------------------------------------------

def test_info_nce_with_targets_known_answer():
    """Queries e1, e2 against keys e1, e2, e3 at t = 1 with targets 0, 1: each query's positive
    scores 1 and its two negatives 0, so L = -log(e / (e + 2))."""
    from pretext3d.losses import info_nce, info_nce_with_targets

    eye = torch.eye(3)
    loss = info_nce_with_targets(eye[:2], eye, torch.tensor([0, 1]), temperature=1.0)
    torch.testing.assert_close(loss, torch.tensor(math.log((math.e + 2) / math.e)))
    q, k = torch.randn(5, 8), torch.randn(5, 8)
    torch.testing.assert_close(info_nce(q, k, 0.1), info_nce_with_targets(q, k, torch.arange(5), 0.1))
    assert info_nce_with_targets(torch.zeros(0, 3), eye, torch.zeros(0, dtype=torch.long)).item() == 0.0


def tiny_picpoint(**kw):
    from pretext3d.pretext.picpoint import PicAtPoint

    return PicAtPoint(backbone="dgcnn", backbone_config={"k": 8, "emb_dims": 32}, embed_dim=16, local_samples=16,
                      gather_distributed=False, **kw)


def camera_batch(batch: int, points: int = 128, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cams = make_cameras("random", batch, seed=seed)
    return {"points": torch.rand(batch, points, 3, generator=g) - 0.5, "images": torch.randn(batch, 1, 3, 64, 64, generator=g),
            "view": torch.from_numpy(cams.view[:, None]).float(), "proj": torch.from_numpy(cams.proj[:, None]).float()}


def test_picpoint_loss_parts_and_what_trains_at_which_rate(tmp_path):
    from safetensors.torch import save_file

    from pretext3d.engine.trainer import trainable_groups
    from pretext3d.models import resnet18

    torch.manual_seed(0)
    method = tiny_picpoint()
    out = method(camera_batch(4))
    assert torch.isfinite(out["loss"]) and out["loss"].item() == pytest.approx((out["local"] + out["global"]).item())
    assert 0.3 < out["usable"] <= 1.0  # most of a cloud seen from outside the unit sphere is in view
    out["loss"].backward()
    assert method.point_local_out.weight.grad.abs().sum() > 0 and method.image_local.weight.grad.abs().sum() > 0
    assert method.pose[0].weight.grad.abs().sum() > 0  # the view matrix reaches the local 3D head
    groups = trainable_groups(method)
    assert [g["lr_scale"] for g in groups] == [1.0, 0.05, 1.0]  # rest, image encoder, image heads
    assert len(groups[1]["params"]) == len(list(method.image_encoder.parameters()))
    heads = {id(p) for p in [*method.image_global.parameters(), *method.image_local.parameters()]}
    assert {id(p) for p in groups[2]["params"]} == heads and not heads & {id(p) for p in groups[0]["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(method.parameters()))  # each parameter once
    save_file({k: v.contiguous() for k, v in resnet18(num_classes=1000).state_dict().items()}, str(tmp_path / "r18.safetensors"))
    frozen = tiny_picpoint(image_weights=str(tmp_path / "r18.safetensors"), image_heads_lr_scale=0.05)
    assert [g["lr_scale"] for g in trainable_groups(frozen)] == [1.0, 0.05]  # the encoder frozen; the heads at 5e-5
    frozen.train()
    assert not frozen.image_encoder.training  # and its BatchNorm statistics stay


def test_picpoint_with_no_visible_centre_has_a_zero_local_loss():
    torch.manual_seed(0)
    method = tiny_picpoint()
    batch = camera_batch(2)
    batch["points"] = batch["points"] * 0.1 + torch.tensor([0.0, 0.0, 50.0])  # far outside every view
    out = method(batch)
    assert out["usable"] == 0 and out["local"] == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()


def test_picpoint_pretrains_on_the_builtin_shapes_with_decreasing_loss(tmp_path):
    import json

    from pretext3d.cli import main

    run = tmp_path / "pp"
    rc = main(["pretrain", "--recipe", "picpoint_cpu", "--out", str(run), "steps=16", "batch_size=8",
               "num_workers=0", "optimizer.lr=0.003", "model.backbone_config={k: 8, emb_dims: 32}", "model.embed_dim=32",
               "model.local_samples=32", "data_options.points=128", "data_options.image_size=32",
               "data_options.builtin={train: 4, test: 1}", "data_options.builtin_store={views: 4, image_size: 32, faces: 64}",
               "log_every=1"])
    assert rc == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines]
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    assert (run / "backbone.safetensors").is_file()
