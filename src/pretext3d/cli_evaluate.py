"""``pretext3d evaluate PROTOCOL``: the protocols on frozen features share how the features are
made (data, weights, points, seeds, cache) and differ in what is measured on them."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

__all__ = ["add_evaluate", "at_least", "format_linear_svm", "format_fewshot", "format_retrieval", "format_finetune"]


def at_least(minimum: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("evaluate", help="evaluate frozen features with a standard protocol")
    esub = evaluate.add_subparsers(dest="protocol", required=True)
    _add_linear_svm(esub)
    _add_fewshot(esub)
    _add_retrieval(esub)
    _add_finetune(esub, "finetune-cls", "classification")
    _add_finetune(esub, "partseg", "partseg")


def _add_feature_args(p: argparse.ArgumentParser) -> None:
    """Where the frozen features come from: every protocol on frozen features takes these."""
    p.add_argument("--data", required=True, help="dataset file/folder in any supported format, or 'builtin[:seed=,train=,test=]'")
    p.add_argument("--backbone", choices=["pointnet", "dgcnn", "pointnet-pointwise", "dgcnn-seg"],
                   help="required with --random-init (pointnet or dgcnn); with --checkpoint, checks what it holds")
    init = p.add_mutually_exclusive_group(required=True)
    init.add_argument("--random-init", action="store_true", help="untrained backbone; BatchNorm statistics calibrated on training clouds")
    init.add_argument("--checkpoint", help="a `pretext3d pretrain` run folder, a pretext3d .safetensors checkpoint, "
                      "or reference weights (.pth/.pt/.npz)")
    p.add_argument("--like", metavar="CHECKPOINT", help="with --random-init: the architecture (backbone and config) of this "
                   "pretext3d checkpoint or run folder, with random weights: the floor of a pretrained backbone")
    p.add_argument("--points", type=at_least(1), default=1024, help="points per cloud (default 1024)")
    p.add_argument("--subsample", choices=["first", "random", "fps"], default="first",
                   help="how clouds with more points are cut to --points (default: the first N, as published)")
    p.add_argument("--subset", choices=["modelnet10"], help="evaluate on the ModelNet10 classes of a ModelNet40 source")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (init, BN calibration, sampling); mean +- std is reported")
    p.add_argument("--batch-size", type=at_least(2), default=32)
    p.add_argument("--bn-calibration", type=at_least(2), default=2048, metavar="N", help="training clouds for BN calibration with --random-init")
    p.add_argument("--k", type=at_least(1), default=20, help="DGCNN neighbours (default 20)")
    p.add_argument("--emb-dims", type=at_least(1), default=1024, help="backbone embedding width for --random-init (default 1024)")
    p.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=at_least(0), default=0, help="data-loading processes (useful for mesh folders)")
    p.add_argument("--cache-dir", help="feature cache (default ~/.cache/pretext3d/features or $PRETEXT3D_CACHE)")
    p.add_argument("--no-cache", action="store_true", help="always recompute features")
    p.add_argument("--json", metavar="OUT", help="also write the report (every protocol setting and the numbers) as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _like_architecture(args: argparse.Namespace) -> tuple[str | None, dict[str, Any] | None]:
    """(backbone name, random-init config): --like's checkpoint architecture, else --backbone and None."""
    from pretext3d.engine.checkpoint import checkpoint_architecture

    if not args.like:
        return args.backbone, None
    if not args.random_init:
        raise ValueError("--like goes with --random-init (a checkpoint's architecture, random weights)")
    backbone, random_config = checkpoint_architecture(args.like)
    if args.backbone and args.backbone != backbone:
        raise ValueError(f"{args.like}: holds a {backbone} backbone, not a {args.backbone}")
    return backbone, random_config


def _feature_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """FeatureConfig fields from the shared arguments (resolving --like to an architecture)."""
    backbone, random_config = _like_architecture(args)
    if args.random_init and not args.like and backbone not in ("pointnet", "dgcnn"):
        raise ValueError("--random-init needs --backbone pointnet or dgcnn (or --like CHECKPOINT)")
    return dict(
        data=args.data, backbone=backbone, checkpoint=args.checkpoint, random_init=args.random_init,
        num_points=args.points, subsample=args.subsample, subset=args.subset, seeds=args.seeds,
        batch_size=args.batch_size, bn_calibration_clouds=args.bn_calibration, k=args.k, emb_dims=args.emb_dims,
        random_config=random_config, device=args.device, num_workers=args.workers, cache_dir=args.cache_dir,
        use_cache=not args.no_cache, progress=not args.quiet,
    )


