"""``pretext3d evaluate PROTOCOL``: each protocol's command is its option groups (defined once in
``cli_options``), its own options, and a call of the protocol module, which does the work and
formats its report."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Callable

from pretext3d.cli_options import (
    add_architecture_arguments, add_feature_arguments, add_selection_arguments, add_store_arguments,
    add_training_arguments, add_view_arguments, add_weights_arguments, at_least, feature_options, log_for,
    selection_options, store_options, training_options, weights_options,
)

if TYPE_CHECKING:  # the protocols are imported when a command runs (a fast --help)
    from pretext3d.eval.semseg import SemsegConfig

__all__ = ["add_evaluate", "add_semseg_arguments", "semseg_config"]


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


def _run_protocol(args: argparse.Namespace, run: Callable[..., dict], config: Any, fmt: Callable[[dict], str]) -> int:
    from pretext3d.utils.io import atomic_write_json, check_writable

    if args.json:
        check_writable(args.json)  # before minutes of work, not after
    report = run(config, log=log_for(args))
    print(fmt(report))
    if args.json:
        atomic_write_json(args.json, report)
    return 0


def _add_preset_argument(p: argparse.ArgumentParser, protocol: str) -> None:
    from pretext3d.eval.presets import PRESETS, presets_for  # torch-free

    sources = "; ".join(f"{name}: {PRESETS[(protocol, name)].source}" for name in presets_for(protocol))
    p.add_argument("--preset", choices=presets_for(protocol),
                   help="run the published code's protocol instead of the strict default, except that nothing is "
                   f"selected on the test split ({sources}); the report lists its settings")


def _add_svm_arguments(p: argparse.ArgumentParser, grid: str, on: str = "train") -> None:
    p.add_argument("--C", type=float, help=f"SVM C; default: chosen by CV on {on}")
    p.add_argument("--C-grid", type=float, nargs="+", help=f"candidate Cs for the CV (default {grid})")
    p.add_argument("--folds", type=at_least(2), default=3, help=f"CV folds on {on} for choosing C (default 3)")


# --- linear SVM -------------------------------------------------------------------------------


def _add_linear_svm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "linear-svm",
        help="linear SVM on frozen global features (ModelNet40/10 protocol)",
        description="Extract frozen global features of the train and test splits and fit a linear SVM. "
        "C is given (--C) or chosen by cross-validation on the train split only; the test split is scored once.",
    )
    add_feature_arguments(p)
    _add_svm_arguments(p, "0.001 0.01 0.1 1 10")
    p.add_argument("--svm", choices=["svc", "linearsvc"], default="svc", help="sklearn SVC(kernel='linear') (published) or LinearSVC")
    p.add_argument("--standardize", action="store_true", help="standardise features before the SVM (not the published protocol)")
    _add_preset_argument(p, "linear-svm")
    _add_store_modalities(p, "each modality of a prepared store and their concatenation (MIMS: mesh, image, "
                             "point and fused features)",
                          "embed these modalities of a store with the run's encoders: an SVM on each, and on "
                          "every combination concatenated")
    p.set_defaults(func=_cmd_linear_svm)


def _add_store_modalities(p: argparse.ArgumentParser, title: str, help_text: str) -> argparse._ArgumentGroup:
    """--modalities (and the view options) of a protocol that also reads a store's modalities."""
    store = p.add_argument_group(f"{title} (--data STORE, --checkpoint RUN or --random-init --like RUN)")
    store.add_argument("--modalities", nargs="+", choices=["points", "image", "mesh"], help=help_text)
    add_view_arguments(store, multiple=False)
    return store


def _refuse_point_options(args: argparse.Namespace, extra: dict[str, bool] | None = None) -> None:
    """With --modalities, the options of the point-dataset form are errors, not ignored."""
    point_only = {"--seeds": len(args.seeds) > 1, "--subsample": args.subsample != "first",
                  "--subset": args.subset is not None, "--k": args.k != 20, "--emb-dims": args.emb_dims != 1024,
                  **(extra or {})}
    given = [name for name, used in point_only.items() if used]
    if given:
        raise ValueError(f"{', '.join(given)}: options of the point-dataset form, not of --modalities "
                         "(one seed, test gallery, the store's stored points)")


def _refuse_store_options(args: argparse.Namespace) -> None:
    given = [name for name, value in (("--views", args.views), ("--image-size", args.image_size),
                                      ("--space", getattr(args, "space", None)), ("--pool", args.pool)) if value]
    if given:
        raise ValueError(f"{', '.join(given)} go with --modalities (a store's modalities)")


