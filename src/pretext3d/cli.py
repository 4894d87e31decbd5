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
    p.add_argument("--backbone", required=True, choices=["pointnet", "dgcnn"])
    init = p.add_mutually_exclusive_group(required=True)
    init.add_argument("--random-init", action="store_true", help="untrained backbone; BatchNorm statistics calibrated on training clouds")
    init.add_argument("--checkpoint", help="pretext3d .safetensors checkpoint, or reference weights (.pth/.pt/.npz)")
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
    p.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=_at_least(0), default=0, help="data-loading processes (useful for mesh folders)")
    p.add_argument("--cache-dir", help="feature cache (default ~/.cache/pretext3d/features or $PRETEXT3D_CACHE)")
    p.add_argument("--no-cache", action="store_true", help="always recompute features")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_linear_svm)


def _cmd_linear_svm(args: argparse.Namespace) -> int:
    from pretext3d.eval.linear_svm import DEFAULT_C_GRID
    from pretext3d.eval.protocols import LinearSVMConfig, run_linear_svm
    from pretext3d.utils.io import atomic_write_json

    cfg = LinearSVMConfig(
        data=args.data, backbone=args.backbone, checkpoint=args.checkpoint, random_init=args.random_init,
        num_points=args.points, subsample=args.subsample, subset=args.subset, seeds=args.seeds, C=args.C,
        C_grid=tuple(args.C_grid or DEFAULT_C_GRID), folds=args.folds, svm=args.svm, standardize=args.standardize,
        batch_size=args.batch_size, bn_calibration_clouds=args.bn_calibration, k=args.k, emb_dims=args.emb_dims,
        device=args.device, num_workers=args.workers, cache_dir=args.cache_dir, use_cache=not args.no_cache,
        progress=not args.quiet,
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


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job end to end on the built-in data (a few minutes on 2 cores)")
    p.add_argument("--out", default="demo_out", help="where the report and cache go (default demo_out)")
    p.add_argument("--train", type=_at_least(2), default=40, help="built-in objects per class for training")
    p.add_argument("--test", type=_at_least(1), default=10, help="built-in objects per class for testing")
    p.add_argument("--points", type=_at_least(1), default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pretext3d.eval.protocols import LinearSVMConfig, run_linear_svm
    from pretext3d.utils.io import atomic_write_json

    out = Path(args.out)
    data = f"builtin:seed={args.seed},train={args.train},test={args.test}"
    log = (lambda *a, **k: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    start = time.perf_counter()
    rows = []
    for backbone in ("pointnet", "dgcnn"):
        log(f"[demo] {backbone}: random init, BN calibrated on the training clouds, linear SVM")
        cfg = LinearSVMConfig(data=data, backbone=backbone, random_init=True, num_points=args.points,
                              seeds=[args.seed], bn_calibration_clouds=10 * args.train, device=args.device,
                              cache_dir=str(out / "cache"), progress=not args.quiet)
        report = run_linear_svm(cfg, log=log)
        atomic_write_json(out / f"linear_svm_{backbone}.json", report)
        rows.append(report)
    print(format_demo(rows, time.perf_counter() - start))
    return 0


def format_demo(reports: list[dict], seconds: float) -> str:
    first = reports[0]
    lines = [
        f"pretext3d demo - built-in data: {first['num_classes']} classes, {first['train_size']} train / "
        f"{first['test_size']} test objects, {first['num_points']} points",
        f"{'backbone':10s}{'weights':22s}{'linear-SVM acc':>16s}{'class mean':>12s}{'C':>8s}{'dim':>7s}{'embed s':>9s}",
    ]
    for r in reports:
        embed = sum(s["extract_seconds"] for s in r["per_seed"])
        lines.append(f"{r['backbone']:10s}{'random init (BN cal.)':22s}{100 * r['accuracy']:15.1f}%"
                     f"{100 * r['class_mean_accuracy']:11.1f}%{r['C']:8g}{r['feature_dim']:7d}{embed:9.1f}")
    lines.append(f"total {seconds:.0f} s; reports in {Path(reports[0]['config']['cache_dir']).parent}/")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pretext3d", description="Self-supervised 3D representation learning.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    evaluate = sub.add_parser("evaluate", help="evaluate frozen features with a standard protocol")
    esub = evaluate.add_subparsers(dest="protocol", required=True)
    _add_linear_svm(esub)
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
    args = build_parser().parse_args(argv)
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