def _run_protocol(args: argparse.Namespace, run: Callable[..., dict], config: Any, fmt: Callable[[dict], str]) -> int:
    from pretext3d.utils.io import atomic_write_json

    log = (lambda *a, **k: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = run(config, log=log)
    print(fmt(report))
    if args.json:
        atomic_write_json(args.json, report)
    return 0


def _header(report: dict, title: str) -> list[str]:
    lines = [
        f"{title}  {report['dataset']} ({report['dataset_format']}{', ' + report['subset'] if report['subset'] else ''}, "
        f"{report['num_classes']} classes)",
        f"  backbone        {report['backbone']} ({report['weights']})",
        f"  feature dim     {report['feature_dim']}",
        f"  points / cloud  {report['num_points']} ({report['sampling']})",
    ]
    if report["bn_calibration"]:
        lines.append(f"  BN statistics   {report['bn_calibration']}")
    return lines


def _skipped(report: dict) -> list[str]:
    if not report["skipped"]:
        return []
    return [f"  skipped         {len(report['skipped'])} unreadable item(s):", *(f"    {m}" for m in report["skipped"][:20])]


# --- linear SVM -------------------------------------------------------------------------------


def _add_linear_svm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "linear-svm",
        help="linear SVM on frozen global features (ModelNet40/10 protocol)",
        description="Extract frozen global features of the train and test splits and fit a linear SVM. "
        "C is given (--C) or chosen by cross-validation on the train split only; the test split is scored once.",
    )
    _add_feature_args(p)
    p.add_argument("--C", type=float, help="SVM C; default: chosen by CV on train")
    p.add_argument("--C-grid", type=float, nargs="+", help="candidate Cs for the CV (default 0.001 0.01 0.1 1 10)")
    p.add_argument("--folds", type=at_least(2), default=3, help="CV folds for choosing C (default 3)")
    p.add_argument("--svm", choices=["svc", "linearsvc"], default="svc", help="sklearn SVC(kernel='linear') (published) or LinearSVC")
    p.add_argument("--standardize", action="store_true", help="standardise features before the SVM (not the published protocol)")
    p.set_defaults(func=_cmd_linear_svm)


def _cmd_linear_svm(args: argparse.Namespace) -> int:
    from pretext3d.eval.linear_svm import DEFAULT_C_GRID
    from pretext3d.eval.protocols import LinearSVMConfig, run_linear_svm

    cfg = LinearSVMConfig(**_feature_kwargs(args), C=args.C, C_grid=tuple(args.C_grid or DEFAULT_C_GRID),
                          folds=args.folds, svm=args.svm, standardize=args.standardize)
    return _run_protocol(args, run_linear_svm, cfg, format_linear_svm)


def format_linear_svm(report: dict) -> str:
    seeds = report["seeds"]
    acc = f"{100 * report['accuracy']:.2f}%"
    cls = f"{100 * report['class_mean_accuracy']:.2f}%"
    if len(seeds) > 1:
        acc += f" +- {100 * report['accuracy_std']:.2f}"
        cls += f" +- {100 * report['class_mean_accuracy_std']:.2f}"
    lines = _header(report, "linear SVM")
    lines[0] += f", {report['train_size']} train / {report['test_size']} test"
    lines[2:2] = [f"  accuracy        {acc}   (class mean {cls}, seeds {' '.join(map(str, seeds))})",
                  f"  C               {report['C']:g}   ({report['C_selection']})"]
    return "\n".join(lines + _skipped(report))


# --- few-shot ---------------------------------------------------------------------------------


def _way_shot(text: str) -> tuple[int, int]:
    ways, sep, shots = text.lower().partition("x")
    if not sep or not ways.isdigit() or not shots.isdigit() or int(ways) < 2 or int(shots) < 1:
        raise argparse.ArgumentTypeError(f"expected WAYSxSHOTS such as 5x10, got {text!r}")
    return int(ways), int(shots)


