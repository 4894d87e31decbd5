"""The ``pretext3d`` command line: one entry point for data, evaluation and the demo."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np

from pretext3d.cli_evaluate import add_evaluate
from pretext3d.cli_options import at_least as _at_least
from pretext3d.cli_options import log_for
from pretext3d.cli_prepare import add_prepare, add_render, add_verify
from pretext3d.cli_pretrain import add_pretrain
from pretext3d.cli_recipes import add_recipes
from pretext3d.cli_search import add_index, add_search, add_serve, index_actions
from pretext3d.shipped import DEMO_METHODS

__all__ = ["main", "build_parser"]


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
    from pretext3d.data.datasets import open_point_splits, point_format
    from pretext3d.utils.progress import progress_bar

    fmt = point_format(args.path)
    splits = open_point_splits(args.path, num_points=args.points, on_error="skip", fmt=fmt)
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




def _method_list(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in DEMO_METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown) or text!r}; known: {', '.join(DEMO_METHODS)}")
    return methods


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job end to end on the built-in data: pretrain, then the gain over the "
                       "random-init floor in three protocols, and the report pages (minutes on 2 cores)",
                       description="Pretrain ParAE and CrossPoint (their *_cpu recipes) on the built-in shapes; score each "
                       "backbone and its random-init floor with a linear SVM on every label, few-shot 14-way 1-shot and "
                       "retrieval mAP on frozen features; print the table with the gains; write each run's report page. "
                       "Threads: auto unless --threads or OMP_NUM_THREADS says otherwise.")
    p.add_argument("--out", default="demo_out", help="runs, reports and cache (default demo_out; a finished run is reused)")
    p.add_argument("--methods", type=_method_list, default=["parae", "crosspoint"], metavar="M[,M]",
                   help=f"pretext tasks to pretrain with, comma-separated (their *_cpu recipes; default both): "
                   f"{', '.join(DEMO_METHODS)}")
    p.add_argument("--steps", type=_at_least(1), default=100, help="pretraining steps per method (default 100)")
    p.add_argument("--train", type=_at_least(2), default=40, help="built-in objects per class for training")
    p.add_argument("--test", type=_at_least(1), default=10, help="built-in objects per class for testing")
    p.add_argument("--points", type=_at_least(1), default=256, help="points per cloud (default 256)")
    p.add_argument("--image-size", type=_at_least(8), default=32,
                   help="side of the views CrossPoint trains on (default 32; rendered at 64, 4 views per object)")
    p.add_argument("--episodes", type=_at_least(1), default=50, help="few-shot episodes (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-report", dest="report", action="store_false", help="skip the report pages")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides for every method")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pretext3d.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=args.out, methods=args.methods, steps=args.steps, train=args.train, test=args.test,
                     points=args.points, image_size=args.image_size, episodes=args.episodes, seed=args.seed, device=args.device,
                     progress=not args.quiet, report=args.report, overrides=list(args.overrides))
    log = log_for(args)
    if getattr(args, "threads_used", None):
        log(f"[demo] {args.threads_used} thread(s)")
    print(run_demo(cfg, log=log))
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page about a pretrained run",
                       description="Result tables of the evaluation JSONs in RUN (RUN/*.json, RUN/eval/*.json) with their "
                       "protocol settings, training curves, a t-SNE of the test features, retrieval grids, for ParAE "
                       "the fitted Gaussians and for Pic@Point heatmaps of a point's similarity to the image regions. PNGs and report.json are written next to the page.")
    p.add_argument("run", help="a finished `pretext3d pretrain` run folder")
    p.add_argument("--out", required=True, help="the HTML page to write")
    p.add_argument("--data", help="dataset for the t-SNE and retrieval (default: the run's data when readable, else builtin)")
    p.add_argument("--evaluations", nargs="+", default=[], metavar="JSON", help="more evaluation reports to show")
    p.add_argument("--points", type=_at_least(1), default=1024)
    p.add_argument("--tsne-objects", type=_at_least(2), default=1500, help="test objects in the t-SNE (default 1500)")
    p.add_argument("--queries", type=_at_least(1), default=5, help="retrieval rows (queries of distinct classes)")
    p.add_argument("--top-k", type=_at_least(1), default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from pretext3d.report import ReportConfig, make_report
    from pretext3d.utils.io import check_writable

    check_writable(args.out)
    make_report(ReportConfig(run=args.run, out=args.out, data=args.data, evaluations=args.evaluations, num_points=args.points,
                             tsne_objects=args.tsne_objects, queries=args.queries, top_k=args.top_k, seed=args.seed,
                             device=args.device, cache_dir=args.cache_dir, progress=not args.quiet), log=log_for(args))
    print(args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pretext3d", description="Self-supervised 3D representation learning.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--threads", type=_threads, metavar="N|auto",
                        help="threads of the math libraries (default: torch's, one per core; demo: auto): auto takes the "
                        "cores the rest of the machine leaves free (measured over half a second); may also follow the "
                        "command")
    sub = parser.add_subparsers(dest="command", required=True)
    add_evaluate(sub)
    add_pretrain(sub)
    add_recipes(sub)
    _add_data(sub)
    add_prepare(sub)
    add_verify(sub)
    add_render(sub)
    _add_demo(sub)
    _add_report(sub)
    add_index(sub)
    add_search(sub)
    add_serve(sub)
    return parser


def _version() -> str:
    from pretext3d._version import __version__

    return __version__


def _threads(text: str) -> str:
    if text != "auto" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"a positive integer or auto, got {text!r}")
    return text


def _threads_first(argv: list[str]) -> list[str]:
    """``--threads V`` moved before the command wherever it stands (it is an option of the
    program, and reads naturally after the command too)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--threads=") and i > 0:
            return [arg, *argv[:i], *argv[i + 1:]]
        if arg == "--threads" and i > 0 and i + 1 < len(argv):
            return [arg, argv[i + 1], *argv[:i], *argv[i + 2:]]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints escaped, never stops a job
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args, unknown = parser.parse_known_args(index_actions(_threads_first(list(sys.argv[1:] if argv is None else argv))))
    if unknown and getattr(args, "overrides", None) is not None and all("=" in u and not u.startswith("-") for u in unknown):
        args.overrides = [*args.overrides, *unknown]  # key=value after an option (e.g. after --resume)
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    from pretext3d.data.errors import DataFormatError
    from pretext3d.models.checkpoint import CheckpointError
    from pretext3d.utils.io import describe_os_error
    from pretext3d.utils.lock import FolderBusy

    try:
        threads = args.threads or ("auto" if args.command == "demo" and "OMP_NUM_THREADS" not in os.environ else None)
        if threads:
            from pretext3d.utils.threads import set_threads

            args.threads_used = set_threads(threads)
        return int(args.func(args) or 0)
    except (DataFormatError, CheckpointError, ValueError, FolderBusy) as err:  # bad input: one clear line
        if os.environ.get("PRETEXT3D_DEBUG"):
            raise
        print(f"pretext3d: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the machine said no (full or read-only disk, permissions): one clear line
        if os.environ.get("PRETEXT3D_DEBUG"):
            raise
        print(f"pretext3d: error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pretext3d: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
