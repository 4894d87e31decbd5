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
    python benchmarks/bench_pretrain.py --baseline /tmp/before/src --rounds 2   # against other code

--baseline SRC runs every recipe also with the pretext3d package found in SRC (another checkout's
src folder, e.g. a `git worktree` of an earlier commit, with that checkout's recipes), the two
forms alternating for --rounds rounds in this one run; each form's fastest round is kept and the
speed-up printed.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from _common import run_json_child

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


def top_operators(run_step, count: int) -> list[dict]:
    """The ``count`` operators with the most self CPU time in one more step under torch.profiler:
    name, seconds, share of the profiled step's self time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as traced:
        run_step()
    averages = [a for a in traced.key_averages() if a.self_cpu_time_total > 0]
    total = sum(a.self_cpu_time_total for a in averages) or 1
    averages.sort(key=lambda a: a.self_cpu_time_total, reverse=True)
    return [{"op": a.key, "seconds": a.self_cpu_time_total / 1e6, "share": a.self_cpu_time_total / total,
             "calls": a.count} for a in averages[:count]]


def profile_recipe(name: str, overrides: list[str], steps: int, work: Path, ops: int = 0) -> dict:
    """One recipe's step profile (runs in this process); with ``ops``, also its top operators."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import pretext3d
    from pretext3d.config import apply_overrides, build_dataset, build_method, complete, load_recipe, train_config
    from pretext3d.engine.trainer import make_optimizer, trainable_groups

    recipes = Path(pretext3d.__file__).parent / "recipes"  # the recipes of the code being measured
    recipe = complete(apply_overrides(load_recipe(recipes / f"{name}.yaml"), overrides))
    if recipe.get("keep_freed_memory"):  # as the trainer does (absent in code from before it existed)
        from pretext3d.utils.memory import keep_freed_memory

        keep_freed_memory()
    torch.manual_seed(recipe["seed"])
    method = build_method(recipe).train()
    dataset = build_dataset(recipe, work / name, log=lambda m: None)
    config = train_config(recipe, len(dataset))
    optimizer = make_optimizer(trainable_groups(method), config.optimizer)
    batches = iter(_loader(recipe, dataset))
    finish = getattr(dataset, "on_device", lambda batch: batch)  # as the trainer does
    parts = {"data_wait": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    flops = 0
    for step in range(steps + 1):  # step 0 warms up (allocations, numba compilation) and counts FLOPs
        began = time.perf_counter()
        batch = finish(next(batches))
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
    operators = []
    if ops:
        def run_step() -> None:
            loss = method(finish(next(batches)))["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        operators = top_operators(run_step, ops)
    matmul = plain_matmul_gflops()
    achieved = flops / total / 1e9 if total else 0.0
    return {"recipe": name, "batch_size": recipe["batch_size"], "points": recipe["data_options"].get("points"),
            "image_size": recipe["data_options"].get("image_size"), "steps_timed": steps,
            "seconds": {**parts, "step": total}, "gflop_per_step": flops / 1e9, "achieved_gflops": achieved,
            "plain_matmul_gflops": matmul, "fraction_of_matmul": achieved / matmul if matmul else 0.0,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads(), "overrides": overrides, "top_operators": operators,
            "code": str(Path(pretext3d.__file__).parents[1])}


def _run_one(name: str, args: argparse.Namespace, src: str | None) -> dict | None:
    """One recipe's profile in a fresh process (with the package in ``src`` when given)."""
    command = [sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--work", args.work,
               "--ops", str(args.ops), "--set", *args.set]
    return run_json_child(command, src, f"{name:25s}")


def _print_row(label: str, row: dict) -> None:
    s = row["seconds"]
    print(f"{label:25s} {s['step']:7.2f} {s['data_wait']:6.2f} {s['forward']:6.2f} {s['backward']:6.2f} "
          f"{s['optimizer']:6.2f} {row['gflop_per_step']:7.1f} {row['achieved_gflops']:8.1f} "
          f"{row['plain_matmul_gflops']:7.1f} {100 * row['fraction_of_matmul']:5.1f}% {row['peak_rss_mib']:9.0f}",
          flush=True)
    for op in row["top_operators"]:
        print(f"    {op['op'][:40]:40s} {op['seconds']:7.2f} s {100 * op['share']:5.1f}%  x{op['calls']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=None, help="recipe names (default: every *_cpu recipe)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every recipe")
    parser.add_argument("--ops", type=int, default=0, help="also list each recipe's N operators with the most "
                        "self CPU time in one more step (torch.profiler)")
    parser.add_argument("--baseline", metavar="SRC", help="also run every recipe with the pretext3d package in SRC")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds per recipe (the fastest is kept)")
    parser.add_argument("--work", default=str(ROOT / "bench_out" / "pretrain_work"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one recipe in this process, print its JSON
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "pretrain.json"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(profile_recipe(args.one, args.set, args.steps, Path(args.work), args.ops)))
        return
    names = args.recipes or sorted(p.stem for p in RECIPES.glob("*_cpu.yaml"))
    forms = [("", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    rows = []
    print(f"{'recipe':25s} {'s/step':>7s} {'data':>6s} {'fwd':>6s} {'bwd':>6s} {'opt':>6s} {'GFLOP':>7s} "
          f"{'GFLOP/s':>8s} {'matmul':>7s} {'share':>6s} {'peak MiB':>9s}")
    for name in names:
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for label, src in forms:
                row = _run_one(name, args, src)
                if row is not None and (label not in best or row["seconds"]["step"] < best[label]["seconds"]["step"]):
                    best[label] = row
        for label, _ in forms:
            if label in best:
                rows.append({**best[label], "form": label or "this code"})
                _print_row(f"{name} ({label})" if label else name, best[label])
        if len(best) == 2:
            print(f"    speed-up over the baseline: {best['baseline']['seconds']['step'] / best['']['seconds']['step']:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
