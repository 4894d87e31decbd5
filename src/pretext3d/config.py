"""Pretraining recipes: a YAML file, ``key=value`` overrides, and what they build.

A recipe names a method and its settings, the data and the trainer's settings::

    method: crosspoint            # a registered method: crosspoint | parae | picpoint | cmcv | mims | compose | ...
    model: {backbone: dgcnn, backbone_config: {k: 15}, image_encoder: resnet50}
    data: /path/to/store          # absent or null: the built-in shapes
    data_options: {points: 2048, image_size: 224, ...}
    epochs: 100                   # or steps: N (steps wins when both are set)
    batch_size: 20
    seed: 0
    optimizer: {name: adam, lr: 0.001, weight_decay: 1.0e-6}
    schedule: {name: cosine}

Overrides use dotted keys and YAML values: ``steps=200 optimizer.lr=3e-4 model.backbone_config.k=20``.
In a recipe file a mapping completes the defaults (``data_options: {points: 2048}`` keeps the
other data options); an override's mapping replaces the mapping (``model.backbone=pointnet
model.backbone_config={emb_dims: 512}``). A key the recipe format does not know is an error that
names it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Sequence

import yaml
from torch import nn
from torch.utils.data import Dataset

from pretext3d.engine.trainer import OptimConfig, ScheduleConfig, TrainConfig
from pretext3d.pretext import METHODS, MethodSettingsError, method_class
from pretext3d.pretext import build_method as build_registered_method
from pretext3d.shipped import RECIPES_DIR, shipped_recipes
from pretext3d.utils.names import closest_hint

__all__ = ["RecipeError", "load_recipe", "shipped_recipes", "RECIPES_DIR", "apply_overrides", "build_method", "build_dataset",
           "train_config", "DEFAULT_DATA_OPTIONS", "data_needs", "BUILTIN_STORE", "check_paper_setting"]

def data_needs(method: str, model: dict[str, Any]) -> dict[str, Any]:
    """What the training data must hold for ``method`` built with ``model`` settings (the
    method declares it: ``PretextMethod.data_needs``)."""
    try:
        return method_class(method).data_needs(model).as_dict()
    except MethodSettingsError as err:
        raise RecipeError(str(err)) from None


# how pretraining data are read and augmented (MultimodalDataset / AugmentedClouds)
DEFAULT_DATA_OPTIONS: dict[str, Any] = {
    "points": 1024,          # points per cloud (the first N of a store, as read otherwise)
    # "first": the first N held (FPS order in stores and mesh readers; fixed per object);
    # "random": N uniform random samples of the held points, new each epoch (meshes read
    # directly hold 4N uniform random surface samples; stores and point files, what they store)
    "point_sampling": "first",
    "image_size": None,      # images are resized to this (default: as stored)
    # "uint8": images leave the loader as pixels and are normalised on the training device (a
    # quarter of the bytes through the workers' queues and to the GPU); "float32": normalised
    # in the loader. Equal up to float rounding, except that colour-jittered pixels are rounded to uint8
    "image_dtype": "uint8",
    "augment": {},           # PointAugment fields, e.g. {rotate: false, scale: [0.8, 1.25]}
    "image_augment": {},     # ImageAugment fields
    "builtin": {"train": 40, "test": 10, "seed": 0},  # the built-in shapes when data is absent
    # store made from the built-in shapes for image methods (pretext3d prepare settings)
    "builtin_store": {"views": 8, "image_size": 96, "faces": 512},
}

BUILTIN_STORE = "builtin-store"  # the run-folder subfolder the built-in shapes are prepared into for image methods

TOP_LEVEL: dict[str, Any] = {
    "method": None, "model": {}, "data": None, "data_options": DEFAULT_DATA_OPTIONS,
    "steps": None, "epochs": None, "batch_size": 16, "seed": 0,
    "optimizer": dataclasses.asdict(OptimConfig()), "schedule": dataclasses.asdict(ScheduleConfig()),
    "grad_clip": None, "amp": True, "num_workers": 0, "log_every": 10, "checkpoint_every": 500,
    "keep_checkpoints": 2, "device": "auto", "tensorboard": False,
    "keep_freed_memory": True,  # malloc keeps freed host memory for reuse: faster CPU steps, higher peak RSS
    "paper_setting": False,  # the recipe claims its paper's setting: the method's conditions are checked
}
# sections whose inner keys are checked against these defaults (model's keys are the method's)
CHECKED_SECTIONS = ("data_options", "optimizer", "schedule")


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``3e-4`` as a string (its floats need a dot); recipes take it as a float."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
               r"|^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*$|^[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def _refuse_aliases(self: yaml.SafeLoader, parent: Any, index: Any) -> Any:
    # an alias repeats a node by reference: a few lines of them expand to gigabytes ("billion
    # laughs") when the recipe is copied or written out; recipes have no use for them
    if self.check_event(yaml.AliasEvent):
        raise yaml.composer.ComposerError(None, None, "recipes may not use YAML aliases (*name)",
                                          self.peek_event().start_mark)
    return yaml.SafeLoader.compose_node(self, parent, index)


_RecipeLoader.compose_node = _refuse_aliases  # type: ignore[method-assign]


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader: builds plain data only


class RecipeError(ValueError):
    """A recipe or an override is not valid; the message names the file or the key."""




def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe file (or a shipped recipe by name, e.g. ``parae_cpu``) and complete it
    with the defaults (not the method's: those stay in the method's signature)."""
    path = Path(path)
    if not path.is_file() and (RECIPES_DIR / f"{path}.yaml").is_file():
        path = RECIPES_DIR / f"{path}.yaml"
    if not path.is_file():
        raise RecipeError(f"{path}: recipe not found (shipped recipes: {', '.join(shipped_recipes())})")
    try:
        raw = _parse_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({err})") from None
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise RecipeError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys to values, got {type(raw).__name__}")
    try:
        return complete(raw)
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from None


