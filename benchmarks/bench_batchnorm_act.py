"""Training BatchNorm + activation: the fused CPU kernels (models/batchnorm_act.py) against torch's
BatchNorm and activation modules, same inputs and weights, one run.

Measures forward + backward, medians of alternating repeats (fused, torch, fused, ...):
  * one layer's BatchNorm + activation on the row shapes the CPU recipes train (batch 32,
    1024 points: PointNet's 64- and 1024-wide layers, DGCNN's 1024-wide LeakyReLU layer), and a
    last layer's BatchNorm + activation + max+avg pooling without the per-point output;
  * whole networks with every per-point BatchNorm + activation fused or not: PointNet as
    crosspoint_cpu builds and calls it (no per-point output), the point-wise PointNet of
    parae_cpu, DGCNN as picpoint_cpu builds it (with per-point output) and as mims_cpu calls it
    (without) (batch 32); loss sum(global feature^2) (+ sum(point outputs^2) for the point-wise
    network). "torch" is the same network with the fusion switched off.
Writes bench_out/batchnorm_act.json and prints a table.
Usage: python benchmarks/bench_batchnorm_act.py [--repeats 5] [--threads 2] [--only PointNet ...]
"""

from __future__ import annotations

import argparse
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from _common import timed_pair
from pretext3d.models import DGCNN, PointNet, PointNetPointwise
from pretext3d.models import layers
from pretext3d.models.batchnorm_act import fused_batch_norm_act, fused_batch_norm_act_pool
from pretext3d.utils.memory import keep_freed_memory

OUT = Path(__file__).resolve().parents[1] / "bench_out"


@contextmanager
def torch_modules_only() -> Iterator[None]:
    """Every BatchNorm + activation through torch's modules (the fusion switched off)."""
    saved = layers.can_fuse_batch_norm
    layers.can_fuse_batch_norm = lambda x, bn: False
    try:
        yield
    finally:
        layers.can_fuse_batch_norm = saved


def layer_case(rows: int, channels: int, kind: str) -> tuple[Callable[[], None], Callable[[], None]]:
    bn = nn.BatchNorm1d(channels)
    x = torch.randn(rows, channels, requires_grad=True)
    grad = torch.randn(rows, channels)
    slope = {"relu": 0.0, "leaky_relu": layers.LEAKY_SLOPE}[kind]

    def fused() -> None:
        fused_batch_norm_act(x, bn, slope).backward(grad)

    def plain() -> None:
        layers.activation(bn(x), kind).backward(grad)

    return fused, plain


def pooled_layer_case(n_batch: int, channels: int, kind: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """A last layer's BatchNorm + activation + max+avg pooling over 1024 points (what PointNet's
    and DGCNN's last layer do in the pretext tasks); torch: BatchNorm, activation, amax, mean."""
    bn = nn.BatchNorm1d(channels)
    x = torch.randn(n_batch * 1024, channels, requires_grad=True)
    grad = torch.randn(n_batch, 2 * channels)
    slope = {"relu": 0.0, "leaky_relu": layers.LEAKY_SLOPE}[kind]

    def fused() -> None:
        best, mean = fused_batch_norm_act_pool(x, bn, slope, n_batch)
        torch.cat([best, mean], dim=-1).backward(grad)

    def plain() -> None:
        local = layers.activation(bn(x), kind).view(n_batch, 1024, channels)
        layers.pool_points(local, "max+avg").backward(grad)

    return fused, plain


def network_case(model: nn.Module, inputs: torch.Tensor, need_local: bool = True) -> tuple[Callable[[], None], Callable[[], None]]:
    model.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(inputs, need_local=need_local)
        loss = out.global_.square().sum()
        if getattr(out, "point_logits", None) is not None:  # the point-wise network's decoder
            loss = loss + out.point_logits.square().sum()
        loss.backward()

    def plain() -> None:
        with torch_modules_only():
            step()

    return step, plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats of fused and torch")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", nargs="*", default=[], help="run the cases whose name contains one of these")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as Trainer.fit does
    torch.manual_seed(0)
    clouds = torch.rand(32, 1024, 3) * 2 - 1
    cases: dict[str, Callable[[], tuple[Callable[[], None], Callable[[], None]]]] = {
        "layer 32768 x 64, ReLU": lambda: layer_case(32768, 64, "relu"),
        "layer 32768 x 1024, ReLU": lambda: layer_case(32768, 1024, "relu"),
        "layer 32768 x 1024, LeakyReLU": lambda: layer_case(32768, 1024, "leaky_relu"),
        "last layer 32 x 1024 points x 1024 + max+avg pooling, ReLU": lambda: pooled_layer_case(32, 1024, "relu"),
        "PointNet (crosspoint_cpu), B 32": lambda: network_case(PointNet(emb_dims=1024, pooling="max+avg"), clouds,
                                                                need_local=False),
        "point-wise PointNet (parae_cpu), B 32": lambda: network_case(
            PointNetPointwise(encoder_widths=(64, 64, 64, 128, 1024), decoder_widths=(512, 256, 128),
                              pooling="max+avg", skip_layer=1), clouds),
        "DGCNN (picpoint_cpu), B 32": lambda: network_case(DGCNN(k=20, emb_dims=1024), clouds),
        "DGCNN (mims_cpu, no per-point output), B 32": lambda: network_case(
            DGCNN(k=20, emb_dims=1024, pooling="max+avg"), clouds, need_local=False),
    }
    rows = []
    for name, make in cases.items():
        if args.only and not any(part in name for part in args.only):
            continue
        fused, plain = make()
        t_fused, t_plain = timed_pair(fused, plain, args.repeats)
        rows.append({"case": name, "fused_s": t_fused, "torch_s": t_plain, "speedup": t_plain / t_fused})
        print(f"{name:48s} fused {t_fused * 1e3:8.1f} ms   torch {t_plain * 1e3:8.1f} ms   {t_plain / t_fused:5.2f}x",
              flush=True)
    OUT.mkdir(exist_ok=True)
    result = {"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__, "cases": rows}
    (OUT / "batchnorm_act.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
