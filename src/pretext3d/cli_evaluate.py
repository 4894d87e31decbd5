"""``pretext3d evaluate PROTOCOL``: the protocols on frozen features share how the features are
made (data, weights, points, seeds, cache) and differ in what is measured on them."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # the protocols are imported when a command runs (a fast --help)
    from pretext3d.eval.semseg import SemsegConfig

__all__ = ["add_evaluate", "at_least", "format_linear_svm", "format_fewshot", "format_retrieval", "format_finetune",
           "format_store_retrieval", "format_multiview", "format_pretext", "add_semseg_arguments", "semseg_config"]


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
    _add_multiview(esub)
    _add_pretext(esub)
    _add_semseg(esub)


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
    p.add_argument("--bn-calibration", type=at_least(2), metavar="N", help="with --random-init: training clouds for BN "
                   "calibration (default 2048; with --modalities: training objects, default 256)")
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
    from pretext3d.runs import backbone_architecture as checkpoint_architecture

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
        batch_size=args.batch_size, bn_calibration_clouds=args.bn_calibration or 2048, k=args.k, emb_dims=args.emb_dims,
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
    store = p.add_argument_group("within and across the modalities of a prepared store (--data STORE, --checkpoint RUN "
                                 "or --random-init --like RUN)")
    store.add_argument("--modalities", nargs="+", choices=["points", "image", "mesh"],
                       help="retrieve among these modalities of a store: every within-modal pair, and in the shared "
                       "space every ordered cross-modal pair")
    store.add_argument("--space", choices=["shared", "encoder"],
                       help="shared: the method's heads into the space its loss aligns (default); encoder: the encoders' "
                       "outputs (within-modal pairs only)")
    _add_view_args(store, multiple=False)
    p.set_defaults(func=_cmd_retrieval)


def _add_view_args(p: argparse._ActionsContainer, multiple: bool) -> None:
    if multiple:
        p.add_argument("--views", type=at_least(1), nargs="+", default=[1, 12, 36, 80],
                       help="view counts v to pool (default 1 12 36 80; counts above the store's are skipped, its own is added)")
    else:
        p.add_argument("--views", type=at_least(1), help="image views pooled per object (default all the store has)")
    p.add_argument("--pool", choices=["max", "mean"], default=None if not multiple else "max",
                   help="pooling of per-view features (default max, as MVCNN)")
    p.add_argument("--image-size", type=at_least(8), help="side the views are fed at (default: the run's training size, "
                   "else the store's)")


def _store_run(args: argparse.Namespace) -> str:
    """The run folder whose method a store protocol uses: --checkpoint, or --like with --random-init."""
    from pretext3d.runs import backbone_architecture as checkpoint_architecture

    run = args.checkpoint or args.like
    if not run:
        raise ValueError("protocols on a store's modalities need --checkpoint RUN, or --random-init --like RUN")
    if args.like and args.checkpoint:
        raise ValueError("--like goes with --random-init")
    if args.bn_calibration and not args.random_init:
        raise ValueError("--bn-calibration goes with --random-init (trained weights keep their statistics)")
    if getattr(args, "backbone", None):
        held, _ = checkpoint_architecture(run)  # the run's exported backbone
        if held != args.backbone:
            raise ValueError(f"{run}: the run's point backbone is {held}, not {args.backbone}")
    return run


def _store_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(data=args.data, checkpoint=_store_run(args), random_init=args.random_init,
                bn_calibration_objects=args.bn_calibration or 256, num_points=args.points, image_size=args.image_size,
                batch_size=args.batch_size, device=args.device, num_workers=args.workers, cache_dir=args.cache_dir,
                use_cache=not args.no_cache, progress=not args.quiet)


def _cmd_retrieval(args: argparse.Namespace) -> int:
    from pretext3d.eval.retrieval import RetrievalConfig, StoreRetrievalConfig, run_retrieval, run_store_retrieval

    if args.modalities:
        point_only = {"--seeds": len(args.seeds) > 1, "--gallery": args.gallery != "test",
                      "--subsample": args.subsample != "first", "--subset": args.subset is not None,
                      "--k": args.k != 20, "--emb-dims": args.emb_dims != 1024}
        given = [name for name, used in point_only.items() if used]
        if given:
            raise ValueError(f"{', '.join(given)}: options of point retrieval on a point dataset, not of --modalities "
                             "(one seed, test gallery, the store's stored points)")
        cfg = StoreRetrievalConfig(**_store_kwargs(args), seed=args.seeds[0], modalities=tuple(args.modalities),
                                   space=args.space or "shared", views=args.views, pool=args.pool or "max",
                                   metric=args.metric, ks=tuple(args.top_k))
        return _run_protocol(args, run_store_retrieval, cfg, format_store_retrieval)
    given = [name for name, value in (("--views", args.views), ("--image-size", args.image_size), ("--space", args.space),
                                      ("--pool", args.pool)) if value]
    if given:
        raise ValueError(f"{', '.join(given)} go with --modalities (retrieval among a store's modalities)")
    cfg = RetrievalConfig(**_feature_kwargs(args), metric=args.metric, ks=tuple(args.top_k), gallery=args.gallery)
    return _run_protocol(args, run_retrieval, cfg, format_retrieval)


def format_retrieval(report: dict) -> str:
    lines = _header(report, "retrieval")
    lines += [f"  queries         {report['per_seed'][0]['queries']} ({report['queries']}); gallery: {report['gallery']}",
              f"  distance        {report['metric']}"]
    for name, res in report["results"].items():
        lines.append(f"  {name:15s} {100 * res['mean']:.2f}%" + (f" +- {100 * res['std']:.2f}" if len(report["seeds"]) > 1 else ""))
    return "\n".join(lines + _skipped(report))


def format_store_retrieval(report: dict) -> str:
    views = report["views"]
    lines = [f"retrieval  {report['dataset']} ({report['test_size']} test objects, {report['num_classes']} classes)",
             f"  weights         {report['weights']}",
             f"  space           {report['space']}",
             *([f"  views           {views['count']} per object, {views['pool']}-pooled; image size {report['image_size']}"]
               if views else []),
             f"  distance        {report['metric']}",
             f"  {'query->gallery':16s} {'mAP':>7s} " + " ".join(f"{'top-' + k:>7s}" for k in
                                                                next(iter(report["results"].values()))["top_k"])
             + "   instance top-1"]
    if report["bn_calibration"]:
        lines.insert(2, f"  BN statistics   {report['bn_calibration']}")
    for name, res in report["results"].items():
        instance = res.get("instance")
        lines.append(f"  {name:16s} {100 * res['mAP']:6.2f}% " + " ".join(f"{100 * v:6.2f}%" for v in res["top_k"].values())
                     + (f"   {100 * instance['top_k']['1']:6.2f}%" if instance and "1" in instance["top_k"] else ""))
    return "\n".join(lines)


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
    _add_trained_weights(p)
    _add_training(p, "objects", "label fractions, e.g. 0.02 0.2 1 or 2%% 20%% 100%%")
    p.add_argument("--label-smoothing", type=float, default=0.2 if task == "classification" else 0.0,
                   help="classification cross-entropy smoothing (default 0.2, as DGCNN)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="classification: share of train held out for validation")
    p.add_argument("--points", type=at_least(1), default=1024 if task == "classification" else 2048)
    p.set_defaults(func=_cmd_finetune, task=task)


def _add_trained_weights(p: argparse.ArgumentParser) -> None:
    """Where a fine-tuned backbone starts from."""
    p.add_argument("--backbone", help="with --random-init: the backbone to build (pointnet, dgcnn, pointnet-pointwise, "
                   "dgcnn-seg, ...); with --checkpoint: checks what it holds")
    init = p.add_mutually_exclusive_group(required=True)
    init.add_argument("--random-init", action="store_true", help="start from random weights (BatchNorm statistics calibrated)")
    init.add_argument("--checkpoint", help="a `pretext3d pretrain` run folder or backbone checkpoint")
    p.add_argument("--like", metavar="CHECKPOINT", help="with --random-init: the architecture of this checkpoint")
    p.add_argument("--emb-dims", type=at_least(1), help="with --random-init: the backbone's embedding width")


def _add_training(p: argparse.ArgumentParser, items: str, fractions_help: str) -> None:
    """The fine-tuning runs: label fractions, frozen / unfrozen, optimisation, selection, output."""
    p.add_argument("--fractions", type=_fraction, nargs="+", default=[1.0], help=fractions_help)
    p.add_argument("--modes", nargs="+", choices=["frozen", "unfrozen"], default=["unfrozen"],
                   help="frozen: only the new head trains; unfrozen: everything trains")
    p.add_argument("--epochs", type=float, default=50.0, help=f"passes over the labelled {items} (default 50)")
    p.add_argument("--min-steps", type=at_least(0), default=0, help="at least this many steps per run (small fractions)")
    p.add_argument("--batch-size", type=at_least(2), default=32, help=f"{items} per batch (default 32)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam")
    p.add_argument("--validations", type=at_least(1), default=10, help="validation passes per run (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="keep the run folders here (default: a temporary folder)")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p.add_argument("--quiet", action="store_true")


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


# --- store protocols: multi-view recognition, pretext metrics ---------------------------------


def _add_store_args(p: argparse.ArgumentParser, image_only: bool) -> argparse._MutuallyExclusiveGroup:
    p.add_argument("--data", required=True, help="a prepared store (`pretext3d prepare`)")
    init = p.add_mutually_exclusive_group(required=True)
    init.add_argument("--checkpoint", metavar="RUN", help="a `pretext3d pretrain` run folder")
    init.add_argument("--random-init", action="store_true", help="random weights; BatchNorm statistics calibrated on "
                      "training objects" + ("" if image_only else " (needs --like RUN: the architecture)"))
    p.add_argument("--like", metavar="RUN", help="with --random-init: the method of this run folder with random weights")
    if not image_only:
        p.add_argument("--points", type=at_least(1), default=1024, help="points per cloud (the first N stored; default 1024)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init, calibration and draws")
    p.add_argument("--batch-size", type=at_least(2), default=16, help="objects per batch (all their views at once)")
    p.add_argument("--bn-calibration", type=at_least(2), metavar="N", help="with --random-init: training objects for BN "
                   "calibration (default 256)")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=at_least(0), default=0, help="data-loading processes (decoding the views)")
    p.add_argument("--cache-dir", help="feature cache (default ~/.cache/pretext3d/features or $PRETEXT3D_CACHE)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--json", metavar="OUT", help="also write the report (every protocol setting and the numbers) as JSON")
    p.add_argument("--quiet", action="store_true")
    return init


def _add_multiview(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "multiview", help="multi-view 2D recognition: image features pooled over v views + linear SVM",
        description="Embed every rendered view of a store's objects with an image encoder (a run's, torchvision "
        "weights, or random), pool v views per object (max or mean) and fit a linear SVM (train -> test), per v.",
    )
    init = _add_store_args(p, image_only=True)
    init.add_argument("--image-weights", metavar="FILE", help="torchvision ResNet weights on disk (.pth/.safetensors)")
    p.add_argument("--backbone", choices=["resnet18", "resnet50"], help="the image encoder for --random-init / "
                   "--image-weights (default resnet18); with --checkpoint, checks the run's")
    _add_view_args(p, multiple=True)
    p.add_argument("--C", type=float, help="SVM C; default: chosen by CV on train")
    p.add_argument("--C-grid", type=float, nargs="+", help="candidate Cs for the CV (default 0.001 0.01 0.1 1 10)")
    p.add_argument("--folds", type=at_least(2), default=3)
    p.add_argument("--svm", choices=["svc", "linearsvc"], default="svc")
    p.set_defaults(func=_cmd_multiview)


def _cmd_multiview(args: argparse.Namespace) -> int:
    from pretext3d.eval.linear_svm import DEFAULT_C_GRID
    from pretext3d.eval.multiview import MultiviewConfig, run_multiview

    if args.like:
        raise ValueError("multiview builds a bare ResNet for --random-init: name it with --backbone, not --like")
    if args.bn_calibration and not args.random_init:
        raise ValueError("--bn-calibration goes with --random-init (trained weights keep their statistics)")
    cfg = MultiviewConfig(data=args.data, checkpoint=args.checkpoint, random_init=args.random_init,
                          image_weights=args.image_weights, backbone=args.backbone, view_counts=tuple(args.views),
                          pool=args.pool, image_size=args.image_size, num_points=None, seed=args.seed, C=args.C,
                          C_grid=tuple(args.C_grid or DEFAULT_C_GRID), folds=args.folds, svm=args.svm,
                          batch_size=args.batch_size, bn_calibration_objects=args.bn_calibration or 256,
                          device=args.device, num_workers=args.workers, cache_dir=args.cache_dir,
                          use_cache=not args.no_cache, progress=not args.quiet)
    return _run_protocol(args, run_multiview, cfg, format_multiview)


def format_multiview(report: dict) -> str:
    lines = [f"multiview  {report['dataset']} ({report['train_size']} train / {report['test_size']} test, "
             f"{report['num_classes']} classes, {report['store_views']} views per object)",
             f"  weights         {report['weights']}",
             f"  images          {report['image_size']} px, {report['feature_dim']}-d features, {report['pool']}-pooled",
             f"  classifier      {report['classifier']}"]
    if report["bn_calibration"]:
        lines.append(f"  BN statistics   {report['bn_calibration']}")
    if report["view_counts_skipped"]:
        lines.append(f"  skipped         view counts {report['view_counts_skipped']} (the store has {report['store_views']})")
    for res in report["results"]:
        lines.append(f"  {res['views']:3d} view(s)     {100 * res['accuracy']:.2f}%  (class mean "
                     f"{100 * res['class_mean_accuracy']:.2f}%, C={res['C']:g})")
    return "\n".join(lines)


def _add_pretext(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretext", help="pretext metrics: 'same object' accuracy on balanced pairs, positive / negative pair distances",
        description="On balanced pairs of test objects (10x the test split, half positive): cross-modal (view, cloud) "
        "accuracy of the method's pair classifier (CMCV) and distances in its shared space (CrossPoint, Pic@Point, "
        "MIMS); cross-view (view, other view) distances of the image encoder. Distance thresholds are fitted on "
        "training pairs only.",
    )
    _add_store_args(p, image_only=False)
    p.add_argument("--backbone", help="checks the run's point backbone")
    p.add_argument("--image-size", type=at_least(8), help="side the views are fed at (default: the run's training size)")
    p.add_argument("--pairs-factor", type=at_least(1), default=10, help="pairs per test object (default 10)")
    p.add_argument("--threshold-objects", type=at_least(2), default=1024,
                   help="training objects the distance thresholds are fitted on (default 1024)")
    p.set_defaults(func=_cmd_pretext)


def _cmd_pretext(args: argparse.Namespace) -> int:
    from pretext3d.eval.pretext_metrics import PretextConfig, run_pretext

    cfg = PretextConfig(**_store_kwargs(args), seed=args.seed, pairs_factor=args.pairs_factor,
                        threshold_objects=args.threshold_objects)
    return _run_protocol(args, run_pretext, cfg, format_pretext)


def format_pretext(report: dict) -> str:
    lines = [f"pretext  {report['dataset']} ({report['test_size']} test objects); {report['method']}: {report['weights']}",
             f"  pairs           {report['pairs']['count']} ({report['pairs']['positive']} positive); thresholds "
             f"{report['threshold_fit']}"]
    if report["bn_calibration"]:
        lines.append(f"  BN statistics   {report['bn_calibration']}")
    for name, res in report["results"].items():
        line = f"  {name:23s} accuracy {100 * res['accuracy']:6.2f}%"
        if "positive_distance" in res:
            pos, neg = res["positive_distance"], res["negative_distance"]
            line += f"   distance positive {pos['mean']:.3f} +- {pos['std']:.3f}, negative {neg['mean']:.3f} +- {neg['std']:.3f}"
        lines.append(line)
    return "\n".join(lines)


# --- semantic segmentation ---------------------------------------------------------------------------


def add_semseg_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of ``pretext3d evaluate semseg`` (names and meanings as ``finetune``'s where
    they overlap)."""
    p.add_argument("--data", required=True, help="an S3DIS folder: Stanford3dDataset_v1.2_Aligned_Version "
                   "(Area_N/<room>/Annotations/<class>_<k>.txt) or the npy export (Area_N_<room>.npy)")
    p.add_argument("--test-area", type=int, default=5, help="the area tested (default 5); the others train")
    _add_trained_weights(p)
    p.add_argument("--k", type=at_least(1), help="with --random-init: DGCNN neighbours")
    p.add_argument("--features", choices=["xyz", "xyzrgb", "all"],
                   help="input channels per point: xyz (block-centred x, y and z), xyzrgb (+ colour), all (+ x, y, z "
                   "over the room's extent: PointNet's 9); default: what the backbone takes (a checkpoint's in_channels; "
                   "xyz for --random-init)")
    p.add_argument("--block-size", type=float, default=1.0, help="block side in metres, x and y (default 1)")
    p.add_argument("--stride", type=float, help="step between validation / test blocks (default: half the block size)")
    p.add_argument("--points", type=at_least(1), default=4096, help="points per block (default 4096)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the training rooms held out whole for model selection (default 0.1, at least one room)")
    _add_training(p, "blocks", "label fractions: shares of the training rooms, e.g. 0.1 1 or 10%% 100%%")


