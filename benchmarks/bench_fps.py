"""Farthest point sampling backends on one run: exact FPS of 2,048 from 100k points and of 1,024
from 4,096 (B=16), numba kernel vs batched torch loop vs fpsample (if installed), same input;
checks that all return the same indices. Usage: python benchmarks/bench_fps.py"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from _common import timed
from pretext3d.geometry import farthest_point_sample, fps_backends


def main() -> None:
    rng = np.random.default_rng(0)
    cases = {"100k->2048": (rng.random((100_000, 3), dtype=np.float32), 2048),
             "16x4096->1024": (rng.random((16, 4096, 3), dtype=np.float32), 1024)}
    results: dict[str, dict[str, float]] = {}
    for name, (points, m) in cases.items():
        reference = None
        results[name] = {}
        for backend in fps_backends():
            idx = farthest_point_sample(points, m, backend=backend)
            reference = idx if reference is None else reference
            same = bool(np.array_equal(idx, reference))
            seconds = timed(lambda: farthest_point_sample(points, m, backend=backend), 3)
            results[name][backend] = seconds
            print(f"{name:15s} {backend:9s} {seconds * 1000:9.1f} ms  same indices as {fps_backends()[0]}: {same}")
    out = Path(__file__).resolve().parents[1] / "bench_out" / "fps.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
