"""Point backbones, image encoders (native ResNets), heads and the reference-weight importer.
Point backbones are found by name."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from pretext3d.models.dgcnn import DGCNN, DGCNNSeg
from pretext3d.models.edgeconv import EdgeConv
from pretext3d.models.layers import EncoderWithHead, PointFeatures, ProjectionHead
from pretext3d.models.meshnet import MeshNet, MeshNetClassifier
from pretext3d.models.pointnet import PointNet, PointNetPointwise
from pretext3d.models.pointnext import PointNeXt, PointNeXtSeg
from pretext3d.models.reference import REFERENCES, detect_reference, load_reference, read_state_dict
from pretext3d.models.resnet import ImageFeatures, ResNet, load_torchvision_weights, resnet18, resnet50

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


__all__ = [
    "backbone_label",
    "backbone_module",
    "ImageFeatures",
    "ResNet",
    "load_torchvision_weights",
    "resnet18",
    "resnet50",
    "BACKBONES",
    "DGCNN",
    "DGCNNSeg",
    "EdgeConv",
    "EncoderWithHead",
    "MeshNet",
    "MeshNetClassifier",
    "PointFeatures",
    "PointNet",
    "PointNetPointwise",
    "PointNeXt",
    "PointNeXtSeg",
    "ProjectionHead",
    "REFERENCES",
    "build_backbone",
    "detect_reference",
    "load_reference",
    "read_state_dict",
]
