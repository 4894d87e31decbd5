"""Every group of command-line options, defined once, and the one place that turns each group
into the fields of the library's option groups (``pretext3d.eval.options``):

* weights: ``--checkpoint | --random-init [--like RUN] [| --image-weights]``, ``--backbone``,
  and the random architecture (``--k``, ``--emb-dims``);
* features on a point dataset: data, points, subsampling, seeds, batch, BatchNorm calibration;
* a prepared store's objects: data, points, seed, batch, calibration;
* runtime: device, workers, cache, ``--json``, ``--quiet``;
* fine-tuning runs: label fractions, modes, optimisation, validation passes, run folders.

Nothing here imports torch: ``pretext3d --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

__all__ = ["at_least", "fraction", "add_weights_arguments", "weights_options", "add_architecture_arguments",
           "add_feature_arguments", "feature_options",
           "add_selection_arguments", "selection_options", "add_store_arguments", "store_options", "add_runtime_arguments",
           "runtime_options", "add_training_arguments", "training_options", "add_view_arguments", "log_for"]


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def fraction(text: str) -> float:
    """An argparse type: a label fraction in (0, 1], or 0-100%."""
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a label fraction lies in (0, 1] (or 0-100%), got {text!r}")
    return value


# --- weights ------------------------------------------------------------------------------------

# what the weight options mean for each kind of protocol
_WEIGHTS: dict[str, dict[str, Any]] = {
    "backbone": {  # protocols on a backbone's frozen features
        "checkpoint": ("CHECKPOINT", "a `pretext3d pretrain` run folder, a pretext3d .safetensors checkpoint, or reference "
                       "weights (.pth/.pt/.npz)"),
        "random": "untrained backbone; BatchNorm statistics calibrated on training clouds",
        "like": ("CHECKPOINT", "with --random-init: the architecture (backbone and config) of this pretext3d checkpoint "
                 "or run folder, with random weights: the floor of a pretrained backbone"),
        "backbone": "required with --random-init (pointnet or dgcnn); with --checkpoint, checks what it holds",
        "choices": ["pointnet", "dgcnn", "pointnet-pointwise", "dgcnn-seg"],
    },
    "finetune": {  # protocols that train from a backbone
        "checkpoint": ("CHECKPOINT", "a `pretext3d pretrain` run folder or backbone checkpoint"),
        "random": "start from random weights (BatchNorm statistics calibrated)",
        "like": ("CHECKPOINT", "with --random-init: the architecture of this checkpoint"),
        "backbone": "with --random-init: the backbone to build (pointnet, dgcnn, pointnet-pointwise, dgcnn-seg, ...); "
                    "with --checkpoint: checks what it holds",
        "choices": None,
    },
    "run": {  # protocols on a run's whole method
        "checkpoint": ("RUN", "a `pretext3d pretrain` run folder"),
        "random": "random weights; BatchNorm statistics calibrated on training objects (needs --like RUN: the architecture)",
        "like": ("RUN", "with --random-init: the method of this run folder with random weights"),
        "backbone": "checks the run's point backbone",
        "choices": None,
    },
    "image": {  # a run's image encoder, torchvision weights or a random ResNet
        "checkpoint": ("RUN", "a `pretext3d pretrain` run folder"),
        "random": "random weights; BatchNorm statistics calibrated on training objects",
        "like": ("RUN", "refused: multiview builds a bare ResNet for --random-init (name it with --backbone)"),
        "backbone": "the image encoder for --random-init / --image-weights (default resnet18); with --checkpoint, "
                    "checks the run's",
        "choices": ["resnet18", "resnet50"],
    },
}


def add_weights_arguments(p: argparse.ArgumentParser, kind: str) -> None:
    """--checkpoint | --random-init (| --image-weights for kind "image"), --like, --backbone."""
    help_of = _WEIGHTS[kind]
    init = p.add_mutually_exclusive_group(required=True)
    init.add_argument("--random-init", action="store_true", help=help_of["random"])
    metavar, text = help_of["checkpoint"]
    init.add_argument("--checkpoint", metavar=metavar, help=text)
    if kind == "image":
        init.add_argument("--image-weights", metavar="FILE", help="torchvision ResNet weights on disk (.pth/.safetensors)")
    metavar, text = help_of["like"]
    p.add_argument("--like", metavar=metavar, help=text)
    p.add_argument("--backbone", choices=help_of["choices"], help=help_of["backbone"])


def add_architecture_arguments(p: argparse.ArgumentParser, k: bool, defaults: bool) -> None:
    """--emb-dims (and --k): the random init's architecture. defaults: the frozen-feature
    protocols' own (k 20, 1024-d); otherwise they override a named backbone's or --like's config."""
    if defaults:
        p.add_argument("--k", type=at_least(1), default=20, help="DGCNN neighbours (default 20)")
        p.add_argument("--emb-dims", type=at_least(1), default=1024,
                       help="backbone embedding width for --random-init (default 1024)")
        return
    p.add_argument("--emb-dims", type=at_least(1), help="with --random-init: the backbone's embedding width")
    if k:
        p.add_argument("--k", type=at_least(1), help="with --random-init: DGCNN neighbours")


