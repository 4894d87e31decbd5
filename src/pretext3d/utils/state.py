"""State dicts of modules that share submodules (a composed recipe shares its encoders between
tasks): each shared tensor is stored once, under its first name (safetensors refuses aliases)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["unique_state_dict", "load_unique_state_dict"]


def _aliases(state: dict[str, Tensor]) -> dict[str, str]:
    """Names of a ``state_dict(keep_vars=True)`` that hold the same tensor as an earlier name ->
    that first name (a module shared by several parents appears once per parent)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, tensor in state.items():
        aliases.update({name: first[id(tensor)]} if id(tensor) in first else {})
        first.setdefault(id(tensor), name)
    return aliases


def unique_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with each shared tensor once, under its first name, detached, on
    the CPU, contiguous."""
    state = model.state_dict(keep_vars=True)
    aliases = _aliases(state)
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in aliases}


def load_unique_state_dict(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Inverse of ``unique_state_dict``: every alias is filled from its first name; strict.
    Raises ValueError naming the first missing and unexpected names when the tensors do not fit."""
    state = model.state_dict(keep_vars=True)
    aliases = _aliases(state)
    names = {k for k in state if k not in aliases}
    if names != set(tensors):
        missing, unexpected = sorted(names - set(tensors)), sorted(set(tensors) - names)
        raise ValueError(f"the checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict({k: tensors[aliases.get(k, k)] for k in state})
