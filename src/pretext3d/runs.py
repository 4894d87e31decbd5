"""The one door to a finished ``pretext3d pretrain`` run folder.

A run folder holds ``recipe.json`` (the complete recipe it was started with),
``checkpoints/step-XXXXXXX/`` (the trainer's state; the newest complete one holds every weight
of the method), ``backbone.safetensors`` (the exported backbone, at the end), ``config.json``
and ``metrics.jsonl``. Evaluation, the report and any other consumer reach a trained method,
its recipe or its backbone only through this module; weights given as a file (a pretext3d
backbone file or reference weights) pass through it too, so callers need not tell the two apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pretext3d.config import BUILTIN_STORE
from pretext3d.engine.checkpoint import training_checkpoints
from pretext3d.models.checkpoint import CheckpointError, LoadedBackbone, checkpoint_architecture
from pretext3d.models.checkpoint import load_backbone_file
from pretext3d.pretext import METHODS, MethodSettingsError, PretextMethod, build_method
from pretext3d.utils.io import file_digest
from pretext3d.utils.state import load_unique_state_dict

__all__ = ["CheckpointError", "RunMethod", "RunRecord", "read_run", "evaluation_files", "is_run", "run_recipe",
           "training_store", "run_checkpoints", "backbone_file", "load_backbone", "backbone_architecture", "load_method",
           "method_like", "open_method", "recipe_tasks", "provenance", "BACKBONE_FILE"]

BACKBONE_FILE = "backbone.safetensors"


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a ``pretext3d pretrain`` run folder (finished or not)."""
    return (Path(path) / "recipe.json").is_file()


