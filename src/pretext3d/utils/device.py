"""Device selection without hard-coding: CPU, one GPU, or one GPU per process under torchrun."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["resolve_device", "is_distributed", "rank_and_world"]


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' -> this process's GPU when CUDA is available (LOCAL_RANK under torchrun), else CPU;
    any other string is passed to torch.device (cpu, cuda, cuda:<index>, mps, ...)."""
    if spec != "auto":
        return torch.device(spec)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)
