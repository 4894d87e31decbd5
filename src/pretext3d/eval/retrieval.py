"""Shape retrieval with frozen global features: rank a gallery by feature distance per query.

Within-modal point -> point retrieval: every TEST object is a query. The gallery is the test
split without the query itself (``gallery="test"``, the usual setting), or the whole train split
(``gallery="train"``). A gallery item is relevant when it has the query's class.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pretext3d.eval.metrics import RetrievalScores, retrieval_scores
from pretext3d.data.store import read_store_settings
from pretext3d.eval.modalities import (
    StoreProtocolConfig, calibrate_encoders, calibration_note, check_pool, describe_encoders, embed_store, image_size_of,
    load_run_encoders, pool_views, view_subset,
)
from pretext3d.eval.protocols import (
    FeatureConfig, config_record, feature_report, format_feature_header, format_skipped, iter_split_features, mean_std,
    prepare_feature_config, skipped_items,
)
from pretext3d.utils.device import resolve_device

__all__ = ["RetrievalConfig", "run_retrieval", "within_split_scores", "scores_record", "StoreRetrievalConfig",
           "run_store_retrieval", "modality_pairs", "format_retrieval", "format_store_retrieval"]


@dataclass
class RetrievalConfig(FeatureConfig):
    metric: str = "cosine"
    ks: tuple[int, ...] = (1, 5, 10)
    gallery: str = "test"


# how queries are counted, stated in every report and printed
QUERIES_RULE = ("every test object with at least one relevant item in its gallery; a query without one (the only "
                "object of its class there) can be neither right nor wrong and is left out of every metric alike "
                "(queries_without_relevant counts them)")


def within_split_scores(features: np.ndarray, labels: np.ndarray, metric: str, ks) -> RetrievalScores:
    """Every item queries all the others of the same set. features: (S, D), labels: (S,)."""
    return retrieval_scores(features, labels, features, labels, metric, ks, exclude=np.eye(len(features), dtype=bool))


def scores_record(scores: RetrievalScores) -> dict[str, Any]:
    return {"top_k": {str(k): v for k, v in scores.top_k.items()},
            "precision_at_k": {str(k): v for k, v in scores.precision_at_k.items()},
            "mAP": scores.mAP, "queries": scores.queries, "queries_without_relevant": scores.no_relevant}


def run_retrieval(cfg: RetrievalConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Point -> point retrieval on the test split for every seed; mean +- std over seeds."""
    if cfg.gallery not in ("test", "train"):
        raise ValueError(f"gallery must be 'test' or 'train', got {cfg.gallery!r}")
    cfg = prepare_feature_config(cfg)
    extracted, per_seed = [], []
    for sf in iter_split_features(cfg):
        extracted.append(sf)
        test = sf.test
        if cfg.gallery == "test":
            scores = within_split_scores(test.features, test.labels, cfg.metric, cfg.ks)
        else:
            scores = retrieval_scores(test.features, test.labels, sf.train.features, sf.train.labels, cfg.metric, cfg.ks)
        per_seed.append({"seed": sf.seed, **scores_record(scores)})
        log(f"seed {sf.seed}: mAP {100 * scores.mAP:.2f}%, " +
            ", ".join(f"top-{k} {100 * v:.2f}%" for k, v in scores.top_k.items()))
    ks = sorted(set(cfg.ks))
    summary: dict[str, Any] = {"mAP": mean_std([r["mAP"] for r in per_seed])}
    for k in ks:
        summary[f"top_{k}"] = mean_std([r["top_k"][str(k)] for r in per_seed])
        summary[f"precision_at_{k}"] = mean_std([r["precision_at_k"][str(k)] for r in per_seed])
    return {
        **feature_report(cfg, "retrieval", extracted),
        "modality": "points -> points",
        "queries": QUERIES_RULE,
        "gallery": "the test split without the query itself (the query is excluded from its own ranking)"
                   if cfg.gallery == "test" else "the whole train split",
        "metric": cfg.metric + (" distance 1 - cos on the raw features" if cfg.metric == "cosine" else " distance"),
        "relevance": "same class as the query",
        "definitions": {"top_k": "fraction of queries with at least one relevant item among the k nearest",
                        "precision_at_k": "mean fraction of relevant items among the k nearest",
                        "mAP": "mean over queries of the average precision of the full ranking (ties: lower index first)"},
        "results": {name: {"mean": m, "std": s} for name, (m, s) in summary.items()},
        "per_seed": per_seed,
        "skipped": skipped_items(extracted),
        "config": config_record(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


# --- within and across modalities of a prepared store -----------------------------------------


@dataclass
class StoreRetrievalConfig(StoreProtocolConfig):
    """Retrieval among the modalities of a prepared store with a pretraining run's encoders.
    space: shared (the method's aligned space: cross-modal pairs too) or encoder (within-modal
    pairs only); views: image views pooled per object (default all the store has)."""

    modalities: tuple[str, ...] = ("points", "image")
    space: str = "shared"
    views: int | None = None
    pool: str = "max"
    metric: str = "cosine"
    ks: tuple[int, ...] = (1, 5, 10)


def modality_pairs(modalities: tuple[str, ...], cross: bool) -> list[tuple[str, str]]:
    """(query, gallery) modality pairs: every within-modal pair, and every ordered cross pair if ``cross``."""
    return [(q, g) for q in modalities for g in modalities if q == g or cross]


def run_store_retrieval(cfg: StoreRetrievalConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Test-split retrieval for every (query, gallery) modality pair. Within a modality the query
    is excluded from its own ranking; across modalities the gallery holds every test object in
    the other modality, the query object's own counterpart included (it counts as relevant, as
    any object of its class). Instance scores say how often that counterpart ranks in the top k."""
    check_pool(cfg.pool)
    encoders, recipe = load_run_encoders(cfg.method_run(), cfg.space, cfg.random_init, cfg.seed)
    settings, _ = read_store_settings(Path(cfg.data))
    views = view_subset(settings.views, cfg.views or settings.views, cfg.data)
    with_images = "image" in cfg.modalities
    image_size = image_size_of(recipe, cfg.data, cfg.image_size)
    device = resolve_device(cfg.device)
    calibrated = calibrate_encoders(encoders, cfg.data, cfg.modalities, cfg.num_points, image_size,
                                    cfg.bn_calibration_objects, cfg.batch_size, cfg.seed, device, cfg.num_workers,
                                    cfg.progress) if cfg.random_init else None
    test = embed_store(encoders, cfg.data, "test", cfg.modalities, cfg.num_points, image_size, cfg.batch_size, device,
                       cfg.num_workers, cfg.cache_dir, cfg.use_cache, cfg.progress, selection=cfg.data_selection())
    features = {m: pool_views(f, views, cfg.pool) if m == "image" else f for m, f in test.features.items()}
    labels, objects = test.labels, np.arange(len(test.labels))
    results: dict[str, Any] = {}
    for query, gallery in modality_pairs(tuple(cfg.modalities), cfg.space == "shared"):
        name = f"{query}->{gallery}"
        if query == gallery:
            results[name] = scores_record(within_split_scores(features[query], labels, cfg.metric, cfg.ks))
        else:
            results[name] = scores_record(retrieval_scores(features[query], labels, features[gallery], labels,
                                                           cfg.metric, cfg.ks))
            instance = retrieval_scores(features[query], objects, features[gallery], objects, cfg.metric, cfg.ks)
            results[name]["instance"] = {"top_k": {str(k): v for k, v in instance.top_k.items()},
                                         "mean_reciprocal_rank": instance.mAP}
        log(f"{name:14s} mAP {100 * results[name]['mAP']:.2f}%, " +
            ", ".join(f"top-{k} {100 * v:.2f}%" for k, v in results[name]["top_k"].items()))
    return {
        "protocol": "retrieval",
        "dataset": cfg.data,
        "data_selection": cfg.data_selection().describe(),
        "num_classes": len(test.classes),
        "test_size": len(labels),
        "weights": encoders.source,
        "bn_calibration": calibration_note(calibrated, encoders, cfg.modalities),
        "space": cfg.space + (": the method's heads into the space its loss aligns across modalities" if cfg.space == "shared"
                              else ": each modality's encoder output (within-modal pairs only)"),
        "encoders": describe_encoders(encoders, cfg.modalities),
        "feature_dims": {m: int(f.shape[-1]) for m, f in features.items()},
        "num_points": cfg.num_points,
        "image_size": image_size if with_images else None,
        "views": {"count": len(views), "indices": views.tolist(), "pool": cfg.pool,
                  "rule": "views floor(i * V / v), i < v, of the store's V; per-view features pooled"} if with_images else None,
        "queries": QUERIES_RULE,
        "gallery": {"within-modal": "the other test objects (the query is excluded from its own ranking)",
                    "cross-modal": "every test object in the other modality, the query's own counterpart included"},
        "metric": cfg.metric + (" distance 1 - cos on the raw features" if cfg.metric == "cosine" else " distance"),
        "relevance": "same class as the query; instance scores: the query object's own counterpart",
        "definitions": {"top_k": "fraction of queries with at least one relevant item among the k nearest",
                        "precision_at_k": "mean fraction of relevant items among the k nearest",
                        "mAP": "mean over queries of the average precision of the full ranking (ties: lower index first)",
                        "instance.mean_reciprocal_rank": "mean of 1 / rank of the query's own counterpart"},
        "results": results,
        "features_cached": test.cached,
        "device": str(device),
        "config": config_record(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def format_retrieval(report: dict) -> str:
    lines = format_feature_header(report, "retrieval")
    first = report["per_seed"][0]
    lines += [f"  queries         {first['queries']} scored{_left_out(first['queries_without_relevant'])}; "
              f"gallery: {report['gallery']}",
              f"  distance        {report['metric']}"]
    for name, res in report["results"].items():
        lines.append(f"  {name:15s} {100 * res['mean']:.2f}%" + (f" +- {100 * res['std']:.2f}" if len(report["seeds"]) > 1 else ""))
    return "\n".join(lines + format_skipped(report))


def _left_out(count: int) -> str:
    return (f", {count} without a relevant item in the gallery left out of every metric" if count else
            " (a query without a relevant item in the gallery would be left out of every metric)")


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
    left_out = {name: res["queries_without_relevant"] for name, res in report["results"].items()
                if res.get("queries_without_relevant")}
    lines.append("  queries         " + ("; ".join(f"{name}: {n} without a relevant item left out of every metric"
                                                   for name, n in left_out.items())
                                         if left_out else "every test object (each has a relevant item)"))
    return "\n".join(lines)