def semseg_config(args: argparse.Namespace) -> SemsegConfig:
    """The SemsegConfig of parsed ``add_semseg_arguments`` options (resolving --like)."""
    from pretext3d.eval.semseg import SemsegConfig

    backbone, random_config = _like_architecture(args)
    if args.random_init and not backbone:
        raise ValueError("--random-init needs --backbone (or --like CHECKPOINT)")
    overrides = {key: value for key, value in (("emb_dims", args.emb_dims), ("k", args.k)) if value}
    if overrides and not args.random_init:
        raise ValueError("--emb-dims and --k go with --random-init (a checkpoint fixes its architecture)")
    return SemsegConfig(data=args.data, test_area=args.test_area, backbone=backbone, checkpoint=args.checkpoint,
                        random_init=args.random_init, random_config={**(random_config or {}), **overrides},
                        features=args.features, block_size=args.block_size, stride=args.stride, num_points=args.points,
                        val_fraction=args.val_fraction, fractions=args.fractions, modes=args.modes, epochs=args.epochs,
                        min_steps=args.min_steps, batch_size=args.batch_size, lr=args.lr,
                        weight_decay=args.weight_decay, optimizer=args.optimizer, validations=args.validations,
                        seed=args.seed, device=args.device, out=args.out, progress=not args.quiet)


def _add_semseg(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "semseg", help="semantic segmentation on S3DIS: train on blocks of the other areas, test one area by voting",
        description="Fine-tune a segmentation head (frozen or trainable backbone) on blocks of the training areas; "
        "select on whole held-out training rooms; tile every test room with overlapping blocks, sum each point's "
        "class scores over its blocks and score all points (overall accuracy, mean class accuracy, mIoU).",
    )
    add_semseg_arguments(p)
    p.set_defaults(func=_cmd_semseg)


def _cmd_semseg(args: argparse.Namespace) -> int:
    from pretext3d.eval.semseg import format_semseg, run_semseg

    return _run_protocol(args, run_semseg, semseg_config(args), format_semseg)