def complete(raw: dict[str, Any]) -> dict[str, Any]:
    """The recipe with every default filled in; unknown keys are errors."""
    recipe = copy.deepcopy(TOP_LEVEL)
    for key, value in raw.items():
        _set(recipe, key.split("."), value, key, merge=True)
    _validate(recipe)
    return recipe


def apply_overrides(recipe: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings (dotted keys, YAML values) applied to a copy of ``recipe``."""
    recipe = copy.deepcopy(recipe)
    for text in overrides:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {text!r} is not key=value")
        try:
            parsed = _parse_yaml(value) if value else None
        except yaml.YAMLError as err:
            raise RecipeError(f"override {text!r}: the value is not valid YAML ({err})") from None
        _set(recipe, key.strip().split("."), parsed, key, merge=False)
    _validate(recipe)
    return recipe


def _set(recipe: dict[str, Any], parts: list[str], value: Any, key: str, merge: bool) -> None:
    if parts[0] not in TOP_LEVEL:
        raise _unknown_key(repr(key), parts[0], TOP_LEVEL, "")
    if len(parts) == 1:
        if isinstance(TOP_LEVEL[parts[0]], dict) and isinstance(value, dict):
            if not merge:
                recipe[parts[0]] = copy.deepcopy(TOP_LEVEL[parts[0]])  # the section's defaults, then the value
            for inner, v in value.items():
                _set(recipe, [parts[0], *str(inner).split(".")], v, f"{key}.{inner}", merge=True)
        else:
            recipe[parts[0]] = value
        return
    node = recipe[parts[0]]
    if not isinstance(node, dict):
        raise RecipeError(f"recipe key {parts[0]!r} is not a section, so {key!r} means nothing")
    defaults = TOP_LEVEL[parts[0]]
    for depth, part in enumerate(parts[1:-1], start=1):
        if parts[0] in CHECKED_SECTIONS and depth == 1 and part not in defaults:
            raise _unknown_key(repr(key), part, defaults, f" in {parts[0]}")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"{'.'.join(parts[:depth + 1])} is not a section, so {key!r} means nothing")
    last = parts[-1]
    if parts[0] in CHECKED_SECTIONS and len(parts) == 2 and last not in defaults:
        raise _unknown_key(repr(key), last, defaults, f" in {parts[0]}")
    # in a recipe file a mapping completes the mapping (data_options.builtin_store: {views: 4} keeps
    # the rest); an override replaces it
    node[last] = {**node[last], **value} if merge and isinstance(node.get(last), dict) and isinstance(value, dict) else value


def _unknown_key(key: str, name: str, known: Any, where: str) -> RecipeError:
    """The error for an unknown recipe key, with the closest known name and the known ones."""
    return RecipeError(f"unknown recipe key {key}{closest_hint(name, known)}; known{where}: {', '.join(known)}")


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _at_least(low: int) -> tuple[Any, str]:
    meaning = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
    return (lambda v: _integer(v) and v >= low), meaning


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_OPTIONAL_POSITIVE = (lambda v: v is None or (_number(v) and v > 0)), "a positive number or null"
_SECTION = (lambda v: isinstance(v, dict)), "a mapping"
# every recipe value with what it must be: checked before any work (a value is wrong at once,
# not after minutes of setup)
VALUE_RULES: dict[str, tuple[Any, str]] = {
    "model": _SECTION,
    "data": ((lambda v: v is None or (isinstance(v, str) and v.strip() != "")), "a path, a 'builtin:...' spec or null"),
    "steps": ((lambda v: v is None or (_integer(v) and v >= 0)), "a non-negative integer or null"),
    "epochs": _OPTIONAL_POSITIVE,
    "batch_size": _at_least(1),
    "seed": (_integer, "an integer"),
    "grad_clip": _OPTIONAL_POSITIVE,
    "amp": ((lambda v: isinstance(v, bool)), "true or false"),
    "num_workers": _at_least(0),
    "log_every": _at_least(1),
    "checkpoint_every": _at_least(1),
    "keep_checkpoints": _at_least(1),
    "device": ((lambda v: isinstance(v, str) and bool(_DEVICE.match(v))), "auto, cpu, cuda, cuda:N or mps"),
    "tensorboard": ((lambda v: isinstance(v, bool)), "true or false"),
    "keep_freed_memory": ((lambda v: isinstance(v, bool)), "true or false"),
    "paper_setting": ((lambda v: isinstance(v, bool)), "true or false"),
    "optimizer.name": ((lambda v: v in ("adam", "adamw", "sgd")), "one of adam, adamw, sgd"),
    "optimizer.lr": ((lambda v: _number(v) and v > 0), "a positive number"),
    "optimizer.weight_decay": ((lambda v: _number(v) and v >= 0), "a number >= 0"),
    "optimizer.momentum": ((lambda v: _number(v) and 0 <= v < 1), "a number in [0, 1)"),
    "optimizer.betas": ((lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v)),
                        "two numbers in [0, 1)"),
    "schedule.name": ((lambda v: v in ("cosine", "step", "constant")), "one of cosine, step, constant"),
    "schedule.warmup_steps": _at_least(0),
    "schedule.min_lr_ratio": ((lambda v: _number(v) and 0 <= v <= 1), "a number in [0, 1]"),
    "schedule.step_size": _at_least(1),
    "schedule.gamma": ((lambda v: _number(v) and v > 0), "a positive number"),
    "data_options.points": _at_least(1),
    "data_options.point_sampling": ((lambda v: v in ("first", "random")), "one of first, random"),
    "data_options.image_dtype": ((lambda v: v in ("uint8", "float32")), "one of uint8, float32"),
    "data_options.image_size": ((lambda v: v is None or (_integer(v) and v >= 8)), "an integer >= 8 or null"),
    "data_options.augment": _SECTION,
    "data_options.image_augment": _SECTION,
    "data_options.builtin": _SECTION,
    "data_options.builtin_store": _SECTION,
}


def _value(recipe: dict[str, Any], key: str) -> Any:
    node: Any = recipe
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _validate(recipe: dict[str, Any]) -> None:
    """Every value of ``VALUE_RULES`` and the method's name, before any work."""
    if recipe["method"] not in METHODS:  # the registry of pretext3d.pretext (methods register themselves)
        raise RecipeError(f"method must be one of {', '.join(METHODS)}, got {recipe['method']!r}")
    for key, (check, meaning) in VALUE_RULES.items():
        value = _value(recipe, key)
        if not check(value):
            raise RecipeError(f"{key} must be {meaning}, got {value!r}")
    if recipe["steps"] is None and recipe["epochs"] is None:
        raise RecipeError("give steps or epochs")
    _check_augmentations(recipe["data_options"])


def check_paper_setting(recipe: dict[str, Any]) -> None:
    """A recipe that claims its paper's setting (``paper_setting: true``) meets the method's
    conditions for it (e.g. Pic@Point's pretrained image weights); run before any work, after
    the overrides (which may supply what is needed, or set paper_setting=false)."""
    if recipe["paper_setting"]:
        problems = method_class(recipe["method"]).paper_setting_problems(recipe["model"])
        if problems:
            raise RecipeError(problems[0])


def _check_augmentations(options: dict[str, Any]) -> None:
    """The augmentation sections name fields of PointAugment / ImageAugment."""
    from pretext3d.data.multimodal import ImageAugment, PointAugment

    for section, cls in (("augment", PointAugment), ("image_augment", ImageAugment)):
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in options[section] if k not in known]
        if unknown:
            raise _unknown_key(f"data_options.{section}.{unknown[0]}", unknown[0], known, "")


