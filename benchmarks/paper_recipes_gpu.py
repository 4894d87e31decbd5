"""Throughput of each paper recipe at its real size: steps/s, peak memory, the share of time
spent waiting for data, and the projected time of the full run.

    python benchmarks/paper_recipes_gpu.py --steps 50 [--store STORE] [--image-weights R18.pth]

Each shipped paper recipe trains for ``--steps`` steps at its own batch size, points, image size
and precision on this machine's default device (a GPU when there is one; ``--device`` to
choose) through ``pretext3d pretrain``, on a store (by default one prepared from the built-in
shapes at 2048 points, 24 views of 224 pixels: the sizes the recipes read; the content does
not change the cost). The rate leaves out the first logged interval (start-up, cuDNN tuning,
the data workers' first batches). The projected time of a full run is the recipe's steps
(``steps``, or ``epochs`` x the objects of its paper's data / batch) divided by that rate.
benchmarks/paper_recipes_gpu.sh runs it; CI does not (no GPU), a test runs its summary on a
CPU run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

# the objects a full run of each paper recipe iterates over per epoch (recipes with fixed steps need none)
PAPER_TRAIN_OBJECTS = {
    "crosspoint_dgcnn": (43_783, "ShapeNet models with 3D-R2N2 renders, 13 categories (CrossPoint Sec. 4.1)"),
    "parae": (45_958, "80% of ShapeNetCore's 57,448 models (a folder without splits keeps 1 in 5 for test)"),
    "parae_dgcnn": (45_958, "80% of ShapeNetCore's 57,448 models (a folder without splits keeps 1 in 5 for test)"),
    "picpoint_dgcnn": (45_958, "80% of ShapeNetCore's 57,448 models"),
    "picpoint_pointnext": (45_958, "80% of ShapeNetCore's 57,448 models"),
}
PAPER_RECIPES = ("crosspoint_dgcnn", "parae", "parae_dgcnn", "picpoint_dgcnn", "picpoint_pointnext", "cmcv", "mims")


def full_steps(recipe: dict, name: str) -> tuple[int, str]:
    """The steps of the recipe's full run and where the count comes from."""
    if recipe.get("paper_steps"):
        return int(recipe["paper_steps"]), "the recipe's steps"
    objects, source = PAPER_TRAIN_OBJECTS[name]
    return round(recipe["paper_epochs"] * (objects // recipe["batch_size"])), \
        f"{recipe['paper_epochs']:g} epochs of {objects} objects ({source})"


def summarize(run: Path, name: str, paper: dict) -> dict:
    """What one benchmark run measured (metrics.jsonl of ``run``) and its projection."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    lines = [line for line in lines if "seconds" in line]
    if len(lines) < 2:
        raise ValueError(f"{run}: needs at least two logged steps to leave out the first interval")
    first, last = lines[0], lines[-1]
    rate = (last["step"] - first["step"]) / (last["seconds"] - first["seconds"])
    steps, source = full_steps(paper, name)
    return {"recipe": name, "batch_size": paper["batch_size"], "steps_per_second": rate,
            "samples_per_second": rate * paper["batch_size"], "peak_memory_mib": last.get("peak_memory_mib"),
            "data_wait": last.get("data_wait"), "full_steps": steps, "full_steps_from": source,
            "projected_hours": steps / rate / 3600}


def _paper_settings(name: str) -> dict:
    from pretext3d.config import load_recipe

    recipe = load_recipe(name)
    return {"batch_size": recipe["batch_size"], "paper_steps": recipe["steps"], "paper_epochs": recipe["epochs"]}


def _prepare_store(store: Path) -> None:
    if (store / "store.json").is_file():
        return
    subprocess.run([sys.executable, "-m", "pretext3d.cli", "prepare", "builtin:train=40,test=2", "--out", str(store),
                    "--points", "2048", "--views", "24", "--layout", "random", "--image-size", "224", "--faces", "1024",
                    "--workers", "4", "--quiet"], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("/tmp/paper_recipes_gpu"))
    parser.add_argument("--store", type=Path, help="a prepared store with meshes (default: built-in shapes, prepared once)")
    parser.add_argument("--image-weights", help="a torchvision ResNet-18 file for Pic@Point (else its variant runs)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--recipes", nargs="+", default=list(PAPER_RECIPES))
    parser.add_argument("--batch-size", type=int, help="override every recipe's batch (a CPU check; not a measurement)")
    parser.add_argument("--json", type=Path, help="write the table as JSON")
    args = parser.parse_args(argv)
    store = args.store or args.out / "store"
    _prepare_store(store)
    rows = []
    for name in args.recipes:
        paper = _paper_settings(name)
        run = args.out / name
        overrides = [f"data={store}", f"steps={args.steps}", f"log_every={max(1, args.steps // 5)}",
                     f"checkpoint_every={10 * args.steps}", f"device={args.device}"]
        if name.startswith("picpoint"):
            overrides.append(f"model.image_weights={args.image_weights}" if args.image_weights else "paper_setting=false")
        if args.batch_size:
            overrides.append(f"batch_size={args.batch_size}")
            paper["batch_size"] = args.batch_size
        shutil.rmtree(run, ignore_errors=True)  # a fresh run each time (pretrain refuses a used folder)
        subprocess.run([sys.executable, "-m", "pretext3d.cli", "pretrain", "--recipe", name, "--out", str(run), *overrides],
                       check=True)
        rows.append(summarize(run, name, paper))
    print(f"{'recipe':20s} {'batch':>5s} {'steps/s':>8s} {'samples/s':>9s} {'peak MiB':>9s} {'data wait':>9s} "
          f"{'full steps':>10s} {'projected':>10s}")
    for r in rows:
        print(f"{r['recipe']:20s} {r['batch_size']:5d} {r['steps_per_second']:8.2f} {r['samples_per_second']:9.1f} "
              f"{r['peak_memory_mib'] or 0:9.0f} {100 * (r['data_wait'] or 0):8.0f}% {r['full_steps']:10d} "
              f"{r['projected_hours']:8.1f} h")
    for r in rows:
        print(f"  {r['recipe']}: full run = {r['full_steps_from']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
