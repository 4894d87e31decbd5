"""Can 2 DataLoader workers keep a training step fed? Loader throughput vs a DGCNN step.

Usage: python benchmarks/bench_dataset.py STORE [--batch 16] [--views 2] [--points 1024]

Times, in one run: batches/s of ``MultimodalDataset`` (paper augmentations on, k views per
sample) through a DataLoader with 0 and 2 workers, and one DGCNN training step (forward +
backward + SGD) on a batch of the same size. The loader keeps up when a batch takes less
time to load with 2 workers than a step takes to compute.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timed  # noqa: E402

from pretext3d.data.multimodal import MultimodalDataset  # noqa: E402
from pretext3d.models import DGCNN  # noqa: E402


def loader_seconds_per_batch(dataset, batch: int, workers: int, batches: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    iterator = iter(loader)
    next(iterator)  # start-up (worker launch) is not part of the steady state
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return (time.perf_counter() - start) / batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    dataset = MultimodalDataset(args.store, split=None, num_points=args.points, views_per_sample=args.views)
    results = {}
    for workers in (0, 2):
        results[f"loader_{workers}_workers_s"] = loader_seconds_per_batch(dataset, args.batch, workers, args.batches)
    model = DGCNN(k=20, emb_dims=1024).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    points = torch.randn(args.batch, args.points, 3)

    def step() -> None:
        optimiser.zero_grad()
        model(points).global_.square().mean().backward()
        optimiser.step()

    results["dgcnn_train_step_s"] = timed(step, repeats=3)
    for key, value in results.items():
        print(f"{key:26s} {value:7.3f} s per batch of {args.batch}")
    fed = results["loader_2_workers_s"] < results["dgcnn_train_step_s"]
    print(f"2 workers {'keep' if fed else 'do NOT keep'} a DGCNN step fed "
          f"({results['dgcnn_train_step_s'] / results['loader_2_workers_s']:.1f}x margin)")
    Path("bench_out").mkdir(exist_ok=True)
    Path("bench_out/dataset.json").write_text(json.dumps({**vars(args), **results}, indent=2))


if __name__ == "__main__":
    main()
