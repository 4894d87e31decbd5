"""Metrics of the evaluation protocols: retrieval (top-k, precision@k, mAP) and segmentation
(per-shape part IoU with class / instance means, semantic IoU). Pure numpy, known-answer tested."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np

__all__ = [
    "pairwise_distances",
    "RetrievalScores",
    "retrieval_scores",
    "ranking_scores",
    "shape_part_iou",
    "part_segmentation_miou",
    "semantic_segmentation_scores",
    "confusion_matrix",
    "scores_from_confusion",
]

Metric = Literal["cosine", "euclidean"]


def pairwise_distances(query: np.ndarray, gallery: np.ndarray, metric: Metric = "cosine") -> np.ndarray:
    """query: (Q, D), gallery: (G, D) -> (Q, G) distances.

    cosine: 1 - <q, g> / (|q| |g|) (a zero vector is left at zero length: distance 1 to all);
    euclidean: |q - g|_2.
    """
    q = np.asarray(query, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    if metric == "cosine":
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        return 1.0 - qn @ gn.T
    if metric == "euclidean":
        squared = (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * q @ g.T
        return np.sqrt(np.maximum(squared, 0.0))
    raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")


@dataclass
class RetrievalScores:
    """top_k[k]: fraction of queries with at least one same-class item among their k nearest;
    precision_at_k[k]: mean fraction of same-class items among the k nearest; mAP: mean over
    queries of the average precision of the whole ranking; queries: queries scored.

    A query with no same-class item in its gallery can be neither right nor wrong: it is left
    out of every metric alike (top-k, precision and mAP) and counted in ``no_relevant``."""

    top_k: dict[int, float]
    precision_at_k: dict[int, float]
    mAP: float
    queries: int
    no_relevant: int
    per_query_ap: np.ndarray


def retrieval_scores(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    metric: Metric = "cosine",
    ks: Sequence[int] = (1, 5, 10),
    exclude: np.ndarray | None = None,
    chunk: int = 1024,
) -> RetrievalScores:
    """Rank the gallery for every query by distance (ties: lower gallery index first) and score.

    query: (Q, D), query_labels: (Q,), gallery: (G, D), gallery_labels: (G,);  exclude: (Q, G)
    bool, True where a gallery item must not appear in that query's ranking (e.g. the query
    itself when query and gallery are the same set).

    AP of a query = (1 / R) sum_{i: rank i relevant} (relevant items in ranks 1..i) / i, with R
    the number of relevant (same-class) items in its ranking.
    """
    if len(query) == 0 or len(gallery) == 0:
        raise ValueError("retrieval needs non-empty query and gallery sets")
    ks = sorted(set(int(k) for k in ks))
    hits = {k: 0.0 for k in ks}
    precision = {k: 0.0 for k in ks}
    aps = np.full(len(query), np.nan)
    for start in range(0, len(query), chunk):
        stop = min(start + chunk, len(query))
        dist = pairwise_distances(query[start:stop], gallery, metric)
        relevant = query_labels[start:stop, None] == gallery_labels[None, :]
        valid = np.ones_like(relevant) if exclude is None else ~exclude[start:stop]
        dist = np.where(valid, dist, np.inf)  # excluded items sort last and are never relevant
        order = np.argsort(dist, axis=1, kind="stable")
        ranked = np.take_along_axis(relevant & valid, order, axis=1)
        aps[start:stop] = _add_ranking_scores(ranked, valid.sum(1), ks, hits, precision)
    return _retrieval_result(hits, precision, aps, ks)


def ranking_scores(ranked: np.ndarray, counts: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> RetrievalScores:
    """``retrieval_scores`` of rankings made elsewhere (a search index): ranked (Q, G) bool, True
    where the item at that rank is relevant; counts (Q,): how many items each ranking holds
    (its first counts[q] columns)."""
    ks = sorted(set(int(k) for k in ks))
    hits = {k: 0.0 for k in ks}
    precision = {k: 0.0 for k in ks}
    aps = _add_ranking_scores(np.asarray(ranked, bool), np.asarray(counts), ks, hits, precision)
    return _retrieval_result(hits, precision, aps, ks)


def _add_ranking_scores(ranked: np.ndarray, counts: np.ndarray, ks: list[int], hits: dict[int, float],
                        precision: dict[int, float]) -> np.ndarray:
    """Add the top-k hits and precision sums of rankings ranked (Q, G) to ``hits``/``precision``;
    return their average precisions (Q,) (NaN for a ranking without a relevant item)."""
    cumulative = np.cumsum(ranked, axis=1)
    total = ranked.sum(1)
    answerable = total > 0
    for k in ks:
        top = ranked[answerable, :k]
        hits[k] += float(top.any(1).sum())
        precision[k] += float((top.sum(1) / np.minimum(k, counts[answerable])).sum())
    ranks = np.arange(1, ranked.shape[1] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (cumulative / ranks * ranked).sum(1) / total, np.nan)


def _retrieval_result(hits: dict[int, float], precision: dict[int, float], aps: np.ndarray,
                      ks: list[int]) -> RetrievalScores:
    scored = ~np.isnan(aps)
    n = int(scored.sum())
    return RetrievalScores(
        top_k={k: hits[k] / n if n else float("nan") for k in ks},
        precision_at_k={k: precision[k] / n if n else float("nan") for k in ks},
        mAP=float(aps[scored].mean()) if n else float("nan"),
        queries=n,
        no_relevant=int((~scored).sum()),
        per_query_ap=aps,
    )


def shape_part_iou(pred: np.ndarray, truth: np.ndarray, parts: Sequence[int]) -> float:
    """Mean IoU over the parts of one shape's category. pred, truth: (N,) part ids.

    A part absent from both prediction and truth counts IoU 1 (the ShapeNetPart convention).
    """
    ious = []
    for part in parts:
        p, t = pred == part, truth == part
        union = np.logical_or(p, t).sum()
        ious.append(1.0 if union == 0 else float(np.logical_and(p, t).sum() / union))
    return float(np.mean(ious))


def part_segmentation_miou(
    preds: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    categories: Sequence[int],
    category_parts: Mapping[int, Sequence[int]],
) -> dict:
    """Instance mIoU (mean of per-shape IoUs) and class mIoU (mean over categories of the mean
    per-shape IoU within that category), with per-category values keyed by category id."""
    if not len(preds):
        raise ValueError("no shapes to score")
    per_shape = np.array([shape_part_iou(np.asarray(p), np.asarray(t), category_parts[int(c)])
                          for p, t, c in zip(preds, truths, categories)])
    categories = np.asarray(categories)
    per_category = {int(c): float(per_shape[categories == c].mean()) for c in np.unique(categories)}
    return {
        "instance_miou": float(per_shape.mean()),
        "class_miou": float(np.mean(list(per_category.values()))),
        "per_category": per_category,
        "shapes": int(len(per_shape)),
    }


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """pred, truth: (P,) class ids -> (K, K) int64 counts, rows = truth, columns = prediction.
    Confusion matrices of parts of a split add up to the split's."""
    pred = np.asarray(pred, dtype=np.int64).ravel()
    truth = np.asarray(truth, dtype=np.int64).ravel()
    return np.bincount(truth * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def semantic_segmentation_scores(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict:
    """Scene segmentation scores over all points. pred, truth: (P,) class ids
    (``scores_from_confusion`` of their ``confusion_matrix``)."""
    return scores_from_confusion(confusion_matrix(pred, truth, num_classes))


def scores_from_confusion(confusion: np.ndarray) -> dict:
    """Scores of a (K, K) confusion matrix summed over every point (rows = truth).

    IoU_c = TP_c / (TP_c + FP_c + FN_c); mIoU averages the classes present in truth or
    prediction; OA = correct / all; mAcc = mean over classes present in truth of
    TP_c / (TP_c + FN_c).
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(confusion).astype(np.float64)
    in_truth = confusion.sum(1)
    in_pred = confusion.sum(0)
    union = in_truth + in_pred - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    acc = np.where(in_truth > 0, tp / np.maximum(in_truth, 1), np.nan)
    return {
        "miou": float(np.nanmean(iou)),
        "overall_accuracy": float(tp.sum() / max(int(confusion.sum()), 1)),
        "mean_class_accuracy": float(np.nanmean(acc)),
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
        "confusion": confusion.tolist(),
    }
