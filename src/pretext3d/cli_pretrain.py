"""``pretext3d pretrain``: run a recipe into a run folder (resumable, also under torchrun)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["add_pretrain", "pretrain", "FREE_ON_RESUME"]

# recipe keys that do not change what is computed: a resumed run may set them differently
FREE_ON_RESUME = frozenset({"log_every", "tensorboard", "num_workers", "checkpoint_every", "keep_checkpoints", "device"})


def add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a backbone with a recipe (CrossPoint, ParAE)",
        description="Pretrain with a YAML recipe (configs/*.yaml). Overrides are key=value with dotted keys, "
        "e.g. steps=200 batch_size=32 optimizer.lr=3e-4 model.backbone_config.k=20 data=/path/to/store (a mapping value replaces the mapping: model.backbone=pointnet \"model.backbone_config={emb_dims: 1024}\"). "
        "The run folder gets metrics.jsonl, checkpoints/, and at the end backbone.safetensors and config.json. "
        "Several processes: torchrun --nproc_per_node=N -m pretext3d.cli pretrain ...",
    )
    p.add_argument("--recipe", required=True, help="recipe YAML (configs/*.yaml), or a shipped recipe's name "
                   "(crosspoint_dgcnn, crosspoint_cpu, parae, parae_dgcnn, parae_cpu)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    p.set_defaults(func=_cmd_pretrain)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    summary = pretrain(args.recipe, args.out, args.overrides, args.resume)
    if summary.get("rank", 0) == 0:
        final = " ".join(f"{k} {v:.4f}" for k, v in summary["final"].items())
        print(f"pretrained {summary['steps']} steps in {summary['seconds']:.0f} s ({final}); "
              f"backbone: {Path(args.out) / 'backbone.safetensors'}")
    return 0


def _check_run_folder(out: Path, recipe: dict[str, Any], resume: bool) -> None:
    """A new run needs a fresh folder; a resumed one the recipe it was started with (up to
    ``FREE_ON_RESUME`` keys)."""
    from pretext3d.config import RecipeError

    saved = out / "recipe.json"
    if saved.exists() and not resume:
        raise RecipeError(f"{out}: already holds a run; pass --resume to continue it, or choose another --out")
    if resume and saved.exists():
        before, now = json.loads(saved.read_text()), json.loads(json.dumps(recipe))
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k) and k not in FREE_ON_RESUME)
        if changed:
            raise RecipeError(f"{out}: the run was started with another recipe (differs in {', '.join(changed)})")


def _require_tensorboard() -> None:
    from pretext3d.config import RecipeError

    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise RecipeError("tensorboard=true needs the tensorboard package: pip install tensorboard") from None


def pretrain(recipe_path: str | Path, out: str | Path, overrides: list[str] | tuple[str, ...] = (),
             resume: bool = False, log=None) -> dict[str, Any]:
    """Run ``recipe_path`` with ``overrides`` into ``out``; returns the trainer's summary."""
    from pretext3d.config import apply_overrides, build_dataset, build_method, load_recipe, train_config
    from pretext3d.engine.trainer import Trainer
    from pretext3d.utils.device import finish_distributed, init_distributed, rank_and_world, rank_zero_first
    from pretext3d.utils.io import atomic_write_json

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    recipe = apply_overrides(load_recipe(recipe_path), overrides)
    if recipe["tensorboard"]:
        _require_tensorboard()  # in every process, before any of them waits on the others
    out = Path(out)
    init_distributed()
    rank, _ = rank_and_world()
    _check_run_folder(out, recipe, resume)
    with rank_zero_first():  # every process has checked the folder before rank 0 writes to it
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "recipe.json", recipe)
    torch.manual_seed(recipe["seed"])  # the same initial weights in every process and run
    method = build_method(recipe)
    with rank_zero_first():  # rank 0 alone prepares the built-in store when one is needed
        dataset = build_dataset(recipe, out, log=log if rank == 0 else (lambda m: None), prepare_store=rank == 0)
    config = train_config(recipe, len(dataset))
    if rank == 0:
        log(f"{recipe['method']}: {len(dataset)} training samples, {config.steps} steps of {config.batch_size}")
    extra = {"recipe": recipe, "recipe_path": str(recipe_path), "overrides": list(overrides)}
    summary = Trainer(method, dataset, config, out, extra_config=extra, log=log).fit(resume=resume)
    finish_distributed()
    return {**summary, "rank": rank}
