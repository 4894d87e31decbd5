"""The ground floor of networks: point backbones (found by name, ``registry``), image encoders
(native ResNets, ``encoders``), MeshNet, heads, the reference-weight importer and the backbone
file format (``checkpoint``). Nothing here knows data sets, methods, training or evaluation."""

from __future__ import annotations

from pretext3d.models.dgcnn import DGCNN, DGCNNSeg
from pretext3d.models.checkpoint import CheckpointError, LoadedBackbone, checkpoint_architecture, load_backbone_file, save_backbone
from pretext3d.models.edgeconv import EdgeConv
from pretext3d.models.encoders import IMAGE_ENCODERS, image_encoder_module, load_image_weights, mesh_inputs
from pretext3d.models.layers import EncoderWithHead, PointFeatures, ProjectionHead
from pretext3d.models.meshnet import MeshNet, MeshNetClassifier
from pretext3d.models.pointnet import PointNet, PointNetPointwise
from pretext3d.models.pointnext import PointNeXt, PointNeXtSeg
from pretext3d.models.reference import REFERENCES, detect_reference, load_reference, read_state_dict
from pretext3d.models.registry import BACKBONES, backbone_label, backbone_module, build_backbone
from pretext3d.models.resnet import ImageFeatures, ResNet, load_torchvision_weights, resnet18, resnet50

__all__ = [
    "CheckpointError",
    "LoadedBackbone",
    "checkpoint_architecture",
    "load_backbone_file",
    "save_backbone",
    "IMAGE_ENCODERS",
    "image_encoder_module",
    "load_image_weights",
    "mesh_inputs",
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
