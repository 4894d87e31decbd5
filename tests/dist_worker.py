"""Run under torchrun by test_distributed.py: sharded feature extraction and the NT-Xent loss
with negatives gathered across processes, written to OUT_rank<r>.npz."""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.distributed as dist

from pretext3d.eval import extract_features
from pretext3d.models import PointNet
from pretext3d.pretext import NTXentLoss
from pretext3d.utils.device import finish_distributed
from tests_helpers import tiny_clouds


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = PointNet(emb_dims=16).eval()
    feats = extract_features(model, tiny_clouds(11), batch_size=3, progress=False)
    g = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
    local0 = z0[rows].clone().requires_grad_()
    loss = NTXentLoss(0.2, gather_distributed=True)(local0, z1[rows])
    loss.backward()
    np.savez(f"{out}_rank{rank}.npz", features=feats.features, indices=feats.indices, loss=loss.item(),
             grad=local0.grad.numpy())
    finish_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