def train_config(recipe: dict[str, Any], dataset_size: int) -> TrainConfig:
    """The trainer's settings; ``epochs`` become steps of full global batches."""
    steps = recipe["steps"]
    if steps is None:
        per_epoch = dataset_size // recipe["batch_size"]
        if per_epoch == 0:
            raise RecipeError(f"the dataset has {dataset_size} samples, fewer than one batch of {recipe['batch_size']}")
        steps = max(1, round(recipe["epochs"] * per_epoch))
    try:
        optimizer = OptimConfig(**{**recipe["optimizer"], "betas": tuple(recipe["optimizer"]["betas"])})
        schedule = ScheduleConfig(**recipe["schedule"])
    except TypeError as err:
        raise RecipeError(f"optimizer/schedule: {err}") from None
    return TrainConfig(
        steps=steps, batch_size=recipe["batch_size"], seed=recipe["seed"], optimizer=optimizer, schedule=schedule,
        grad_clip=recipe["grad_clip"], amp=bool(recipe["amp"]), num_workers=recipe["num_workers"],
        log_every=recipe["log_every"], checkpoint_every=recipe["checkpoint_every"],
        keep_checkpoints=recipe["keep_checkpoints"], device=recipe["device"], tensorboard=bool(recipe["tensorboard"]),
        keep_freed_memory=bool(recipe["keep_freed_memory"]),
    )


