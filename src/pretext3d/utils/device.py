"""Device selection without hard-coding: CPU, one GPU, or one GPU per process under torchrun."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["resolve_device", "is_distributed", "rank_and_world", "init_distributed"]


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


def init_distributed() -> None:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL when this process
    has a GPU, gloo otherwise. Does nothing in a single process or when already joined."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(resolve_device("auto"))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
