"""The ``pretext3d`` command line: one entry point for data, evaluation and the demo."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from pretext3d.cli_prepare import add_prepare, add_render, add_verify
from pretext3d.cli_pretrain import add_pretrain

__all__ = ["main", "build_parser"]


def _at_least(minimum: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _add_linear_svm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "linear-svm",
        help="linear SVM on frozen global features (ModelNet40/10 protocol)",
        description="Extract frozen global features of the train and test splits and fit a linear SVM. "
        "C is given (--C) or chosen by cross-validation on the train split only; the test split is scored once.",
    )
    p.add_argument("--data", required=True, help="dataset file/folder in any supported format, or 'builtin[:seed=,train=,test=]'")
    p.add_argument("--backbone", choices=["pointnet", "dgcnn", "pointnet-pointwise", "dgcnn-seg"],
                   help="required with --random-init (pointnet or dgcnn); with --checkpoint, checks what it holds")
    init = p.add_mutually_exclusive_group(required=True)
    init.add_argument("--random-init", action="store_true", help="untrained backbone; BatchNorm statistics calibrated on training clouds")
    init.add_argument("--checkpoint", help="a `pretext3d pretrain` run folder, a pretext3d .safetensors checkpoint, "
                      "or reference weights (.pth/.pt/.npz)")
    p.add_argument("--points", type=_at_least(1), default=1024, help="points per cloud (default 1024)")
    p.add_argument("--subsample", choices=["first", "random", "fps"], default="first",
                   help="how clouds with more points are cut to --points (default: the first N, as published)")
    p.add_argument("--subset", choices=["modelnet10"], help="evaluate on the ModelNet10 classes of a ModelNet40 source")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (init, BN calibration, sampling); mean +- std is reported")
    p.add_argument("--C", type=float, help="SVM C; default: chosen by CV on train")
    p.add_argument("--C-grid", type=float, nargs="+", help="candidate Cs for the CV (default 0.001 0.01 0.1 1 10)")
    p.add_argument("--folds", type=_at_least(2), default=3, help="CV folds for choosing C (default 3)")
    p.add_argument("--svm", choices=["svc", "linearsvc"], default="svc", help="sklearn SVC(kernel='linear') (published) or LinearSVC")
    p.add_argument("--standardize", action="store_true", help="standardise features before the SVM (not the published protocol)")
    p.add_argument("--batch-size", type=_at_least(2), default=32)
    p.add_argument("--bn-calibration", type=_at_least(2), default=2048, metavar="N", help="training clouds for BN calibration with --random-init")
    p.add_argument("--k", type=_at_least(1), default=20, help="DGCNN neighbours (default 20)")
    p.add_argument("--emb-dims", type=_at_least(1), default=1024, help="backbone embedding width for --random-init (default 1024)")
    p.add_argument("--like", metavar="CHECKPOINT", help="with --random-init: the architecture (backbone and config) of this "
                   "pretext3d checkpoint or run folder, with random weights: the floor of a pretrained backbone")
    p.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=_at_least(0), default=0, help="data-loading processes (useful for mesh folders)")
    p.add_argument("--cache-dir", help="feature cache (default ~/.cache/pretext3d/features or $PRETEXT3D_CACHE)")
    p.add_argument("--no-cache", action="store_true", help="always recompute features")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_linear_svm)


def _cmd_linear_svm(args: argparse.Namespace) -> int:
    from pretext3d.engine.checkpoint import checkpoint_architecture
    from pretext3d.eval.linear_svm import DEFAULT_C_GRID
    from pretext3d.eval.protocols import LinearSVMConfig, run_linear_svm
    from pretext3d.utils.io import atomic_write_json

    if args.like and not args.random_init:
        raise ValueError("--like goes with --random-init (a checkpoint's architecture, random weights)")
    backbone, random_config = args.backbone, None
    if args.like:
        backbone, random_config = checkpoint_architecture(args.like)
        if args.backbone and args.backbone != backbone:
            raise ValueError(f"{args.like}: holds a {backbone} backbone, not a {args.backbone}")
    elif args.random_init and args.backbone not in ("pointnet", "dgcnn"):
        raise ValueError("--random-init needs --backbone pointnet or dgcnn (or --like CHECKPOINT)")
    cfg = LinearSVMConfig(
        data=args.data, backbone=backbone, checkpoint=args.checkpoint, random_init=args.random_init,
        num_points=args.points, subsample=args.subsample, subset=args.subset, seeds=args.seeds, C=args.C,
        C_grid=tuple(args.C_grid or DEFAULT_C_GRID), folds=args.folds, svm=args.svm, standardize=args.standardize,
        batch_size=args.batch_size, bn_calibration_clouds=args.bn_calibration, k=args.k, emb_dims=args.emb_dims,
        random_config=random_config, device=args.device, num_workers=args.workers, cache_dir=args.cache_dir,
        use_cache=not args.no_cache, progress=not args.quiet,
    )
    log = (lambda *a, **k: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    report = run_linear_svm(cfg, log=log)
    print(format_linear_svm(report))
    if args.json:
        atomic_write_json(args.json, report)
    return 0


def format_linear_svm(report: dict) -> str:
    seeds = report["seeds"]
    acc = f"{100 * report['accuracy']:.2f}%"
    cls = f"{100 * report['class_mean_accuracy']:.2f}%"
    if len(seeds) > 1:
        acc += f" +- {100 * report['accuracy_std']:.2f}"
        cls += f" +- {100 * report['class_mean_accuracy_std']:.2f}"
    lines = [
        f"linear SVM  {report['dataset']} ({report['dataset_format']}{', ' + report['subset'] if report['subset'] else ''}, "
        f"{report['num_classes']} classes, {report['train_size']} train / {report['test_size']} test)",
        f"  backbone        {report['backbone']} ({report['weights']})",
        f"  accuracy        {acc}   (class mean {cls}, seeds {' '.join(map(str, seeds))})",
        f"  C               {report['C']:g}   ({report['C_selection']})",
        f"  feature dim     {report['feature_dim']}",
        f"  points / cloud  {report['num_points']} ({report['sampling']})",
    ]
    if report["bn_calibration"]:
        lines.append(f"  BN statistics   {report['bn_calibration']}")
    if report["skipped"]:
        lines.append(f"  skipped         {len(report['skipped'])} unreadable item(s):")
        lines.extend(f"    {msg}" for msg in report["skipped"][:20])
    return "\n".join(lines)


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect datasets and write the built-in meshes")
    dsub = p.add_subparsers(dest="data_command", required=True)
    info = dsub.add_parser("info", help="detected format, splits, classes of a dataset")
    info.add_argument("path")
    info.add_argument("--points", type=_at_least(1), help="points per cloud to read (default: as stored; 1024 for meshes)")
    info.add_argument("--check", action="store_true", help="read every item and list unreadable ones")
    info.set_defaults(func=_cmd_data_info)
    export = dsub.add_parser("builtin", help="write the built-in meshes as <class>/{train,test}/*.off")
    export.add_argument("--out", required=True)
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--train", type=_at_least(0), default=40, help="objects per class in train")
    export.add_argument("--test", type=_at_least(0), default=10, help="objects per class in test")
    export.set_defaults(func=_cmd_data_builtin)


def _cmd_data_info(args: argparse.Namespace) -> int:
    from pretext3d.data import detect_format, open_splits
    from pretext3d.utils.progress import progress_bar

    fmt = detect_format(args.path)
    splits = open_splits(args.path, num_points=args.points, on_error="skip", fmt=fmt)
    print(f"{args.path}: format {fmt}")
    bad = 0
    counts = {}
    for name, ds in splits.items():
        counts[name] = np.bincount(ds.labels, minlength=len(ds.classes))
        print(f"  {name}: {len(ds)} clouds, {len(ds.classes)} classes, {ds.num_points} points, "
              f"{'with' if ds.has_normals else 'no'} normals, up axis {ds.up_axis or 'unknown'}")
        if args.check:
            for i in progress_bar(range(len(ds)), desc=f"checking {name}", unit="item"):
                item = ds[i]
                if "error" in item:
                    bad += 1
                    print(f"    unreadable: {item['error']}")
    classes = splits["train"].classes
    print("  classes (train/test): " + ", ".join(
        f"{c} ({counts['train'][i]}/{counts['test'][i]})" for i, c in enumerate(classes)))
    return 1 if bad else 0


def _cmd_data_builtin(args: argparse.Namespace) -> int:
    from pretext3d.data import export_builtin_meshes

    out = export_builtin_meshes(args.out, args.seed, args.train, args.test)
    print(f"wrote the built-in meshes to {out}")
    return 0


DEMO_METHODS = {"parae": "parae_cpu", "crosspoint": "crosspoint_cpu"}


def _method_list(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in DEMO_METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown) or text!r}; known: {', '.join(DEMO_METHODS)}")
    return methods


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job end to end on the built-in data: pretrain, then the linear-SVM "
                       "gain over random init (minutes on 2 cores)")
    p.add_argument("--out", default="demo_out", help="runs, reports and cache (default demo_out; a finished run is reused)")
    p.add_argument("--methods", type=_method_list, default=["parae", "crosspoint"], metavar="M[,M]",
                   help=f"pretext tasks to pretrain with, comma-separated (their *_cpu recipes; default both): "
                   f"{', '.join(DEMO_METHODS)}")
    p.add_argument("--steps", type=_at_least(1), default=120, help="pretraining steps per method (default 120)")
    p.add_argument("--train", type=_at_least(2), default=40, help="built-in objects per class for training")
    p.add_argument("--test", type=_at_least(1), default=10, help="built-in objects per class for testing")
    p.add_argument("--points", type=_at_least(1), default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides for every method")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    """Random-init PointNet floor, then each method's *_cpu recipe on the same built-in
    training split, each evaluated with the same linear-SVM protocol."""
    from pretext3d.cli_pretrain import pretrain
    from pretext3d.data.builtin import builtin_spec
    from pretext3d.eval.protocols import LinearSVMConfig, run_linear_svm
    from pretext3d.utils.io import atomic_write_json

    out = Path(args.out)
    data = builtin_spec(args.seed, args.train, args.test)
    log = (lambda *a, **k: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    start = time.perf_counter()
    common = dict(data=data, num_points=args.points, seeds=[args.seed], device=args.device,
                  cache_dir=str(out / "cache"), progress=not args.quiet)
    log("[demo] random-init PointNet: BN calibrated on the training clouds, linear SVM")
    floor = run_linear_svm(LinearSVMConfig(backbone="pointnet", random_init=True,
                                           bn_calibration_clouds=10 * args.train, **common), log=log)
    atomic_write_json(out / "linear_svm_random_init.json", floor)
    rows = [("random init (BN cal.)", floor, None)]
    for method in args.methods:
        run = out / f"pretrain_{method}"
        overrides = [f"steps={args.steps}", f"seed={args.seed}", f"device={args.device}", f"data_options.points={args.points}",
                     f"data_options.builtin={{train: {args.train}, test: {args.test}, seed: {args.seed}}}",
                     *args.overrides]
        log(f"[demo] pretraining with {method} ({DEMO_METHODS[method]}, {args.steps} steps) into {run}")
        summary = pretrain(DEMO_METHODS[method], run, overrides, resume=(run / "recipe.json").exists(), log=log)
        report = run_linear_svm(LinearSVMConfig(backbone=None, checkpoint=str(run), **common), log=log)
        atomic_write_json(out / f"linear_svm_{method}.json", report)
        rows.append((f"{method} {args.steps} steps", report, summary))
    print(format_demo(rows, time.perf_counter() - start, out))
    return 0


def format_demo(rows: list[tuple[str, dict, dict | None]], seconds: float, out: Path) -> str:
    first = rows[0][1]
    floor = first["accuracy"]
    lines = [
        f"pretext3d demo - built-in data: {first['num_classes']} classes, {first['train_size']} train / "
        f"{first['test_size']} test objects, {first['num_points']} points; linear SVM on frozen features",
        f"{'weights':26s}{'backbone':20s}{'accuracy':>10s}{'gain':>8s}{'class mean':>12s}{'C':>8s}{'dim':>6s}{'train s':>9s}",
    ]
    for name, report, summary in rows:
        gain = "" if summary is None else f"{100 * (report['accuracy'] - floor):+.1f}"
        trained = "" if summary is None else f"{summary['seconds']:.0f}"
        lines.append(f"{name:26s}{report['backbone']:20s}{100 * report['accuracy']:9.1f}%{gain:>8s}"
                     f"{100 * report['class_mean_accuracy']:11.1f}%{report['C']:8g}{report['feature_dim']:6d}{trained:>9s}")
    lines.append(f"total {seconds:.0f} s; runs and reports in {out}/")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pretext3d", description="Self-supervised 3D representation learning.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    evaluate = sub.add_parser("evaluate", help="evaluate frozen features with a standard protocol")
    esub = evaluate.add_subparsers(dest="protocol", required=True)
    _add_linear_svm(esub)
    add_pretrain(sub)
    _add_data(sub)
    add_prepare(sub)
    add_verify(sub)
    add_render(sub)
    _add_demo(sub)
    return parser


def _version() -> str:
    from pretext3d import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and getattr(args, "overrides", None) is not None and all("=" in u and not u.startswith("-") for u in unknown):
        args.overrides = [*args.overrides, *unknown]  # key=value after an option (e.g. after --resume)
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    from pretext3d.data.errors import DataFormatError
    from pretext3d.engine.checkpoint import CheckpointError

    try:
        return int(args.func(args) or 0)
    except (DataFormatError, CheckpointError, ValueError) as err:  # bad input: one clear line
        if os.environ.get("PRETEXT3D_DEBUG"):
            raise
        print(f"pretext3d: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pretext3d: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