def _add_fewshot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fewshot", help="N-way K-shot classification: linear SVM per episode on frozen features",
        description="Each episode draws N classes, K support objects per class from the train split and Q query "
        "objects per class from the test split, fits a linear SVM on the support features and scores the queries. "
        "Mean +- std over the episodes (--runs per seed).",
    )
    _add_feature_args(p)
    p.add_argument("--settings", type=_way_shot, nargs="+", default=[(5, 10), (5, 20), (10, 10), (10, 20)],
                   metavar="WAYSxSHOTS", help="N-way K-shot settings (default 5x10 5x20 10x10 10x20)")
    p.add_argument("--queries", type=at_least(1), default=20, help="query objects per class, from the test split (default 20)")
    p.add_argument("--runs", type=at_least(1), default=10, help="episodes per setting and seed (default 10)")
    p.add_argument("--C", type=float, help="SVM C; default: chosen per episode by CV on its support set")
    p.add_argument("--C-grid", type=float, nargs="+", help="candidate Cs for the CV (default 0.01 0.1 1)")
    p.add_argument("--folds", type=at_least(2), default=3, help="CV folds on the support set (at most K; default 3)")
    p.set_defaults(func=_cmd_fewshot)


def _cmd_fewshot(args: argparse.Namespace) -> int:
    from pretext3d.eval.fewshot import FEWSHOT_C_GRID, FewShotConfig, run_fewshot

    cfg = FewShotConfig(**_feature_kwargs(args), settings=args.settings, queries=args.queries, runs=args.runs,
                        C=args.C, C_grid=tuple(args.C_grid or FEWSHOT_C_GRID), folds=args.folds)
    return _run_protocol(args, run_fewshot, cfg, format_fewshot)


def format_fewshot(report: dict) -> str:
    lines = _header(report, "few-shot")
    lines += [f"  episodes        {report['runs_per_seed']} per setting and seed (seeds {' '.join(map(str, report['seeds']))}), "
              f"support from {report['support_split']}, {report['queries_per_class']} queries per class from {report['query_split']}",
              f"  C               {report['C_selection']}"]
    for name, res in report["results"].items():
        lines.append(f"  {name:15s} {100 * res['accuracy']:.2f}% +- {100 * res['accuracy_std']:.2f}  ({res['episodes']} episodes)")
    return "\n".join(lines + _skipped(report))


# --- retrieval --------------------------------------------------------------------------------


def _add_retrieval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retrieval", help="point -> point shape retrieval on frozen features: top-k accuracy and mAP",
        description="Every test object queries the gallery (the other test objects, or the train split); items of "
        "the query's class are relevant. The query is never in its own ranking.",
    )
    _add_feature_args(p)
    p.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine", help="feature distance (default cosine)")
    p.add_argument("--top-k", type=at_least(1), nargs="+", default=[1, 5, 10], help="k of top-k accuracy and precision@k")
    p.add_argument("--gallery", choices=["test", "train"], default="test",
                   help="test: the other test objects (default); train: the train split")
    p.set_defaults(func=_cmd_retrieval)


def _cmd_retrieval(args: argparse.Namespace) -> int:
    from pretext3d.eval.retrieval import RetrievalConfig, run_retrieval

    cfg = RetrievalConfig(**_feature_kwargs(args), metric=args.metric, ks=tuple(args.top_k), gallery=args.gallery)
    return _run_protocol(args, run_retrieval, cfg, format_retrieval)


def format_retrieval(report: dict) -> str:
    lines = _header(report, "retrieval")
    lines += [f"  queries         {report['per_seed'][0]['queries']} ({report['queries']}); gallery: {report['gallery']}",
              f"  distance        {report['metric']}"]
    for name, res in report["results"].items():
        lines.append(f"  {name:15s} {100 * res['mean']:.2f}%" + (f" +- {100 * res['std']:.2f}" if len(report["seeds"]) > 1 else ""))
    return "\n".join(lines + _skipped(report))


# --- fine-tuning ------------------------------------------------------------------------------


def _fraction(text: str) -> float:
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a label fraction lies in (0, 1] (or 0-100%), got {text!r}")
    return value


