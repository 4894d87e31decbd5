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


__all__ = [
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