def weights_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``WeightsOptions`` fields of the weight options (checked when the config is made).
    Architecture options without defaults become the random init's config overrides."""
    options = dict(checkpoint=args.checkpoint, random_init=args.random_init, like=args.like, backbone=args.backbone)
    if getattr(args, "image_weights", None) is not None:
        options["image_weights"] = args.image_weights
    overrides = {name: getattr(args, name, None) for name in ("emb_dims", "k")}
    if not getattr(args, "architecture_defaults", False):  # finetune/semseg: --emb-dims/--k override the config
        options["random_config"] = {name: value for name, value in overrides.items() if value} or None
    return options


def _bn_calibration(args: argparse.Namespace, default: int) -> int:
    if args.bn_calibration and not args.random_init:
        raise ValueError("--bn-calibration goes with --random-init (trained weights keep their statistics)")
    return args.bn_calibration or default


# --- what is embedded -----------------------------------------------------------------------------


def add_feature_arguments(p: argparse.ArgumentParser) -> None:
    """The data and how its clouds become frozen features (linear SVM, few-shot, retrieval)."""
    p.add_argument("--data", required=True, help="dataset file/folder in any supported format, or 'builtin[:seed=,train=,test=]'")
    add_weights_arguments(p, "backbone")
    p.add_argument("--points", type=at_least(1), default=1024, help="points per cloud (default 1024)")
    p.add_argument("--subsample", choices=["first", "random", "fps"], default="first",
                   help="how clouds with more points are cut to --points (default: the first N, as published)")
    p.add_argument("--subset", choices=["modelnet10"], help="evaluate on the ModelNet10 classes of a ModelNet40 source")
    add_selection_arguments(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (init, BN calibration, sampling); mean +- std is reported")
    p.add_argument("--batch-size", type=at_least(2), default=32)
    p.add_argument("--bn-calibration", type=at_least(2), metavar="N", help="with --random-init: training clouds for BN "
                   "calibration (default 2048; with --modalities: training objects, default 256)")
    add_architecture_arguments(p, k=True, defaults=True)
    p.set_defaults(architecture_defaults=True)
    add_runtime_arguments(p, cache=True)


def add_selection_arguments(p: argparse.ArgumentParser) -> None:
    """A trial subset of the data: --classes, --per-class N, --select-seed."""
    p.add_argument("--classes", nargs="+", metavar="NAME", help="keep only these classes (renumbered in this order)")
    p.add_argument("--per-class", type=at_least(1), metavar="N",
                   help="keep at most N objects of each class in each split (a seeded draw; a smaller N keeps a subset)")
    p.add_argument("--select-seed", type=int, default=0, help="seed of the --per-class draw (default 0)")


def selection_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``SelectionOptions`` fields of ``add_selection_arguments``."""
    return dict(classes=args.classes, per_class=args.per_class, select_seed=args.select_seed)


def feature_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``FeatureConfig`` fields of ``add_feature_arguments`` (weights and runtime included)."""
    return dict(**weights_options(args), **runtime_options(args), **selection_options(args), data=args.data,
                num_points=args.points,
                subsample=args.subsample, subset=args.subset, seeds=args.seeds, batch_size=args.batch_size,
                bn_calibration_clouds=_bn_calibration(args, 2048), k=args.k, emb_dims=args.emb_dims)


def add_store_arguments(p: argparse.ArgumentParser, kind: str, points: bool, selection: bool = True) -> None:
    """A prepared store's objects embedded by a run's method (``kind`` "run") or an image
    encoder (``kind`` "image"); ``selection``: also --classes / --per-class."""
    p.add_argument("--data", required=True, help="a prepared store (`pretext3d prepare`)")
    add_weights_arguments(p, kind)
    if selection:
        add_selection_arguments(p)
    if points:
        p.add_argument("--points", type=at_least(1), default=1024, help="points per cloud (the first N stored; default 1024)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init, calibration and draws")
    p.add_argument("--batch-size", type=at_least(2), default=16, help="objects per batch (all their views at once)")
    p.add_argument("--bn-calibration", type=at_least(2), metavar="N", help="with --random-init: training objects for BN "
                   "calibration (default 256)")
    add_runtime_arguments(p, cache=True)


def store_options(args: argparse.Namespace, seed: int | None = None) -> dict[str, Any]:
    """The ``StoreProtocolConfig`` fields (weights and runtime included) of the store options,
    or of the feature options of a command that also reads stores (``seed``: its one seed)."""
    selection = selection_options(args) if hasattr(args, "classes") else {}
    return dict(**weights_options(args), **runtime_options(args), **selection, data=args.data,
                num_points=getattr(args, "points", None), seed=args.seed if seed is None else seed,
                batch_size=args.batch_size, bn_calibration_objects=_bn_calibration(args, 256),
                image_size=getattr(args, "image_size", None))


def add_view_arguments(p: argparse._ActionsContainer, multiple: bool) -> None:
    """How a store's rendered views are pooled per object and the size they are fed at."""
    if multiple:
        p.add_argument("--views", type=at_least(1), nargs="+", default=[1, 12, 36, 80],
                       help="view counts v to pool (default 1 12 36 80; counts above the store's are skipped, its own is added)")
    else:
        p.add_argument("--views", type=at_least(1), help="image views pooled per object (default all the store has)")
    p.add_argument("--pool", choices=["max", "mean"], default=None if not multiple else "max",
                   help="pooling of per-view features (default max, as MVCNN; linear-svm: mean, as MIMS)")
    p.add_argument("--image-size", type=at_least(8), help="side the views are fed at (default: the run's training size, "
                   "else the store's)")


# --- runtime ------------------------------------------------------------------------------------


def add_runtime_arguments(p: argparse.ArgumentParser, cache: bool) -> None:
    """--device, (--workers, --cache-dir, --no-cache,) --json, --quiet."""
    p.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ...")
    if cache:
        p.add_argument("--workers", type=at_least(0), default=0,
                       help="data-loading processes (mesh folders and rendered views decode in parallel)")
        p.add_argument("--cache-dir", help="feature cache (default ~/.cache/pretext3d/features or $PRETEXT3D_CACHE)")
        p.add_argument("--no-cache", action="store_true", help="always recompute features")
    p.add_argument("--json", metavar="OUT", help="also write the report (every protocol setting and the numbers) as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def runtime_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``RuntimeOptions`` (and, where defined, ``CacheOptions``) fields of the runtime options."""
    options: dict[str, Any] = dict(device=args.device, progress=not args.quiet)
    if hasattr(args, "workers"):
        options.update(num_workers=args.workers, cache_dir=args.cache_dir, use_cache=not args.no_cache)
    return options


def log_for(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress lines on stderr, or nothing with --quiet."""
    import sys

    return (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))


# --- fine-tuning runs ---------------------------------------------------------------------------


def add_training_arguments(p: argparse.ArgumentParser, items: str, fractions_help: str) -> None:
    """The fine-tuning runs: label fractions, frozen / unfrozen, optimisation, selection, output."""
    p.add_argument("--fractions", type=fraction, nargs="+", default=[1.0], help=fractions_help)
    p.add_argument("--modes", nargs="+", choices=["frozen", "unfrozen"], default=["unfrozen"],
                   help="frozen: only the new head trains; unfrozen: everything trains")
    p.add_argument("--epochs", type=float, default=50.0, help=f"passes over the labelled {items} (default 50)")
    p.add_argument("--min-steps", type=at_least(0), default=0, help="at least this many steps per run (small fractions)")
    p.add_argument("--batch-size", type=at_least(2), default=32, help=f"{items} per batch (default 32)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--schedule", choices=["cosine", "step"], default="cosine",
                   help="cosine: to --min-lr at the last step (default); step: x --gamma every --step-epochs epochs")
    p.add_argument("--min-lr", type=float, default=0.0, help="the cosine schedule's final rate (default 0)")
    p.add_argument("--step-epochs", type=float, default=20.0, help="epochs between decays of the step schedule (default 20)")
    p.add_argument("--gamma", type=float, default=0.1, help="the step schedule's decay factor (default 0.1)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train on the points as read (default: the protocol's augmentation)")
    p.add_argument("--validations", type=at_least(1), default=10, help="validation passes per run (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="keep the run folders here (default: a temporary folder)")
    p.add_argument("--force", action="store_true",
                   help="run even when a run would get fewer than 100 steps (refused by default: its score means little)")
    add_runtime_arguments(p, cache=False)


def training_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``TrainingOptions`` and ``RuntimeOptions`` fields of the training options."""
    return dict(**runtime_options(args), fractions=args.fractions, modes=args.modes, epochs=args.epochs,
                min_steps=args.min_steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                optimizer=args.optimizer, momentum=args.momentum, schedule=args.schedule, min_lr=args.min_lr,
                step_epochs=args.step_epochs, gamma=args.gamma, augment=args.augment, validations=args.validations,
                seed=args.seed, out=args.out, force=args.force)