def _add_finetune(sub: argparse._SubParsersAction, name: str, task: str) -> None:
    what = "shape classification" if task == "classification" else "part segmentation (class and instance mIoU)"
    p = sub.add_parser(
        name, help=f"supervised {what} from the backbone, per label fraction, frozen or trainable",
        description=f"Fine-tune for {what}. Model selection on a validation split only (classification: a stratified "
        "hold-out of train; part segmentation: the dataset's val split); the test split is scored once with the "
        "weights that did best on validation.",
    )
    p.add_argument("--data", required=True, help="classification: any supported dataset; part segmentation: a ShapeNetPart "
                   "folder (shapenetcore_partanno_segmentation_benchmark_v0_normal) or 'builtin[:seed=,train=,test=]'")
    p.add_argument("--backbone", help="with --random-init: the backbone to build (pointnet, dgcnn, pointnet-pointwise, "
                   "dgcnn-seg, ...); with --checkpoint: checks what it holds")
    init = p.add_mutually_exclusive_group(required=True)
    init.add_argument("--random-init", action="store_true", help="start from random weights (BatchNorm statistics calibrated)")
    init.add_argument("--checkpoint", help="a `pretext3d pretrain` run folder or backbone checkpoint")
    p.add_argument("--like", metavar="CHECKPOINT", help="with --random-init: the architecture of this checkpoint")
    p.add_argument("--emb-dims", type=at_least(1), help="with --random-init: the backbone's embedding width")
    p.add_argument("--fractions", type=_fraction, nargs="+", default=[1.0], help="label fractions, e.g. 0.02 0.2 1 or 2%% 20%% 100%%")
    p.add_argument("--modes", nargs="+", choices=["frozen", "unfrozen"], default=["unfrozen"],
                   help="frozen: only the new head trains; unfrozen: everything trains")
    p.add_argument("--epochs", type=float, default=50.0, help="passes over the labelled objects (default 50)")
    p.add_argument("--min-steps", type=at_least(0), default=0, help="at least this many steps per run (small fractions)")
    p.add_argument("--batch-size", type=at_least(2), default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam")
    p.add_argument("--label-smoothing", type=float, default=0.2 if task == "classification" else 0.0,
                   help="classification cross-entropy smoothing (default 0.2, as DGCNN)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="classification: share of train held out for validation")
    p.add_argument("--validations", type=at_least(1), default=10, help="validation passes per run (default 10)")
    p.add_argument("--points", type=at_least(1), default=1024 if task == "classification" else 2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="keep the run folders here (default: a temporary folder)")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_finetune, task=task)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from pretext3d.eval.finetune import FinetuneConfig, run_finetune

    backbone, random_config = _like_architecture(args)
    if args.random_init and not backbone:
        raise ValueError("--random-init needs --backbone (or --like CHECKPOINT)")
    random_config = {**(random_config or {}), **({"emb_dims": args.emb_dims} if args.emb_dims else {})}
    cfg = FinetuneConfig(task=args.task, data=args.data, backbone=backbone, checkpoint=args.checkpoint,
                         random_init=args.random_init, random_config=random_config, fractions=args.fractions,
                         modes=args.modes, epochs=args.epochs, min_steps=args.min_steps, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, optimizer=args.optimizer, label_smoothing=args.label_smoothing,
                         val_fraction=args.val_fraction, validations=args.validations, num_points=args.points,
                         seed=args.seed, device=args.device, out=args.out, progress=not args.quiet)
    return _run_protocol(args, run_finetune, cfg, format_finetune)


def format_finetune(report: dict) -> str:
    seg = report["protocol"] == "partseg"
    lines = [f"{report['protocol']}  {report['dataset']} ({report['train_size']} train / {report['val_size']} val / "
             f"{report['test_size']} test); weights {report['runs'][0]['weights']}",
             f"  selection       {report['validation']}",
             f"  {'labels':>8s} {'backbone':>9s} {'objects':>8s} {'steps':>6s} {'best step':>10s}  "
             + ("instance mIoU  class mIoU" if seg else "accuracy  class mean")]
    for run in report["runs"]:
        test = run["test"]
        values = (f"{100 * test['instance_miou']:12.2f}% {100 * test['class_miou']:10.2f}%" if seg else
                  f"{100 * test['accuracy']:7.2f}% {100 * test['class_mean_accuracy']:10.2f}%")
        lines.append(f"  {100 * run['fraction']:7g}% {run['mode']:>9s} {run['labelled']:8d} {run['steps']:6d} "
                     f"{run['selected']['step']:10d}  {values}")
    return "\n".join(lines)
