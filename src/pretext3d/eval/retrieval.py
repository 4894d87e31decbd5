"""Shape retrieval with frozen global features: rank a gallery by feature distance per query.

Within-modal point -> point retrieval: every TEST object is a query. The gallery is the test
split without the query itself (``gallery="test"``, the usual setting), or the whole train split
(``gallery="train"``). A gallery item is relevant when it has the query's class.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pretext3d.eval.metrics import RetrievalScores, retrieval_scores
from pretext3d.eval.protocols import (
    FeatureConfig, config_record, feature_report, iter_split_features, mean_std, prepare_feature_config, skipped_items,
)

__all__ = ["RetrievalConfig", "run_retrieval", "within_split_scores", "scores_record"]


@dataclass
class RetrievalConfig(FeatureConfig):
    metric: str = "cosine"
    ks: tuple[int, ...] = (1, 5, 10)
    gallery: str = "test"


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
        "queries": "every test object",
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