def build_method(recipe: dict[str, Any]) -> nn.Module:
    """The recipe's method (the registry's ``build_method``) with ``recipe["model"]`` as keyword
    arguments."""
    try:
        return build_registered_method(recipe["method"], recipe["model"])
    except MethodSettingsError as err:  # an unknown or missing keyword
        raise RecipeError(f"model: {err}") from None


def build_dataset(recipe: dict[str, Any], work_dir: Path, log=print, prepare_store: bool = True) -> Dataset:
    """The training split as the method needs it.

    A prepared store (a folder with store.json) gives points, images and meshes as the method
    needs them (MultimodalDataset);
    any other dataset ``open_splits`` reads gives points only (AugmentedClouds). Without
    ``data``, the built-in shapes: read directly, or, for methods with images, prepared once
    into ``work_dir/builtin-store`` with ``data_options.builtin_store`` settings
    (``prepare_store=False``: another process has prepared it).
    """
    from pretext3d.data.multimodal import AugmentedClouds, ImageAugment, MultimodalDataset, PointAugment

    from pretext3d.data.builtin import builtin_spec

    options = recipe["data_options"]
    augment = _options_as(PointAugment, options["augment"])
    image_augment = _options_as(ImageAugment, options["image_augment"])
    needs = data_needs(recipe["method"], recipe["model"])
    store_needed = needs["images"] or needs["mesh"]
    data = recipe["data"]
    builtin = builtin_spec(**options["builtin"])
    if data is None and store_needed:
        store = work_dir / BUILTIN_STORE
        data = str(_builtin_store(builtin, options, store, log) if prepare_store else store)
    if data is not None and (Path(data) / "store.json").is_file():
        if needs["mesh"] and _store_kind(Path(data)) != "mesh":
            raise RecipeError(f"{data}: {recipe['method']} needs meshes, but this store was prepared from point clouds")
        _warn_if_incomplete(Path(data), log)
        return MultimodalDataset(
            data, split="train", num_points=options["points"], image_size=options["image_size"],
            point_augment=augment, image_augment=image_augment, views_per_sample=needs["views"],
            modalities=("points", *(("images",) if needs["images"] else ()), *(("mesh",) if needs["mesh"] else ())),
            seed=recipe["seed"], point_views=needs["point_views"], point_sampling=options["point_sampling"],
            image_dtype=options["image_dtype"])
    if store_needed:
        raise RecipeError(f"{data}: {recipe['method']} needs {'images' if needs['images'] else 'meshes'}: "
                          f"give a store made by `pretext3d prepare`")
    if options["point_sampling"] == "random":
        clouds = _point_pool(data or builtin, options["points"], recipe["seed"])
        return AugmentedClouds(clouds, augment, needs["point_views"], recipe["seed"], num_points=options["points"])
    from pretext3d.data import open_splits

    clouds = open_splits(data or builtin, options["points"], seed=recipe["seed"])["train"]
    return AugmentedClouds(clouds, augment, needs["point_views"], recipe["seed"])


