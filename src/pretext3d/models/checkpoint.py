"""The backbone file: safetensors weights + JSON config in the file's metadata.

A pretext3d backbone file stores the state dict of one backbone and, in the safetensors
metadata, ``{"format": "pretext3d-backbone/1", "backbone": <registry name>, "config": <JSON
kwargs>, "extra": <JSON>}`` so that it can be rebuilt without code. Weights of the published
reference implementations (``.pth``/``.pt`` state dicts, read with ``weights_only=True``) load
too: their architecture is detected from the parameter names. Nothing is ever unpickled.

This module reads and writes files only; a ``pretext3d pretrain`` run folder is resolved to its
backbone file by ``pretext3d.runs``.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from pretext3d.models.reference import REFERENCES, detect_reference, load_reference, read_state_dict
from pretext3d.models.registry import build_backbone
from pretext3d.utils.io import atomic_path, save_tensors

__all__ = ["CheckpointError", "LoadedBackbone", "ExportsBackbone", "save_backbone", "load_backbone_file",
           "checkpoint_architecture", "FORMAT", "REFERENCE_BACKBONES"]

FORMAT = "pretext3d-backbone/1"


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message starts with its path."""


@dataclass
class LoadedBackbone:
    model: nn.Module
    backbone: str  # our registry name ("dgcnn", "pointnet", ...)
    config: dict[str, Any]
    source: str  # "pretext3d" or the reference name
    extra: dict[str, Any] = field(default_factory=dict)


def save_backbone(path: str | Path, model: nn.Module, backbone: str, config: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and how to rebuild it (atomically)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "backbone": backbone, "config": json.dumps(config),
                "extra": json.dumps(extra or {})}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_tensors(state, tmp, metadata)
    return path


class ExportsBackbone:
    """A module that carries a backbone to export (a pretext method, a fine-tuned model): it
    sets ``backbone`` (the module), ``backbone_name`` (its registry name) and
    ``backbone_config`` (the kwargs that rebuild it). The trainer calls ``export_backbone``."""

    backbone: nn.Module
    backbone_name: str
    backbone_config: dict[str, Any]

    def export_backbone(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the backbone file (``save_backbone``) of this module's backbone."""
        return save_backbone(path, self.backbone, self.backbone_name, self.backbone_config, extra)


# our registry name for the module each reference architecture loads as
REFERENCE_BACKBONES = {
    "crosspoint-dgcnn": "dgcnn",
    "jing-dgcnn512": "dgcnn",
    "crosspoint-pointnet": "pointnet",
    "crosspoint-dgcnn-partseg": "dgcnn-seg",
    "deepgmr-pointnet": "pointnet-pointwise",
    "meshnet": "meshnet",  # with its classifier: global_ is the reference's 256-d feature
    "jing-meshnet512": "meshnet",
}


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, not a checkpoint file (pretext3d.load_backbone also reads the "
                              "folder of a finished `pretext3d pretrain` run)")
    if not path.exists():
        raise CheckpointError(f"{path}: does not exist")
    return path


def load_backbone_file(path: str | Path, expected: str | None = None, **reference_config: Any) -> LoadedBackbone:
    """Rebuild a backbone from a pretext3d backbone file or from reference weights.

    expected: the backbone name the caller asked for (an error if the file holds another);
    reference_config: passed to ``load_reference`` (e.g. ``k``) for reference weights.
    """
    path = _existing_file(path)
    if path.suffix == ".safetensors":
        metadata = _read_metadata(path)
        if metadata.get("format") == FORMAT:
            return _load_ours(path, metadata, expected)
    try:
        state = read_state_dict(path)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot be read as weights ({type(err).__name__}: {err})") from None
    reference = detect_reference(state)
    if reference is None:
        raise CheckpointError(f"{path}: neither a pretext3d checkpoint nor weights of a known reference model")
    name = REFERENCE_BACKBONES[reference]
    if expected is not None and expected != name:
        raise CheckpointError(f"{path}: holds a {reference} ({name}) model, not a {expected}")
    accepted = inspect.signature(REFERENCES[reference]).parameters
    config = {k: v for k, v in reference_config.items() if k in accepted}  # e.g. k only for DGCNNs
    try:
        model = load_reference(reference, state, **config)
    except (ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path}: {err}") from None
    return LoadedBackbone(model, name, config, reference)


def checkpoint_architecture(path: str | Path) -> tuple[str, dict[str, Any]]:
    """(registry name, config) of the backbone a pretext3d backbone file holds, read from its
    metadata alone (e.g. to build the same network with random weights)."""
    path = _existing_file(path)
    metadata = _read_metadata(path)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pretext3d backbone checkpoint (no {FORMAT} metadata)")
    name, config, _ = _parse_metadata(path, metadata)
    return name, config


def _read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file (without reading its tensors)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types (and OSError) for unusable files
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def _parse_metadata(path: Path, metadata: dict[str, str]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    try:
        return metadata["backbone"], json.loads(metadata.get("config", "{}")), json.loads(metadata.get("extra", "{}"))
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: damaged pretext3d metadata ({type(err).__name__}: {err})") from None


def _load_ours(path: Path, metadata: dict[str, str], expected: str | None) -> LoadedBackbone:
    from safetensors.torch import load_file

    name, config, extra = _parse_metadata(path, metadata)
    if expected is not None and expected != name:
        raise CheckpointError(f"{path}: holds a {name} backbone, not a {expected}")
    try:
        model = build_backbone(name, **config)
        result = model.load_state_dict(load_file(str(path)), strict=False)
    except (ValueError, TypeError, RuntimeError) as err:  # unknown name/config key, shape mismatch
        raise CheckpointError(f"{path}: weights do not fit {name}({config}): {err}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: weights do not fit {name}({config}): missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return LoadedBackbone(model.eval(), name, config, "pretext3d", extra)
