"""Pretraining as a library call: a recipe (a file, a shipped name or a dict) with overrides,
run into a run folder by the one training loop, resumable, also under ``torchrun``.

``pretrain`` checks the run folder (a new run needs a fresh folder, or one whose earlier start
failed before its first checkpoint; a resumed one the recipe it was started with, up to
``FREE_ON_RESUME`` keys and the length, ``EXTENDS``), builds the method and its training data
from the recipe, records ``recipe.json`` and trains; the trainer writes the checkpoints,
``metrics.jsonl``, ``backbone.safetensors`` and ``config.json``. ``pretext3d pretrain`` and the
demo call it.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from pretext3d.config import (TOP_LEVEL, RecipeError, apply_overrides, build_dataset, build_method, check_paper_setting,
                              complete, load_recipe, train_config)
from pretext3d.engine.checkpoint import training_checkpoints
from pretext3d.engine.trainer import Trainer
from pretext3d.utils.device import finish_distributed, init_distributed, rank_and_world, rank_zero_first, resolve_device
from pretext3d.utils.io import atomic_write_json
from pretext3d.utils.lock import folder_lock

__all__ = ["pretrain", "check_run_folder", "FREE_ON_RESUME", "EXTENDS"]

# recipe keys that do not change what is computed: a resumed run may set them differently
FREE_ON_RESUME = frozenset({"log_every", "tensorboard", "num_workers", "checkpoint_every", "keep_checkpoints", "device",
                            "keep_freed_memory"})
# the run's length: a resumed run may ask for more (it is extended; the trainer states the schedule rule)
EXTENDS = frozenset({"steps", "epochs"})


def _started(out: Path) -> bool:
    """Whether a run in ``out`` got as far as a checkpoint or its exported backbone (a start that
    failed before that left nothing a new start could lose)."""
    return (out / "backbone.safetensors").exists() or bool(training_checkpoints(out))


def check_run_folder(out: Path, recipe: dict[str, Any], resume: bool) -> None:
    """A new run needs a fresh folder (or one whose earlier start failed before its first
    checkpoint); a resumed one the recipe it was started with (up to ``FREE_ON_RESUME`` keys)."""
    if out.exists() and not out.is_dir():
        raise RecipeError(f"{out}: exists and is not a folder; --out names the run folder")
    saved = out / "recipe.json"
    if saved.exists() and not resume and _started(out):
        raise RecipeError(f"{out}: already holds a run; pass --resume to continue it, or choose another --out "
                          "(or delete the folder to start it over)")
    if resume and saved.exists() and _started(out):  # a start that failed before its first checkpoint binds nothing
        before, now = json.loads(saved.read_text()), json.loads(json.dumps(recipe))
        before = {**json.loads(json.dumps(TOP_LEVEL)), **before}  # a key added since the run started takes its default
        changed = sorted(k for k in set(before) | set(now)
                         if before.get(k) != now.get(k) and k not in FREE_ON_RESUME | EXTENDS)
        if changed:
            raise RecipeError(f"{out}: the run was started with another recipe (differs in {', '.join(changed)}); "
                              "resume it with the same recipe (steps or epochs may grow, to extend it), or give "
                              "another --out")


def _checkpoint_step(out: Path) -> int:
    """The step of the run's newest complete checkpoint (0: none)."""
    folders = training_checkpoints(out)
    return int(folders[-1].name.split("-")[-1]) if folders else 0


def _recipe_changes(out: Path, settings: dict[str, Any]) -> bool:
    """Whether recipe.json must be (re)written: a new run, or a resumed one whose length changed
    (a resume with only ``FREE_ON_RESUME`` keys changed leaves the folder as it was)."""
    try:
        before = json.loads((out / "recipe.json").read_text())
    except (OSError, ValueError):
        return True
    if not _started(out):
        return True
    return any(before.get(key) != settings.get(key) for key in EXTENDS)


def _require_tensorboard() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise RecipeError("tensorboard=true needs the tensorboard package: pip install tensorboard") from None


def _recipe(recipe: str | Path | Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A recipe file, a shipped recipe's name or a recipe mapping, completed, with overrides."""
    base = complete(dict(recipe)) if isinstance(recipe, Mapping) else load_recipe(recipe)
    return apply_overrides(base, overrides)


def pretrain(recipe: str | Path | Mapping[str, Any], out: str | Path, overrides: Sequence[str] = (),
             resume: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``recipe`` (a YAML file, a shipped recipe's name, or a recipe mapping) with
    ``overrides`` into the run folder ``out``; returns the trainer's summary and this process's
    rank."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    settings = _recipe(recipe, overrides)
    check_paper_setting(settings)
    if settings["tensorboard"]:
        _require_tensorboard()  # in every process, before any of them waits on the others
    out = Path(out)
    init_distributed()
    rank, _ = rank_and_world()
    resolve_device(settings["device"])  # a device this machine lacks is an error now, not after the setup
    check_run_folder(out, settings, resume)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    # rank 0 holds the folder's lock for the whole run: a second run into it is refused at once
    # (under torchrun the other processes are the same run)
    with folder_lock(out) if rank == 0 else nullcontext():
        check_run_folder(out, settings, resume)  # again, under the lock
        summary = _train(settings, recipe, out, overrides, resume, rank, log)
    finish_distributed()
    return {**summary, "rank": rank}


def _train(settings: dict[str, Any], recipe: str | Path | Mapping[str, Any], out: Path, overrides: Sequence[str],
           resume: bool, rank: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Build the method and its data, record recipe.json (only once both are built, so that a
    start that fails here leaves the folder reusable), and train."""
    torch.manual_seed(settings["seed"])  # the same initial weights in every process and run
    method = build_method(settings)
    with rank_zero_first():  # rank 0 alone prepares the built-in store when one is needed
        dataset = build_dataset(settings, out, log=log if rank == 0 else (lambda m: None), prepare_store=rank == 0)
    config = train_config(settings, len(dataset))
    done = _checkpoint_step(out) if resume else 0
    if done > config.steps:
        raise RecipeError(f"{out}: the run has trained {done} steps; {config.steps} steps would shorten it "
                          "(a run can be extended with more steps or epochs, not shortened)")
    with rank_zero_first():  # rank 0 writes the recipe before any process trains
        if rank == 0 and _recipe_changes(out, settings):
            atomic_write_json(out / "recipe.json", settings)
    if rank == 0:
        log(f"{settings['method']}: {len(dataset)} training samples, {config.steps} steps of {config.batch_size}")
    source = "recipe mapping" if isinstance(recipe, Mapping) else str(recipe)
    extra = {"recipe": settings, "recipe_path": source, "overrides": list(overrides),
             "paper_setting": bool(settings["paper_setting"])}
    return Trainer(method, dataset, config, out, extra_config=extra, log=log).fit(resume=resume)
