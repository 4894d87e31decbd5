"""Point and mesh backbones by name: what a recipe's ``model.backbone`` and a checkpoint's
metadata refer to."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from pretext3d.models.dgcnn import DGCNN, DGCNNSeg
from pretext3d.models.meshnet import MeshNet
from pretext3d.models.pointnet import PointNet, PointNetPointwise
from pretext3d.models.pointnext import PointNeXt, PointNeXtSeg

__all__ = ["BACKBONES", "build_backbone", "backbone_module", "backbone_label"]

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "pointnet": PointNet,
    "dgcnn": DGCNN,
    "pointnet-pointwise": PointNetPointwise,
    "dgcnn-seg": DGCNNSeg,
    "meshnet": MeshNet,
    "pointnext": PointNeXt,
    "pointnext-seg": PointNeXtSeg,
}


def build_backbone(name: str, **config: Any) -> nn.Module:
    """Instantiate a backbone by name (see ``BACKBONES``) with keyword configuration."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](**config)


def backbone_module(backbone: str | nn.Module, config: dict[str, Any] | None = None) -> nn.Module:
    """The module itself when given one (an encoder shared with other methods in a composed
    recipe), else ``build_backbone(backbone, **config)``."""
    return backbone if isinstance(backbone, nn.Module) else build_backbone(backbone, **(config or {}))


def backbone_label(backbone: str | nn.Module) -> str:
    """A backbone's registry name, or its class name for a module passed in (a shared encoder:
    the composed method, not the task, exports it)."""
    return backbone if isinstance(backbone, str) else type(backbone).__name__
