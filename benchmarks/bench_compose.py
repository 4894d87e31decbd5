"""The shipped composed recipe (compose_cpu: CrossPoint IMID + Pic@Point local + ParAE on one
point-wise DGCNN and one ResNet-18) with its encoders' passes shared within a step against every
task running its own passes: training steps (forward, backward, Adam) at the recipe's sizes
(batch 16, 1024 points, 96-pixel images), the two forms alternating in one run, same weights
and batch. Usage: python benchmarks/bench_compose.py [--rounds 3] [--steps 2]"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pretext3d.config import build_method, complete, load_recipe
from pretext3d.geometry.cameras import make_cameras

RECIPE = Path(__file__).resolve().parents[1] / "src" / "pretext3d" / "recipes" / "compose_cpu.yaml"


def recipe_batch(batch: int, points: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of the recipe's shapes: two point views, one image with its camera."""
    g = torch.Generator().manual_seed(seed)
    cams = make_cameras("random", batch, seed=seed)
    views = torch.rand(batch, 2, points, 3, generator=g) - 0.5
    return {"points": views[:, 0], "point_views": views, "normals": torch.zeros(batch, points, 3),
            "images": torch.randn(batch, 1, 3, size, size, generator=g),
            "view": torch.from_numpy(cams.view[:, None]).float(), "proj": torch.from_numpy(cams.proj[:, None]).float()}


def step_seconds(method: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int) -> float:
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-4)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        method(batch)["loss"].backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    recipe = complete(load_recipe(RECIPE))
    torch.manual_seed(0)
    method = build_method(recipe).train()
    options = recipe["data_options"]
    batch = recipe_batch(recipe["batch_size"], options["points"], options["image_size"])
    print(f"compose_cpu: batch {recipe['batch_size']}, {options['points']} points, {options['image_size']} px, "
          f"{torch.get_num_threads()} threads")
    step_seconds(method, batch, 1)  # warm-up (allocations, numba compilation)
    times: dict[str, list[float]] = {"every task's passes": [], "shared passes": []}
    for _ in range(args.rounds):
        for name, shared in (("every task's passes", False), ("shared passes", True)):
            method.shared_passes = shared
            seconds = step_seconds(method, batch, args.steps)
            times[name].append(seconds)
            print(f"  {name:22s} {seconds:6.2f} s/step", flush=True)
    best = {name: min(values) for name, values in times.items()}
    plain, shared = best["every task's passes"], best["shared passes"]
    print(f"best of {args.rounds}: every task's passes {plain:.2f} s/step, shared passes {shared:.2f} s/step: "
          f"{plain / shared:.2f}x")
    ratio = plain / shared
    out = Path(__file__).resolve().parents[1] / "bench_out" / "compose.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"seconds_per_step": times, "best": best, "speedup": ratio,
                               "threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
