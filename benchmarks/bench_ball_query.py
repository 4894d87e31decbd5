"""Ball query on one run: the numba kernel vs the chunked torch path (what GPUs run), same input,
PointNeXt-S's first set abstraction (B=8, 512 centres of 1,024 points, radius 0.15, 32
neighbours) and a wider one (radius 0.5); checks that both return the same indices.
Usage: python benchmarks/bench_ball_query.py"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from _common import timed
from pretext3d.geometry.neighbors import _ball_query_torch, ball_query


def main() -> None:
    torch.manual_seed(0)
    points = torch.rand(8, 1024, 3) * 2 - 1
    centres = points[:, :512]
    results: dict[str, dict[str, float]] = {}
    for radius in (0.15, 0.5):
        same = torch.equal(ball_query(points, centres, radius, 32), _ball_query_torch(points, centres, radius, 32))
        kernel = timed(lambda: ball_query(points, centres, radius, 32), 5)
        fallback = timed(lambda: _ball_query_torch(points, centres, radius, 32), 3)
        results[f"r={radius}"] = {"numba_s": kernel, "torch_s": fallback, "ratio": fallback / kernel}
        print(f"radius {radius}: numba {kernel * 1000:7.1f} ms, torch {fallback * 1000:7.1f} ms, "
              f"{fallback / kernel:5.1f}x, same indices: {same}")
    out = Path(__file__).resolve().parents[1] / "bench_out" / "ball_query.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
