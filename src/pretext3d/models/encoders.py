"""Encoders by name, and the inputs they take from a batch: image encoders (native ResNets,
optionally started from torchvision weights on disk) and MeshNet's face features."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pretext3d.models.reference import read_state_dict
from pretext3d.models.resnet import load_torchvision_weights, resnet18, resnet50

__all__ = ["IMAGE_ENCODERS", "image_encoder_module", "load_image_weights", "mesh_inputs"]

IMAGE_ENCODERS = {"resnet18": resnet18, "resnet50": resnet50}


def image_encoder_module(image_encoder: str | nn.Module, weights: str | None = None, frozen: bool = False) -> nn.Module:
    """A ResNet by name (IMAGE_ENCODERS), started from torchvision ``weights`` when given, or
    the module itself when given one (shared with other methods)."""
    if isinstance(image_encoder, nn.Module):
        return image_encoder
    if image_encoder not in IMAGE_ENCODERS:
        raise ValueError(f"unknown image_encoder {image_encoder!r}; known: {', '.join(IMAGE_ENCODERS)}")
    encoder = IMAGE_ENCODERS[image_encoder](frozen=frozen)
    if weights:
        load_image_weights(encoder, weights)
    return encoder


def load_image_weights(encoder: nn.Module, path: str) -> None:
    """torchvision ResNet weights (.pth/.pt read with weights_only=True, or .safetensors) into
    ``encoder``; its classifier (fc) is dropped."""
    try:
        state = read_state_dict(path)
        load_torchvision_weights(encoder, state, classifier="drop")
    except Exception as err:  # torch.load/safetensors raise many types (UnpicklingError, SafetensorError, ...)
        raise ValueError(f"{path}: not usable torchvision ResNet weights ({err})") from None


def mesh_inputs(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """MeshNet's inputs from a MultimodalDataset batch: mesh_centers (B, 3, F), mesh_corners
    (B, 9, F), mesh_normals (B, 3, F), mesh_neighbors (B, F, 3) -> faces (B, F, 15) = centre |
    corners - centre | normal, neighbours (B, F, 3)."""
    for key in ("mesh_centers", "mesh_corners", "mesh_normals", "mesh_neighbors"):
        if key not in batch:
            raise ValueError(f"mesh features need {key!r} in the batch (a prepared store with meshes)")
    faces = torch.cat([batch["mesh_centers"], batch["mesh_corners"], batch["mesh_normals"]], dim=1).transpose(1, 2)
    return faces.contiguous(), batch["mesh_neighbors"]
