"""Composed recipes: tasks share one backbone and one image encoder, the loss is the weighted
sum of the chosen parts, and a run with shared weights checkpoints and resumes exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from pretext3d.config import RecipeError, data_needs
from pretext3d.data.builtin import builtin_splits
from pretext3d.data.multimodal import AugmentedClouds
from pretext3d.engine.trainer import OptimConfig, TrainConfig, Trainer
from pretext3d.pretext.compose import Composed
from tests.tests_helpers import Interrupt, dies_at_call

POINTWISE = {"num_outputs": 8, "encoder_widths": (16, 32), "decoder_widths": (32,)}


def composed(**tasks) -> Composed:
    torch.manual_seed(0)
    return Composed(tasks=tasks or {"crosspoint": {"parts": {"imid": 2.0}, "hidden_dim": 16, "projection_dim": 8,
                                                   "gather_distributed": False},
                                    "parae": {"weight": 0.5, "partitions": 8}},
                    backbone="pointnet-pointwise", backbone_config=POINTWISE, image_encoder="resnet18")


def test_tasks_share_the_encoders_and_the_loss_is_the_weighted_sum_of_parts():
    method = composed()
    crosspoint, parae = method.tasks["crosspoint"], method.tasks["parae"]
    assert crosspoint.backbone is method.backbone and parae.backbone is method.backbone
    assert crosspoint.image_encoder is method.image_encoder
    names = {id(p) for p in method.parameters()}
    assert len(names) == len(list(method.parameters()))  # each shared weight counted once
    g = torch.Generator().manual_seed(1)
    views = torch.rand(4, 2, 64, 3, generator=g) - 0.5
    batch = {"points": views[:, 0], "point_views": views, "images": torch.randn(4, 1, 3, 32, 32, generator=g)}
    out = method(batch)
    with torch.no_grad():  # train-mode BatchNorm: the same batch gives the same parts
        alone = crosspoint(batch)["imid"], parae(batch)["nll"]
    assert out["loss"].item() == pytest.approx(2.0 * alone[0].item() + 0.5 * alone[1].item(), rel=1e-5)
    assert out["crosspoint.imid"].item() == pytest.approx(alone[0].item(), rel=1e-5)
    assert "crosspoint.cmid" in out and "parae.nll" in out  # every part is logged
    out["loss"].backward()
    assert method.backbone.decoder is not None and any(p.grad is not None for p in method.backbone.parameters())
    # the CMID part has weight 0: no gradient reaches the image encoder
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in method.image_encoder.parameters())


def test_composition_errors_name_the_task():
    with pytest.raises(ValueError, match="unknown task"):
        composed(simclr={})
    with pytest.raises(ValueError, match="task parae: backbone"):
        composed(parae={"backbone": "dgcnn"})
    with pytest.raises(ValueError, match="weight .*or parts"):
        composed(parae={"weight": 1.0, "parts": {"nll": 1.0}})
    method = composed(parae={"parts": {"likelihood": 1.0}, "partitions": 8})
    with pytest.raises(ValueError, match="no part 'likelihood'"):
        method({"points": torch.rand(2, 32, 3)})


def test_data_needs_are_the_union_of_the_tasks():
    needs = data_needs("compose", {"tasks": {"crosspoint": {}, "cmcv": {}, "parae": {}}})
    assert needs == {"images": True, "mesh": False, "point_views": 2, "views": 2}
    assert data_needs("mims", {"modalities": ["points", "mesh"]}) == {"images": False, "point_views": 2, "views": 1,
                                                                      "mesh": True}
    with pytest.raises(RecipeError, match="model.tasks"):
        data_needs("compose", {})


def point_only_composition() -> Composed:
    torch.manual_seed(0)
    return Composed(tasks={"parae": {"partitions": 8},
                           "mims": {"modalities": ["points"], "projection_dim": 8, "hidden_dim": 16,
                                    "gather_distributed": False}},
                    backbone="pointnet-pointwise", backbone_config=POINTWISE)


def test_a_composed_run_with_shared_weights_resumes_to_identical_weights(tmp_path):
    clouds = AugmentedClouds(builtin_splits(num_points=64, train=2, test=0)["train"], point_views=2)
    config = TrainConfig(steps=6, batch_size=4, seed=3, optimizer=OptimConfig("adam", 1e-2), log_every=1,
                         checkpoint_every=2)
    Trainer(point_only_composition(), clouds, config, tmp_path / "whole", log=lambda m: None).fit()
    whole = load_file(str(tmp_path / "whole" / "checkpoints" / "step-0000006" / "model.safetensors"))
    with pytest.raises(Interrupt):
        Trainer(dies_at_call(point_only_composition(), 5), clouds, config, tmp_path / "cut", log=lambda m: None).fit()
    torch.manual_seed(123)
    summary = Trainer(point_only_composition(), clouds, config, tmp_path / "cut", log=lambda m: None).fit(resume=True)
    assert summary["resumed_from"] == 4
    resumed = load_file(str(tmp_path / "cut" / "checkpoints" / "step-0000006" / "model.safetensors"))
    assert whole.keys() == resumed.keys() and any(k.startswith("backbone.") for k in whole)
    for key, value in whole.items():
        assert torch.equal(resumed[key], value), key
    losses = [json.loads(line)["loss"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)


def test_the_shipped_composition_pretrains_on_the_builtin_shapes(tmp_path):
    from pretext3d.cli import main

    run = tmp_path / "compose"
    rc = main(["pretrain", "--recipe", "compose_cpu", "--out", str(run), "steps=12", "batch_size=8", "num_workers=0",
               "optimizer.lr=0.003", "model.backbone_config={num_outputs: 8, num_categories: 0, k: 8, emb_dims: 32, "
               "transform: false}", "model.tasks.parae.partitions=8", "model.tasks.picpoint.local_samples=32",
               "model.tasks.picpoint.embed_dim=16", "data_options.points=128", "data_options.image_size=32",
               "data_options.builtin={train: 4, test: 1}", "data_options.builtin_store={views: 4, image_size: 32, faces: 64}",
               "log_every=1"])
    assert rc == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert {"crosspoint.imid", "picpoint.local", "parae.nll"} <= set(lines[0])
    assert (run / "backbone.safetensors").is_file()


def _shipped_like_composition(shared: bool) -> Composed:
    """The shipped composition's tasks (CrossPoint IMID, Pic@Point local, ParAE) on a small
    point-wise DGCNN and a ResNet-18."""
    torch.manual_seed(0)
    return Composed(tasks={"crosspoint": {"parts": {"imid": 1.0}, "hidden_dim": 16, "projection_dim": 8,
                                          "gather_distributed": False},
                           "picpoint": {"parts": {"local": 1.0}, "local_samples": 16, "embed_dim": 16,
                                        "gather_distributed": False},
                           "parae": {"weight": 1.0, "partitions": 8}},
                    backbone="dgcnn-seg", backbone_config={"num_outputs": 8, "num_categories": 0, "k": 8, "emb_dims": 32,
                                                           "transform": False},
                    image_encoder="resnet18", shared_passes=shared)


def test_shared_passes_give_the_same_loss_and_gradients_with_each_pass_run_once():
    from pretext3d.geometry.cameras import make_cameras
    from pretext3d.pretext.compose import shared_passes

    g = torch.Generator().manual_seed(3)
    cams = make_cameras("random", 4, seed=3)
    views = torch.rand(4, 2, 96, 3, generator=g) - 0.5
    batch = {"points": views[:, 0], "point_views": views, "images": torch.randn(4, 1, 3, 64, 64, generator=g),
             "view": torch.from_numpy(cams.view[:, None]).float(), "proj": torch.from_numpy(cams.proj[:, None]).float()}
    results = {}
    for shared in (False, True):
        method = _shipped_like_composition(shared).train()
        for module in method.modules():  # the seg head's dropout draws a new mask per pass: off, so that
            if isinstance(module, torch.nn.Dropout):  # the two forms compute the same function
                module.eval()
        runs = {"backbone": 0, "image": 0}  # a submodule's hook fires only when the encoder really runs
        method.backbone.edge_convs[0].register_forward_hook(lambda *_: runs.__setitem__("backbone", runs["backbone"] + 1))
        method.image_encoder.conv1.register_forward_hook(lambda *_: runs.__setitem__("image", runs["image"] + 1))
        torch.manual_seed(5)  # Pic@Point's draw of local samples
        out = method(batch)
        out["loss"].backward()
        grads = {name: p.grad.clone() for name, p in method.named_parameters() if p.grad is not None}
        results[shared] = out, grads, dict(runs)
        assert "forward" not in vars(method.backbone) and "forward" not in vars(method.image_encoder)  # restored
    (plain, plain_grads, plain_runs), (shared, shared_grads, shared_runs) = results[False], results[True]
    assert plain_runs == {"backbone": 3, "image": 2}  # CrossPoint's 2B views, Pic@Point's and ParAE's B; two image passes
    assert shared_runs == {"backbone": 2, "image": 1}  # Pic@Point and ParAE share one pass; one image pass
    assert abs(shared["loss"].item() - plain["loss"].item()) <= 1e-6 * max(1.0, abs(plain["loss"].item()))
    for part in ("crosspoint.imid", "picpoint.local", "parae.nll"):
        assert shared[part].item() == pytest.approx(plain[part].item(), abs=1e-6)
    assert shared_grads.keys() == plain_grads.keys() and len(plain_grads) > 20
    for name, grad in plain_grads.items():
        scale = max(1.0, grad.abs().max().item())
        assert (shared_grads[name] - grad).abs().max().item() <= 1e-6 * scale, name
    # inputs that differ in memory, values, a later in-place change, or grad mode are not shared
    layer = torch.nn.Linear(3, 2)
    x = torch.ones(2, 3)
    with shared_passes(layer) as counts:
        first = layer(x)
        assert layer(x) is first and layer(x.clone()) is not first
        x.add_(1.0)
        assert not torch.equal(layer(x), first)
        with torch.no_grad():
            layer(x)
    assert counts == {"runs": 4, "reused": 1}
