"""Device selection without hard-coding: CPU, one GPU, or one GPU per process under torchrun."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_with_grad",
    "all_reduce_with_grad",
    "finish_distributed",
    "init_distributed",
    "is_distributed",
    "rank_and_world",
    "rank_zero_first",
    "resolve_device",
]


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' -> this process's GPU when CUDA is available (LOCAL_RANK under torchrun), else CPU;
    any other string is passed to torch.device (cpu, cuda, cuda:<index>, mps, ...), and must name
    a device this machine has (a ValueError says what it has)."""
    if spec != "auto":
        try:
            device = torch.device(spec)
        except (RuntimeError, TypeError):
            raise ValueError(f"device {spec!r} is not a device name (auto, cpu, cuda, cuda:N, mps)") from None
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if (device.index or 0) >= count:
                raise ValueError(f"device {spec!r}: this machine has {count} CUDA device(s) (use --device cpu or auto)")
        return device
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


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Run the block on rank 0 first and on the other processes after it (e.g. rank 0 writes a
    file the others then read); if it raises on rank 0, the others raise too instead of waiting.
    A plain block outside a distributed run."""
    if not is_distributed():
        yield
        return
    if dist.get_rank() != 0:
        flag = [None]
        dist.broadcast_object_list(flag, src=0)
        if not flag[0]:
            raise RuntimeError("process 0 failed in a step the others wait for (its error is in its log)")
        yield
        return
    ok = False
    try:
        yield
        ok = True
    finally:  # tell the others in any case, so that an error on rank 0 does not leave them waiting
        dist.broadcast_object_list([ok], src=0)


def finish_distributed() -> None:
    """Leave the process group: wait for every process first, so that no peer tears its gloo
    connections down while another still uses them (a cause of aborts at exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """y = sum_p x_p on every process; dL/dx_p = sum_q dL_q/dy (each process's loss uses y)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class _AllGatherCat(torch.autograd.Function):
    """y = cat_p x_p (dim 0) on every process; dL/dx_r = (sum_q dL_q/dy)[rows of r]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of ``x`` over processes (``x`` itself outside a distributed run)."""
    return _AllReduceSum.apply(x) if is_distributed() else x


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Differentiable concatenation of every process's ``x`` (B, ...) along dim 0 (same B on every
    process; ``x`` itself outside a distributed run)."""
    return _AllGatherCat.apply(x) if is_distributed() else x
