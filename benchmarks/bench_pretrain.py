"""Where a pretraining step's time goes, for each shipped recipe: the step split into data wait,
forward, backward and optimiser, the matmul/conv FLOPs it executes (torch's FLOP counter), the
GFLOP/s that achieves, against a plain matmul's GFLOP/s measured in the same run, and peak
memory (each recipe runs in its own process: its own high-water mark).

Each recipe is built as `pretext3d pretrain` builds it (its method, its dataset: the built-in
shapes, or the built-in store for methods that need images, prepared once under --work), fed
by a DataLoader with the recipe's batch size and workers, and trained with its optimiser for
--steps steps after one warm-up step. Usage:

    python benchmarks/bench_pretrain.py                       # the CPU recipes (*_cpu)
    python benchmarks/bench_pretrain.py --recipes parae crosspoint_dgcnn --set batch_size=8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "src" / "pretext3d" / "recipes"


def plain_matmul_gflops(size: int = 1024, repeats: int = 10) -> float:
    """GFLOP/s of a float32 (size x size) @ (size x size) product, best of ``repeats``."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def _loader(recipe: dict, dataset):
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(0)
    return DataLoader(dataset, batch_size=recipe["batch_size"], shuffle=True, drop_last=True, generator=generator,
                      num_workers=recipe.get("num_workers") or 0)


def profile_recipe(name: str, overrides: list[str], steps: int, work: Path) -> dict:
    """One recipe's step profile (runs in this process)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pretext3d.config import apply_overrides, build_dataset, build_method, complete, load_recipe, train_config
    from pretext3d.engine.trainer import make_optimizer, trainable_groups

    recipe = complete(apply_overrides(load_recipe(RECIPES / f"{name}.yaml"), overrides))
    torch.manual_seed(recipe["seed"])
    method = build_method(recipe).train()
    dataset = build_dataset(recipe, work / name, log=lambda m: None)
    config = train_config(recipe, len(dataset))
    optimizer = make_optimizer(trainable_groups(method), config.optimizer)
    batches = iter(_loader(recipe, dataset))
    parts = {"data_wait": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    flops = 0
    for step in range(steps + 1):  # step 0 warms up (allocations, numba compilation) and counts FLOPs
        began = time.perf_counter()
        batch = next(batches)
        waited = time.perf_counter() - began
        counter = FlopCounterMode(display=False) if step == 0 else None
        if counter:
            counter.__enter__()
        began = time.perf_counter()
        loss = method(batch)["loss"]
        forward = time.perf_counter() - began
        optimizer.zero_grad(set_to_none=True)
        began = time.perf_counter()
        loss.backward()
        backward = time.perf_counter() - began
        if counter:
            counter.__exit__(None, None, None)
            flops = counter.get_total_flops()
        began = time.perf_counter()
        optimizer.step()
        stepped = time.perf_counter() - began
        if step:
            for key, value in zip(parts, (waited, forward, backward, stepped)):
                parts[key] += value / steps
    total = sum(parts.values())
    matmul = plain_matmul_gflops()
    achieved = flops / total / 1e9 if total else 0.0
    return {"recipe": name, "batch_size": recipe["batch_size"], "points": recipe["data_options"].get("points"),
            "image_size": recipe["data_options"].get("image_size"), "steps_timed": steps,
            "seconds": {**parts, "step": total}, "gflop_per_step": flops / 1e9, "achieved_gflops": achieved,
            "plain_matmul_gflops": matmul, "fraction_of_matmul": achieved / matmul if matmul else 0.0,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads(), "overrides": overrides}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=None, help="recipe names (default: every *_cpu recipe)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every recipe")
    parser.add_argument("--work", default=str(ROOT / "bench_out" / "pretrain_work"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one recipe in this process, print its JSON
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "pretrain.json"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(profile_recipe(args.one, args.set, args.steps, Path(args.work))))
        return
    names = args.recipes or sorted(p.stem for p in RECIPES.glob("*_cpu.yaml"))
    rows = []
    print(f"{'recipe':16s} {'s/step':>7s} {'data':>6s} {'fwd':>6s} {'bwd':>6s} {'opt':>6s} {'GFLOP':>7s} "
          f"{'GFLOP/s':>8s} {'matmul':>7s} {'share':>6s} {'peak MiB':>9s}")
    for name in names:
        command = [sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--work", args.work,
                   "--set", *args.set]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name:16s} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        s = row["seconds"]
        print(f"{name:16s} {s['step']:7.2f} {s['data_wait']:6.2f} {s['forward']:6.2f} {s['backward']:6.2f} "
              f"{s['optimizer']:6.2f} {row['gflop_per_step']:7.1f} {row['achieved_gflops']:8.1f} "
              f"{row['plain_matmul_gflops']:7.1f} {100 * row['fraction_of_matmul']:5.1f}% {row['peak_rss_mib']:9.0f}",
              flush=True)
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
