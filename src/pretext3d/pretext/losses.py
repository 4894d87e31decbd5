"""Losses of the pretext tasks, each a small module with its formula."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NTXentLoss", "gather_with_grad"]


def gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """All-gather ``x`` (B, D) from every process, keeping gradients to the local part.

    Returns the concatenation (world * B, D) and this process's rank; outside a distributed run,
    (x, 0).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0), dist.get_rank()


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross entropy (SimCLR; the loss CrossPoint trains with).

    For a batch of B pairs (z0_i, z1_i), let u = normalise([z0; z1]) (2B rows) and
    s_ab = u_a . u_b / t. Each row a has one positive p(a) (its partner) and 2B - 2 negatives:

        L = -1/(2B) sum_a log( exp(s_{a,p(a)}) / sum_{b != a} exp(s_ab) )

    With ``gather_distributed=True`` the negatives are taken from the whole global batch across
    processes (rows stay local, columns are global), so the mean of the processes' losses equals
    a single-process run on the global batch (tested); every process must have the same batch
    size (use ``drop_last=True``).
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        """z0, z1: (B, D) two views of the same B samples -> scalar loss."""
        if z0.shape != z1.shape or z0.dim() != 2:
            raise ValueError(f"expected two (B, D) tensors of equal shape, got {tuple(z0.shape)}, {tuple(z1.shape)}")
        z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
        n = z0.shape[0]
        if self.gather_distributed:
            all0, rank = gather_with_grad(z0)
            all1, _ = gather_with_grad(z1)
        else:
            all0, all1, rank = z0, z1, 0
        total = all0.shape[0]
        rows = torch.cat([z0, z1])  # (2B, D) local
        cols = torch.cat([all0, all1])  # (2G, D) global
        logits = rows @ cols.t() / self.temperature
        local = torch.arange(n, device=z0.device) + rank * n
        self_cols = torch.cat([local, local + total])
        logits[torch.arange(2 * n, device=z0.device), self_cols] = float("-inf")
        positives = torch.cat([local + total, local])
        return F.cross_entropy(logits, positives)