def _point_pool(data: str, points: int, seed: int):
    """The train split as a pool that random point samples are drawn from each epoch: every
    stored point of pre-sampled files, 4 x ``points`` uniform random surface samples of meshes."""
    from pretext3d.data.readers import MESH_FORMATS, detect_format, open_splits

    fmt = detect_format(data)
    pool = 4 * points if fmt in MESH_FORMATS else None
    return open_splits(data, pool, subsample="random", seed=seed, fmt=fmt)["train"]


def _warn_if_incomplete(root: Path, log) -> None:
    """Say so when a store is not finished: training would use only the objects present."""
    from pretext3d.data.store import read_index

    counts = read_index(root)["counts"]
    if counts.get("missing") or counts.get("damaged"):
        log(f"warning: {root}: only {counts['present']} of {counts['total']} objects are prepared "
            f"({counts.get('missing', 0)} not yet, {counts.get('damaged', 0)} damaged); training uses those present. "
            "Run `pretext3d prepare` again to finish the store, `pretext3d verify` to check it")


def _store_kind(root: Path) -> str | None:
    """"mesh" or "points": what the store was prepared from (store.json's "kind")."""
    import json

    try:
        return json.loads((root / "store.json").read_text()).get("kind")
    except (OSError, ValueError) as err:
        raise RecipeError(f"{root / 'store.json'}: cannot be read ({err})") from None


def _options_as(cls: type, options: dict[str, Any]) -> Any:
    """An augmentation dataclass from recipe options (YAML lists become the tuples it holds)."""
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    except TypeError as err:
        raise RecipeError(f"data_options: {err}") from None


def _builtin_store(spec: str, options: dict[str, Any], root: Path, log, progress: bool = True) -> Path:
    from pretext3d.data.prepare import prepare
    from pretext3d.data.store import StoreSettings

    settings = StoreSettings(points=options["points"], **options["builtin_store"])
    log(f"preparing the built-in shapes ({spec}) with images into {root}")
    summary = prepare(spec, root, settings, workers=1, progress=progress)
    if summary.failed:
        raise RecipeError(f"{root}: {len(summary.failed)} built-in objects failed to prepare")
    return root
