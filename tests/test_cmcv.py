"""Jing et al.'s cross-modality / cross-view task: known answers of both losses, the negative
view, what trains, and a short run on the built-in shapes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from pretext3d.models import ImageFeatures
from pretext3d.pretext.cmcv import CMCV, JING_DGCNN, cross_modal_loss


def test_cross_modal_loss_known_answer():
    # logits (z0, z1): softmax over two = sigmoid(z1 - z0)
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    same = torch.tensor([True, True, False])
    loss, accuracy = cross_modal_loss(logits, same)
    # p(same) = 1/2, 3/4, 1/4: -[log 1/2 + log 3/4 + log 3/4] / 3
    assert loss.item() == pytest.approx(-(math.log(0.5) + 2 * math.log(0.75)) / 3)
    assert accuracy.item() == pytest.approx(2 / 3)  # the tie (0, 0) is read as "different"


class FlatImages(nn.Module):
    """A stand-in F_img: the first two pixels of channel 0 as the image feature."""

    feature_dim = 2

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images):
        return ImageFeatures(global_=self.scale * images[:, 0, 0, :2], local=images)


def test_cross_view_uses_the_next_objects_first_view_as_negative():
    torch.manual_seed(0)
    method = CMCV(backbone="pointnet", backbone_config={"emb_dims": 8}, image_encoder=FlatImages(), margin=0.5)
    images = torch.zeros(3, 2, 3, 4, 4)
    # object b: first view at (1, 0) rotated by b * 90 degrees, second view = first view
    firsts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    images[:, 0, 0, 0, :2] = firsts
    images[:, 1, 0, 0, :2] = firsts
    out = method({"points": torch.rand(3, 32, 3), "images": images})
    # anchor = positive: d+ = 0; negatives: next object's first view, d- = sqrt 2, sqrt 2, 2
    expected = (2 * max(0.0, 0.5 - math.sqrt(2)) + max(0.0, 0.5 - 2.0)) / 3
    assert out["cross_view"].item() == pytest.approx(expected)
    assert out["d_positive"].item() == pytest.approx(0.0)
    assert out["d_negative"].item() == pytest.approx((2 * math.sqrt(2) + 2) / 3)
    # a second view far from the first: each triplet costs d+ - d- + margin
    images[:, 1, 0, 0, :2] = -firsts
    out = method({"points": torch.rand(3, 32, 3), "images": images})
    expected = (2 * (2 - math.sqrt(2) + 0.5) + max(0.0, 2 - 2 + 0.5)) / 3
    assert out["cross_view"].item() == pytest.approx(expected)


def test_cmcv_loss_parts_and_gradients():
    torch.manual_seed(0)
    method = CMCV(backbone="dgcnn", backbone_config={**JING_DGCNN, "k": 8}, cm_weight=0.5)
    assert method.backbone.global_dim == 512 and method.fusion[0].in_features == 1024  # F_f: 1024 -> 256 -> 2
    assert [conv.layers[-1].out_features for conv in method.backbone.edge_convs] == [64, 64, 64, 128]
    batch = {"points": torch.rand(4, 64, 3), "images": torch.randn(4, 2, 3, 32, 32)}
    out = method(batch)
    assert out["loss"].item() == pytest.approx((out["cross_view"] + 0.5 * out["cross_modal"]).item(), rel=1e-6)
    out["loss"].backward()
    for module in (method.backbone, method.image_encoder, method.fusion):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    with pytest.raises(ValueError, match="two views"):
        method({"points": batch["points"], "images": batch["images"][:, :1]})


def test_cmcv_pretrains_on_the_builtin_shapes_with_decreasing_loss(tmp_path):
    from pretext3d.cli import main

    run = tmp_path / "cmcv"
    rc = main(["pretrain", "--recipe", "cmcv_cpu", "--out", str(run), "steps=16", "batch_size=8", "num_workers=0",
               "optimizer.lr=0.003", "model.backbone_config={k: 8, widths: [16, 16, 16, 32], emb_dims: 32, pooling: max}",
               "model.fusion_hidden=32", "data_options.points=128", "data_options.image_size=32",
               "data_options.builtin={train: 4, test: 1}", "data_options.builtin_store={views: 4, image_size: 32, faces: 64}",
               "log_every=1"])
    assert rc == 0
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    assert (run / "backbone.safetensors").is_file()
