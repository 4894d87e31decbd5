"""Run under torchrun by test_distributed.py: sharded feature extraction and the NT-Xent loss
with negatives gathered across processes, written to OUT_rank<r>.npz."""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.distributed as dist

from pretext3d.eval import extract_features
from pretext3d.engine.sync_bn import convert_batchnorm
from pretext3d.models import DGCNN, DGCNNSeg, PointNet
from pretext3d.pretext import NTXentLoss
from pretext3d.utils.device import finish_distributed
from tests_helpers import tiny_clouds


def dgcnn_step(rows: slice, impl: str = "fast", segmentation: bool = False) -> dict[str, np.ndarray]:
    """A train-mode DGCNN (BatchNorm over the global batch) on this process's rows of a fixed
    batch: global features, input gradients and parameter gradients of sum(features^2) (plus
    sum(point outputs^2) for the point-wise network, whose blocks have two layers).
    Keys are prefixed with the impl (and ``seg_`` for the point-wise network)."""
    torch.manual_seed(0)
    if segmentation:
        net = DGCNNSeg(num_outputs=4, num_categories=0, k=4, emb_dims=8, transform=False, dropout=0.0)
    else:
        net = DGCNN(k=4, emb_dims=8)
    net = convert_batchnorm(net).train()
    net.impl = impl
    x = torch.randn(8, 24, 3, generator=torch.Generator().manual_seed(2))[rows].clone().requires_grad_()
    # the fast classification network as the pretext tasks call it, without per-point output (its
    # last layer's BatchNorm, activation and pooling fused); the others with it
    out = net(x) if segmentation else net(x, need_local=impl == "plain")
    features = out.global_
    loss = features.square().sum()
    if segmentation:
        loss = loss + out.point_logits.square().sum()
    loss.backward()
    grads = {f"param_{name}": p.grad.numpy() for name, p in net.named_parameters()}
    stats = {f"buffer_{name}": b.numpy() for name, b in net.named_buffers() if "running" in name}
    result = {"dgcnn_features": features.detach().numpy(), "dgcnn_input_grad": x.grad.numpy(), **grads, **stats}
    tag = f"{impl}_seg" if segmentation else impl
    return {f"{tag}_{k}": v for k, v in result.items()}


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
    dgcnn = {**dgcnn_step(rows, "fast"), **dgcnn_step(rows, "plain"),
             **dgcnn_step(rows, "fast", segmentation=True), **dgcnn_step(rows, "plain", segmentation=True)}
    np.savez(f"{out}_rank{rank}.npz", features=feats.features, indices=feats.indices, loss=loss.item(),
             grad=local0.grad.numpy(), **dgcnn)
    finish_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