def _cmd_linear_svm(args: argparse.Namespace) -> int:
    from pretext3d.eval.linear_svm import DEFAULT_C_GRID

    C_grid = tuple(args.C_grid or DEFAULT_C_GRID)
    if args.modalities:
        from pretext3d.eval.modality_svm import ModalitySVMConfig, format_modality_svm, run_modality_svm

        _refuse_point_options(args, {"--standardize": args.standardize, "--preset": args.preset is not None})
        cfg = ModalitySVMConfig(**store_options(args, seed=args.seeds[0]), modalities=tuple(args.modalities),
                                views=args.views, pool=args.pool or "mean", C=args.C, C_grid=C_grid, folds=args.folds,
                                svm=args.svm)
        return _run_protocol(args, run_modality_svm, cfg, format_modality_svm)
    from pretext3d.eval.protocols import LinearSVMConfig, format_linear_svm, run_linear_svm

    _refuse_store_options(args)
    from pretext3d.eval.presets import apply_preset

    cfg = LinearSVMConfig(**feature_options(args), C=args.C, C_grid=C_grid, folds=args.folds, svm=args.svm,
                          standardize=args.standardize)
    return _run_protocol(args, run_linear_svm, apply_preset(cfg, "linear-svm", args.preset), format_linear_svm)


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
        "Mean +- std over the episodes (--runs per seed). --preset crosspoint: the released script's protocol.",
    )
    add_feature_arguments(p)
    p.add_argument("--settings", type=_way_shot, nargs="+", default=[(5, 10), (5, 20), (10, 10), (10, 20)],
                   metavar="WAYSxSHOTS", help="N-way K-shot settings (default 5x10 5x20 10x10 10x20)")
    p.add_argument("--queries", type=at_least(1), default=20, help="query objects per class (default 20)")
    p.add_argument("--query-split", choices=["test", "train"], default="test",
                   help="where queries come from: the test split (default), or the train objects not in the support "
                   "(CrossPoint's released script)")
    p.add_argument("--runs", type=at_least(1), default=10, help="episodes per setting and seed (default 10)")
    _add_svm_arguments(p, "0.01 0.1 1", on="each episode's support set (at most K folds)")
    p.add_argument("--standardize", action="store_true", help="standardise features with the support set's statistics")
    _add_preset_argument(p, "fewshot")
    p.set_defaults(func=_cmd_fewshot)


def _cmd_fewshot(args: argparse.Namespace) -> int:
    from pretext3d.eval.fewshot import FEWSHOT_C_GRID, FewShotConfig, format_fewshot, run_fewshot
    from pretext3d.eval.presets import apply_preset

    cfg = FewShotConfig(**feature_options(args), settings=args.settings, queries=args.queries, runs=args.runs,
                        C=args.C, C_grid=tuple(args.C_grid or FEWSHOT_C_GRID), folds=args.folds,
                        query_split=args.query_split, standardize=args.standardize)
    return _run_protocol(args, run_fewshot, apply_preset(cfg, "fewshot", args.preset), format_fewshot)


# --- retrieval --------------------------------------------------------------------------------


def _add_retrieval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retrieval", help="shape retrieval on frozen features (top-k accuracy, mAP); within and across a store's modalities",
        description="Every test object queries the gallery (the other test objects, or the train split); items of "
        "the query's class are relevant. The query is never in its own ranking. With --modalities, retrieval among "
        "a prepared store's points, views and meshes embedded by a run's method.",
    )
    add_feature_arguments(p)
    p.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine", help="feature distance (default cosine)")
    p.add_argument("--top-k", type=at_least(1), nargs="+", default=[1, 5, 10], help="k of top-k accuracy and precision@k")
    p.add_argument("--gallery", choices=["test", "train"], default="test",
                   help="test: the other test objects (default); train: the train split")
    store = _add_store_modalities(p, "within and across the modalities of a prepared store",
                                  "retrieve among these modalities of a store: every within-modal pair, and in the "
                                  "shared space every ordered cross-modal pair")
    store.add_argument("--space", choices=["shared", "encoder"],
                       help="shared: the method's heads into the space its loss aligns (default); encoder: the encoders' "
                       "outputs (within-modal pairs only)")
    p.set_defaults(func=_cmd_retrieval)


