"""Can the data path feed a GPU? Per-worker samples/s of each paper recipe's training sample, and
the DataLoader workers a GPU step would need.

For each paper recipe (its points, views per sample, image size and augmentations, read from a
prepared store at the paper's image size) this measures, in one process with one thread (what
one DataLoader worker does):

* samples/s of ``dataset[i]`` over --samples samples (several epochs of a small split), and where a sample's time goes (cProfile,
  cumulative time of the data path's stages: reading the object file, PNG decoding, the
  crop + resize, colour jitter, normalisation, the point augmentation, the mesh arrays);
* the bytes of one sample as the worker hands it over (what pinned memory and the copy to the
  GPU carry);
* the matmul/conv GFLOP of one training sample (forward + backward at batch 2, torch's FLOP
  counter, divided by 2);

then the workers needed to keep a GPU busy: ceil(batch x GPU steps/s / worker samples/s), with
GPU steps/s = assumed sustained GPU rate / (GFLOP per sample x batch). Usage:

    python benchmarks/bench_data_path.py STORE [--recipes cmcv mims] [--gpu-tflops 30 100]
    python benchmarks/bench_data_path.py STORE --baseline BEFORE/src   # also with other code, same run

STORE: a store prepared at the papers' size, e.g.
``pretext3d prepare ../shared/data/shapenet_mini --out STORE --views 20 --image-size 224 --points 2048``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import pstats
import sys
import time
from pathlib import Path

from _common import run_json_child

ROOT = Path(__file__).resolve().parents[1]
PAPER_RECIPES = ("crosspoint_dgcnn", "picpoint_dgcnn", "picpoint_pointnext", "cmcv", "mims", "parae", "parae_dgcnn")
# (label, function names whose cumulative time is the stage's)
STAGES = (
    ("read", ("read_object",)),
    ("decode PNG", ("decode_images",)),
    ("crop + resize", ("resize",)),
    ("colour jitter", ("_colour_jitter", "colour_jitter")),
    ("normalise", ("normalize_pixels",)),
    ("points", ("augmented_views", "sampled_points")),
)


def stage_seconds(profile: cProfile.Profile, samples: int) -> dict[str, float]:
    """Cumulative seconds per sample of each stage's functions."""
    stats = pstats.Stats(profile)
    found: dict[str, float] = {label: 0.0 for label, _ in STAGES}
    for (_, _, function), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        for label, names in STAGES:
            if function in names:
                found[label] += cumulative / samples
    return found


def sample_bytes(item: dict) -> int:
    import torch

    return sum(v.numel() * v.element_size() for v in item.values() if isinstance(v, torch.Tensor))


def flops_per_sample(recipe: dict, dataset) -> float:
    """matmul/conv FLOPs of forward + backward on a batch of 2, per sample."""
    import torch
    from torch.utils.data import default_collate
    from torch.utils.flop_counter import FlopCounterMode

    from pretext3d.config import build_method

    torch.manual_seed(0)
    method = build_method(recipe).train()
    batch = default_collate([dataset[0], dataset[1]])
    batch = dataset.on_device(batch) if hasattr(dataset, "on_device") else batch  # as the trainer does
    with FlopCounterMode(display=False) as counter:
        method(batch)["loss"].backward()
    return counter.get_total_flops() / 2


def measure(name: str, store: str, samples: int, work: Path) -> dict:
    import torch

    from pretext3d.config import apply_overrides, build_dataset, complete, load_recipe

    torch.set_num_threads(1)  # a DataLoader worker runs with one thread
    recipes = Path(__import__("pretext3d").__file__).parent / "recipes"  # the measured code's recipes
    recipe = complete(apply_overrides(load_recipe(recipes / f"{name}.yaml"), [f"data={store}"]))
    dataset = build_dataset(recipe, work, log=lambda m: None)
    count = samples
    dataset[0]  # warm-up (imports, numba)
    profile = cProfile.Profile()
    began = time.perf_counter()
    profile.enable()
    for i in range(count):  # through the split again (a new epoch's draws) when it is shorter
        dataset.set_epoch(i // len(dataset))
        item = dataset[i % len(dataset)]
    profile.disable()
    seconds = (time.perf_counter() - began) / count
    return {"recipe": name, "batch_size": recipe["batch_size"], "num_workers": recipe["num_workers"],
            "points": recipe["data_options"]["points"], "image_size": recipe["data_options"]["image_size"],
            "views_per_sample": int(item["images"].shape[0]) if "images" in item else 0,
            "seconds_per_sample": seconds, "samples_per_s": 1 / seconds,
            "stages": stage_seconds(profile, count), "sample_bytes": sample_bytes(item),
            "image_dtype": str(item["images"].dtype) if "images" in item else None,
            "gflop_per_sample": flops_per_sample(recipe, dataset) / 1e9}


def workers_needed(row: dict, tflops: float) -> tuple[float, int]:
    """(GPU steps/s, workers) for a GPU sustaining ``tflops`` on the recipe's step."""
    steps = tflops * 1e12 / (row["gflop_per_sample"] * 1e9 * row["batch_size"])
    return steps, math.ceil(row["batch_size"] * steps / row["samples_per_s"])


def _run_one(name: str, args: argparse.Namespace, src: str | None) -> dict | None:
    """One recipe measured in a fresh process (with the package in ``src`` when given)."""
    command = [sys.executable, __file__, args.store, "--one", name, "--samples", str(args.samples), "--work", args.work]
    return run_json_child(command, src, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store")
    parser.add_argument("--recipes", nargs="+", default=list(PAPER_RECIPES))
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--gpu-tflops", type=float, nargs="+", default=[30.0, 100.0],
                        help="assumed sustained GPU rates (TFLOP/s) for the workers estimate")
    parser.add_argument("--baseline", metavar="SRC", help="also measure with the pretext3d package in SRC")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # measure one recipe in this process, print its JSON
    parser.add_argument("--work", default=str(ROOT / "bench_out" / "data_path_work"))
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "data_path.json"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.store, args.samples, Path(args.work))))
        return
    forms = [("", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    rows = []
    for name in args.recipes:
        for label, src in forms:
            row = _run_one(name, args, src)
            if row is None:
                continue
            rows.append({**row, "form": label or "this code"})
            estimate = ", ".join(f"{t:g} TFLOP/s: {s:.1f} steps/s, {w} workers"
                                 for t in args.gpu_tflops for s, w in [workers_needed(row, t)])
            stages = " ".join(f"{k} {1000 * v:.1f}" for k, v in row["stages"].items() if v)
            print(f"{name + (' (' + label + ')' if label else ''):30s} {row['samples_per_s']:7.1f} samples/s/worker "
                  f"({1000 * row['seconds_per_sample']:.1f} ms: {stages} ms), {row['views_per_sample']} view(s) at "
                  f"{row['image_size']} px, {row['sample_bytes'] / 2**20:.2f} MiB/sample ({row['image_dtype']} images), "
                  f"{row['gflop_per_sample']:.1f} GFLOP/sample, batch {row['batch_size']}; {estimate}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"gpu_tflops": args.gpu_tflops, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