def run_recipe(run: str | Path) -> dict[str, Any]:
    """The recipe.json of a run folder, without the image weights it started from (a
    checkpoint, or a random init, replaces them: they are never read again)."""
    run = Path(run)
    if not is_run(run):
        raise CheckpointError(f"{run}: not a pretext3d pretrain run folder (no recipe.json)")
    try:
        recipe = json.loads((run / "recipe.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{run / 'recipe.json'}: cannot be read ({err})") from None
    recipe["model"] = {k: v for k, v in recipe["model"].items() if k != "image_weights"}
    return recipe


def provenance(weights: str | Path | None) -> dict[str, Any] | None:
    """What evaluation reports say about weights that come from a run folder (the folder itself,
    or a file inside it): the run, its method and recipe, and whether it ran its paper's setting
    (a paper recipe run as a variant, e.g. Pic@Point with a trained random image encoder, says
    False); None for weights from elsewhere."""
    if weights is None:
        return None
    path = Path(weights)
    folder = path if path.is_dir() else path.parent
    recipe = _json_object(folder / "recipe.json") if is_run(folder) else None
    if recipe is None:
        return None
    return {"run": str(folder), "method": recipe.get("method"), "paper_setting": bool(recipe.get("paper_setting")),
            "steps": recipe.get("steps"), "epochs": recipe.get("epochs")}


def run_checkpoints(run: str | Path) -> list[Path]:
    """The run's complete training checkpoints, oldest first."""
    return training_checkpoints(run)


def recipe_tasks(recipe: dict[str, Any] | None) -> set[str]:
    """The registered methods a recipe trains: its method and, for a composition, its tasks."""
    if not recipe or recipe.get("method") not in METHODS:
        return set()
    tasks = (recipe.get("model") or {}).get("tasks")
    return {recipe["method"], *(tasks if recipe["method"] == "compose" and isinstance(tasks, dict) else ())}


def training_store(run: str | Path, recipe: dict[str, Any]) -> Path:
    """The prepared store a run trained on: the recipe's ``data``, or, without it, the built-in
    shapes prepared into the run folder (``config.build_dataset``)."""
    data = recipe.get("data")
    return Path(data) if data else Path(run) / BUILTIN_STORE


def backbone_file(path: str | Path) -> Path:
    """A checkpoint file as given, or the backbone file a finished run folder holds."""
    path = Path(path)
    if path.is_dir():
        if not (path / BACKBONE_FILE).is_file():
            raise CheckpointError(f"{path}: a folder without {BACKBONE_FILE} (not a finished pretraining run)")
        return path / BACKBONE_FILE
    return path


def load_backbone(path: str | Path, expected: str | None = None, **reference_config: Any) -> LoadedBackbone:
    """Rebuild a backbone from a finished run folder, a pretext3d backbone file or reference
    weights (see ``models.checkpoint.load_backbone_file``)."""
    return load_backbone_file(backbone_file(path), expected, **reference_config)


def backbone_architecture(path: str | Path) -> tuple[str, dict[str, Any]]:
    """(registry name, config) of the backbone of a run folder or a pretext3d backbone file,
    from its metadata alone (e.g. to build the same network with random weights)."""
    return checkpoint_architecture(backbone_file(path))


def _build(recipe: dict[str, Any], run: Path) -> PretextMethod:
    try:
        return build_method(recipe["method"], recipe["model"])
    except MethodSettingsError as err:
        raise CheckpointError(f"{run}: its recipe no longer builds a method ({err})") from None


def load_method(run: str | Path, step: int | None = None, recipe: dict[str, Any] | None = None) -> PretextMethod:
    """The whole pretext method of a run folder (every encoder and head, e.g. MIMS's image,
    point and mesh encoders for ``fused_features``), rebuilt from its recipe.json and loaded from
    its newest checkpoint (or ``step``); in eval mode. Image weights named in the recipe are not
    read again: the checkpoint holds the trained ones."""
    run = Path(run)
    recipe = recipe if recipe is not None else run_recipe(run)
    return _trained_method(run, recipe, step)[0]


def method_like(run: str | Path, seed: int = 0, recipe: dict[str, Any] | None = None) -> PretextMethod:
    """The run's method with seeded random weights (the floor of the run), in eval mode. Its
    BatchNorm statistics are those of a fresh network: calibrate them before use."""
    run = Path(run)
    torch.manual_seed(seed)
    return _build(recipe if recipe is not None else run_recipe(run), run).eval()


@dataclass
class RunMethod:
    """A run's method with its recipe, what identifies its weights (for cache keys) and a
    description of them in words."""

    method: PretextMethod
    recipe: dict[str, Any]
    weights_id: dict[str, Any]
    source: str


def open_method(run: str | Path | None, random_init: bool = False, seed: int = 0, step: int | None = None,
                recipe: dict[str, Any] | None = None) -> RunMethod:
    """A run folder's method: its newest checkpoint (or ``step``) in eval mode, or with
    ``random_init`` the same method with seeded random weights."""
    if run is None:
        raise ValueError("this protocol needs a `pretext3d pretrain` run folder (with random_init: its architecture)")
    run = Path(run)
    recipe = recipe if recipe is not None else run_recipe(run)
    if random_init:
        method = method_like(run, seed, recipe)
        return RunMethod(method, recipe, {"random_like": recipe, "init_seed": seed},
                         f"{recipe['method']} of {run}, random init (seed {seed})")
    method, folder = _trained_method(run, recipe, step)
    return RunMethod(method, recipe, {"run_weights": file_digest(folder / "model.safetensors")},
                     f"{recipe['method']} run {run} ({folder.name})")


def _trained_method(run: Path, recipe: dict[str, Any], step: int | None) -> tuple[PretextMethod, Path]:
    """The method loaded from the newest checkpoint (or ``step``), in eval mode, and that checkpoint's folder."""
    from safetensors.torch import load_file

    folders = run_checkpoints(run)
    if step is not None:
        folders = [f for f in folders if f.name == f"step-{step:07d}"]
    if not folders:
        raise CheckpointError(f"{run}: no checkpoint{'' if step is None else f' of step {step}'} in {run / 'checkpoints'}")
    method = _build(recipe, run)
    try:
        load_unique_state_dict(method, load_file(str(folders[-1] / "model.safetensors")))
    except (OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{folders[-1]}: cannot be loaded into {recipe['method']} ({err})") from None
    return method.eval(), folders[-1]


def _json_object(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@dataclass
class RunRecord:
    """What a run folder says about its training: recipe.json (None when unreadable),
    config.json (the trainer's settings and summary; empty until the run finished), the rows of
    metrics.jsonl (a line cut short by a kill is skipped) and whether the backbone was exported."""

    path: Path
    recipe: dict[str, Any] | None
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    finished: bool


def read_run(run: str | Path) -> RunRecord:
    """The training record of a run folder, read forgivingly (a page about a run shows what is there)."""
    run = Path(run)
    rows = []
    if (run / "metrics.jsonl").exists():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return RunRecord(run, _json_object(run / "recipe.json"), _json_object(run / "config.json") or {}, rows,
                     (run / BACKBONE_FILE).is_file())


def evaluation_files(run: str | Path) -> list[Path]:
    """The JSON files kept in a run folder and its eval/ folder (evaluation reports live there)."""
    run = Path(run)
    return [*sorted(run.glob("*.json")), *sorted((run / "eval").glob("*.json"))]
