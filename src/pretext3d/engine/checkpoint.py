"""Backbone checkpoints: safetensors weights + JSON config in the file's metadata.

A pretext3d checkpoint stores the state dict of one backbone and, in the safetensors metadata,
``{"format": "pretext3d-backbone/1", "backbone": <registry name>, "config": <JSON kwargs>,
"extra": <JSON>}`` so that it can be rebuilt without code. Weights of the published reference
implementations (``.pth``/``.pt`` state dicts, read with ``weights_only=True``) load too: their
architecture is detected from the parameter names. Nothing is ever unpickled.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from pretext3d.models import REFERENCES, build_backbone, detect_reference, load_reference, read_state_dict
from pretext3d.utils.io import atomic_path

__all__ = ["CheckpointError", "LoadedBackbone", "save_backbone", "load_backbone", "resolve_checkpoint", "FORMAT",
           "REFERENCE_BACKBONES", "unique_state_dict", "load_unique_state_dict", "checkpoint_architecture", "load_method",
           "training_checkpoints", "run_recipe"]

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
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "backbone": backbone, "config": json.dumps(config),
                "extra": json.dumps(extra or {})}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def _aliases(state: dict[str, Tensor]) -> dict[str, str]:
    """Names of a ``state_dict(keep_vars=True)`` that hold the same tensor as an earlier name ->
    that first name (a module shared by several parents, as in a composed recipe, appears once
    per parent)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, tensor in state.items():
        aliases.update({name: first[id(tensor)]} if id(tensor) in first else {})
        first.setdefault(id(tensor), name)
    return aliases


def unique_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with each shared tensor once, under its first name (safetensors
    stores no aliased tensors), detached, on the CPU, contiguous."""
    state = model.state_dict(keep_vars=True)
    aliases = _aliases(state)
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in aliases}


def load_unique_state_dict(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Inverse of ``unique_state_dict``: every alias is filled from its first name; strict."""
    state = model.state_dict(keep_vars=True)
    aliases = _aliases(state)
    names = {k for k in state if k not in aliases}
    if names != set(tensors):
        missing, unexpected = sorted(names - set(tensors)), sorted(set(tensors) - names)
        raise CheckpointError(f"the checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict({k: tensors[aliases.get(k, k)] for k in state})


def training_checkpoints(run: str | Path) -> list[Path]:
    """The complete ``checkpoints/step-N`` folders of a run (with trainer.json), oldest first."""
    found = [p for p in (Path(run) / "checkpoints").glob("step-*") if p.is_dir() and (p / "trainer.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def run_recipe(run: str | Path) -> dict[str, Any]:
    """The recipe.json of a ``pretext3d pretrain`` run folder, without the image weights it
    started from (a checkpoint, or a random init, replaces them: they are never read again)."""
    run = Path(run)
    if not (run / "recipe.json").is_file():
        raise CheckpointError(f"{run}: not a pretext3d pretrain run folder (no recipe.json)")
    recipe = json.loads((run / "recipe.json").read_text())
    recipe["model"] = {k: v for k, v in recipe["model"].items() if k != "image_weights"}
    return recipe


def load_method(run: str | Path, step: int | None = None, recipe: dict[str, Any] | None = None) -> nn.Module:
    """The whole pretext method of a ``pretext3d pretrain`` run folder (every encoder and head,
    e.g. MIMS's image, point and mesh encoders for ``fused_features``), rebuilt from its
    recipe.json and loaded from its newest checkpoint (or ``step``); in eval mode. Image weights
    named in the recipe are not read again: the checkpoint holds the trained ones."""
    from safetensors.torch import load_file

    from pretext3d.config import build_method

    run = Path(run)
    recipe = recipe if recipe is not None else run_recipe(run)  # ``run_recipe(run)`` when the caller has it
    folders = training_checkpoints(run)
    if step is not None:
        folders = [f for f in folders if f.name == f"step-{step:07d}"]
    if not folders:
        raise CheckpointError(f"{run}: no checkpoint{'' if step is None else f' of step {step}'} in {run / 'checkpoints'}")
    method = build_method(recipe)
    try:
        load_unique_state_dict(method, load_file(str(folders[-1] / "model.safetensors")))
    except (OSError, RuntimeError) as err:
        raise CheckpointError(f"{folders[-1]}: cannot be loaded into {recipe['method']} ({err})") from None
    return method.eval()


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


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the backbone.safetensors a `pretext3d pretrain` run folder holds."""
    path = Path(path)
    if path.is_dir():
        if not (path / "backbone.safetensors").is_file():
            raise CheckpointError(f"{path}: a folder without backbone.safetensors (not a finished pretraining run)")
        return path / "backbone.safetensors"
    return path


def load_backbone(path: str | Path, expected: str | None = None, **reference_config: Any) -> LoadedBackbone:
    """Rebuild a backbone from a pretext3d checkpoint (a file or a finished run folder) or from
    reference weights.

    expected: the backbone name the caller asked for (an error if the checkpoint holds another);
    reference_config: passed to ``load_reference`` (e.g. ``k``) for reference weights.
    """
    path = resolve_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"{path}: does not exist")
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
    """(registry name, config) of the backbone a pretext3d checkpoint (file or run folder) holds,
    read from its metadata alone (e.g. to build the same network with random weights)."""
    path = resolve_checkpoint(path)
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