def _cmd_retrieval(args: argparse.Namespace) -> int:
    from pretext3d.eval.retrieval import (RetrievalConfig, StoreRetrievalConfig, format_retrieval, format_store_retrieval,
                                          run_retrieval, run_store_retrieval)

    if args.modalities:
        _refuse_point_options(args, {"--gallery": args.gallery != "test"})
        cfg = StoreRetrievalConfig(**store_options(args, seed=args.seeds[0]), modalities=tuple(args.modalities),
                                   space=args.space or "shared", views=args.views, pool=args.pool or "max",
                                   metric=args.metric, ks=tuple(args.top_k))
        return _run_protocol(args, run_store_retrieval, cfg, format_store_retrieval)
    _refuse_store_options(args)
    cfg = RetrievalConfig(**feature_options(args), metric=args.metric, ks=tuple(args.top_k), gallery=args.gallery)
    return _run_protocol(args, run_retrieval, cfg, format_retrieval)


# --- fine-tuning ------------------------------------------------------------------------------


def _add_finetune(sub: argparse._SubParsersAction, name: str, task: str) -> None:
    what = "shape classification" if task == "classification" else "part segmentation (class and instance mIoU)"
    p = sub.add_parser(
        name, help=f"supervised {what} from the backbone, per label fraction, frozen or trainable",
        description=f"Fine-tune for {what}. Model selection on a validation split only (classification: a stratified "
        "hold-out of train; part segmentation: the dataset's val split); the test split is scored once with the "
        "weights that did best on validation.",
    )
    p.add_argument("--data", required=True, help="classification: any supported dataset or a prepared store; part "
                   "segmentation: a ShapeNetPart folder (shapenetcore_partanno_segmentation_benchmark_v0_normal) or "
                   "'builtin[:seed=,train=,test=]'")
    add_weights_arguments(p, "finetune")
    if task == "classification":
        add_selection_arguments(p)
    add_architecture_arguments(p, k=False, defaults=False)
    add_training_arguments(p, "objects", "label fractions, e.g. 0.02 0.2 1 or 2%% 20%% 100%%")
    p.add_argument("--label-smoothing", type=float, default=0.2 if task == "classification" else 0.0,
                   help="classification cross-entropy smoothing (default 0.2, as DGCNN)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="classification: share of train held out for validation")
    p.add_argument("--points", type=at_least(1), default=1024 if task == "classification" else 2048)
    p.add_argument("--selection", choices=["val", "last"], default="val",
                   help="val: the weights that do best on validation (default); last: the final weights")
    if task == "partseg":
        p.add_argument("--train-splits", choices=["train", "train+val"], default="train",
                       help="train on the train split (default) or on train+val (CrossPoint; needs --selection last)")
        p.add_argument("--head", choices=["local", "stages"], default="local",
                       help="a global backbone's head reads [local ; global] per point (default) or [every EdgeConv "
                       "block's output ; global] (Jing et al., dgcnn)")
        _add_preset_argument(p, "partseg")
    p.set_defaults(func=_cmd_finetune, task=task)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from pretext3d.eval.finetune import FinetuneConfig, format_finetune, run_finetune
    from pretext3d.eval.presets import apply_preset

    selection = selection_options(args) if args.task == "classification" else {}
    cfg = FinetuneConfig(**weights_options(args), **training_options(args), **selection, task=args.task, data=args.data,
                         label_smoothing=args.label_smoothing, val_fraction=args.val_fraction, num_points=args.points,
                         selection=args.selection, train_splits=getattr(args, "train_splits", "train"),
                         head=getattr(args, "head", "local"))
    protocol = "partseg" if args.task == "partseg" else "finetune-cls"
    return _run_protocol(args, run_finetune, apply_preset(cfg, protocol, getattr(args, "preset", None)), format_finetune)


# --- store protocols: multi-view recognition, pretext metrics ---------------------------------


def _add_multiview(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "multiview", help="multi-view 2D recognition: image features pooled over v views + linear SVM",
        description="Embed every rendered view of a store's objects with an image encoder (a run's, torchvision "
        "weights, or random), pool v views per object (max or mean) and fit a linear SVM (train -> test), per v.",
    )
    add_store_arguments(p, "image", points=False)
    add_view_arguments(p, multiple=True)
    _add_svm_arguments(p, "0.001 0.01 0.1 1 10")
    p.add_argument("--svm", choices=["svc", "linearsvc"], default="svc")
    p.set_defaults(func=_cmd_multiview)


def _cmd_multiview(args: argparse.Namespace) -> int:
    from pretext3d.eval.linear_svm import DEFAULT_C_GRID
    from pretext3d.eval.multiview import MultiviewConfig, format_multiview, run_multiview

    cfg = MultiviewConfig(**store_options(args), view_counts=tuple(args.views), pool=args.pool, C=args.C,
                          C_grid=tuple(args.C_grid or DEFAULT_C_GRID), folds=args.folds, svm=args.svm)
    return _run_protocol(args, run_multiview, cfg, format_multiview)


def _add_pretext(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretext", help="pretext metrics: 'same object' accuracy on balanced pairs, positive / negative pair distances",
        description="On balanced pairs of test objects (10x the test split, half positive): cross-modal (view, cloud) "
        "accuracy of the method's pair classifier (CMCV) and distances in its shared space (CrossPoint, Pic@Point, "
        "MIMS); cross-view (view, other view) distances of the image encoder. Distance thresholds are fitted on "
        "training pairs only.",
    )
    add_store_arguments(p, "run", points=True, selection=False)  # its pairs are drawn from whole splits
    p.add_argument("--image-size", type=at_least(8), help="side the views are fed at (default: the run's training size)")
    p.add_argument("--pairs-factor", type=at_least(1), default=10, help="pairs per test object (default 10)")
    p.add_argument("--raw-distances", action="store_true",
                   help="cross-view distances of the image features as they are (Jing et al. Table 2), not L2-normalised")
    p.add_argument("--threshold-objects", type=at_least(2), default=1024,
                   help="training objects the distance thresholds are fitted on (default 1024)")
    p.set_defaults(func=_cmd_pretext)


def _cmd_pretext(args: argparse.Namespace) -> int:
    from pretext3d.eval.pretext_metrics import PretextConfig, format_pretext, run_pretext

    cfg = PretextConfig(**store_options(args), pairs_factor=args.pairs_factor, threshold_objects=args.threshold_objects,
                        raw_distances=args.raw_distances)
    return _run_protocol(args, run_pretext, cfg, format_pretext)


# --- semantic segmentation ---------------------------------------------------------------------------


def add_semseg_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of ``pretext3d evaluate semseg`` (names and meanings as ``finetune``'s where
    they overlap)."""
    p.add_argument("--data", required=True, help="an S3DIS folder: Stanford3dDataset_v1.2_Aligned_Version "
                   "(Area_N/<room>/Annotations/<class>_<k>.txt) or the npy export (Area_N_<room>.npy)")
    p.add_argument("--test-area", type=int, default=5, help="the area tested (default 5); the others train")
    add_weights_arguments(p, "finetune")
    add_architecture_arguments(p, k=True, defaults=False)
    p.add_argument("--features", choices=["xyz", "xyzrgb", "all"],
                   help="input channels per point: xyz (block-centred x, y and z), xyzrgb (+ colour), all (+ x, y, z "
                   "over the room's extent: PointNet's 9); default: what the backbone takes (a checkpoint's in_channels; "
                   "xyz for --random-init)")
    p.add_argument("--block-size", type=float, default=1.0, help="block side in metres, x and y (default 1)")
    p.add_argument("--stride", type=float, help="step between validation / test blocks (default: half the block size)")
    p.add_argument("--points", type=at_least(1), default=4096, help="points per block (default 4096)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the training rooms held out whole for model selection (default 0.1, at least one room)")
    add_training_arguments(p, "blocks", "label fractions: shares of the training rooms, e.g. 0.1 1 or 10%% 100%%")
    p.add_argument("--train-areas", type=int, nargs="+",
                   help="the areas trained on (default: every area but the test area; ParAE: a single one)")
    _add_preset_argument(p, "semseg")


def semseg_config(args: argparse.Namespace) -> SemsegConfig:
    """The SemsegConfig of parsed ``add_semseg_arguments`` options (with its --preset applied)."""
    from pretext3d.eval.presets import apply_preset
    from pretext3d.eval.semseg import SemsegConfig

    cfg = SemsegConfig(**weights_options(args), **training_options(args), data=args.data, test_area=args.test_area,
                       features=args.features, block_size=args.block_size, stride=args.stride, num_points=args.points,
                       val_fraction=args.val_fraction, train_areas=args.train_areas)
    return apply_preset(cfg, "semseg", args.preset)


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
