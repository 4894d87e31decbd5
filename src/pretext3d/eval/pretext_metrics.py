"""How well a pretraining run solves its pretext on unseen objects (Jing et al.'s tables 1-2):
"same object" accuracy on balanced pairs and the distances of positive and negative pairs.

Pairs are drawn on the TEST split: ``pairs_factor`` x |test| pairs, half positive (the same
object), half negative (an other object, uniformly), seeded. Two kinds:

- cross-modal: (a rendered view of object a, the point cloud of object b). Judged by the
  method's pair classifier when it has one (CMCV's F_f: argmax of its two logits), and by the
  distance of L2-normalised features in the method's shared space when it has one (CrossPoint,
  Pic@Point, MIMS).
- cross-view: (view i of object a, view j != i of object b), the Euclidean distance of the
  L2-normalised image-encoder features (the space of CMCV's triplet loss).

A distance says "same object" when it is at most a threshold; the threshold maximising the
accuracy on pairs drawn the same way from (a seeded subset of) the TRAIN split is applied to
the test pairs, so nothing is fitted on test data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from pretext3d.data.store import read_store_settings
from pretext3d.eval.modalities import (
    StoreEmbeddings, StoreProtocolConfig, calibrate_encoders, calibration_note, embed_store, image_size_of,
    method_encoders, through_heads,
)
from pretext3d.eval.protocols import config_record
from pretext3d.runs import open_method
from pretext3d.utils.device import resolve_device

__all__ = ["PretextConfig", "Pairs", "balanced_pairs", "best_threshold", "pair_distances", "run_pretext",
           "format_pretext"]


@dataclass
class PretextConfig(StoreProtocolConfig):
    """pairs_factor: pairs per test object; threshold_objects: training objects the distance
    thresholds are fitted on; raw_distances: cross-view distances of the image features as they
    are (Jing et al. Table 2), not of L2-normalised ones."""

    pairs_factor: int = 10
    threshold_objects: int = 1024
    raw_distances: bool = False


@dataclass
class Pairs:
    """first, second: (P,) object rows; first_view, second_view: (P,) view indices (second_view
    differs from first_view on every pair); same: (P,) bool, first == second."""

    first: np.ndarray
    first_view: np.ndarray
    second: np.ndarray
    second_view: np.ndarray
    same: np.ndarray


def balanced_pairs(num_objects: int, num_views: int, count: int, rng: np.random.Generator) -> Pairs:
    """``count`` pairs, the first ceil(count / 2) positive, the rest negative (second object
    uniform over the others); views uniform, the second view always different from the first."""
    if num_objects < 2 or num_views < 2:
        raise ValueError(f"pairs need at least 2 objects and 2 views, got {num_objects} and {num_views}")
    positives = (count + 1) // 2
    first = rng.integers(0, num_objects, count)
    second = first.copy()
    negatives = rng.integers(1, num_objects, count - positives)  # an offset != 0: another object
    second[positives:] = (first[positives:] + negatives) % num_objects
    first_view = rng.integers(0, num_views, count)
    second_view = (first_view + rng.integers(1, num_views, count)) % num_views
    return Pairs(first, first_view, second, second_view, second == first)


def pair_distances(a: np.ndarray, b: np.ndarray, normalize: bool = True) -> np.ndarray:
    """a, b: (P, D) -> (P,) |a/|a| - b/|b||_2 (in [0, 2]); normalize=False: |a - b|_2."""
    if normalize:
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.linalg.norm(a - b, axis=1)


def best_threshold(distances: np.ndarray, same: np.ndarray) -> float:
    """The threshold t maximising the accuracy of "same object iff distance <= t" on these pairs
    (candidates: midpoints between consecutive distinct distances and the two ends; the smallest
    t among ties). O(P log P): after sorting, calling the first i pairs "same" gets
    (positives among them) + (negatives after them) right."""
    order = np.argsort(distances, kind="stable")
    values, truth = distances[order], same[order].astype(np.int64)
    positives_before = np.concatenate([[0], np.cumsum(truth)])  # among the first i, i = 0..P
    negatives_after = (len(truth) - truth.sum()) - (np.arange(len(truth) + 1) - positives_before)
    correct = positives_before + negatives_after
    # a cut can only fall between distinct values: i = 0, the ends of each run of equal values
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(values) > 0) + 1, [len(values)]])
    best = cuts[int(np.argmax(correct[cuts]))]
    if best == 0:
        return float(values[0] - 1.0)
    if best == len(values):
        return float(values[-1])
    return float((values[best - 1] + values[best]) / 2)


def _distance_summary(train: np.ndarray, train_same: np.ndarray, test: np.ndarray, test_same: np.ndarray) -> dict[str, Any]:
    threshold = best_threshold(train, train_same)
    return {"positive_distance": {"mean": float(test[test_same].mean()), "std": float(test[test_same].std(ddof=1))},
            "negative_distance": {"mean": float(test[~test_same].mean()), "std": float(test[~test_same].std(ddof=1))},
            "threshold": threshold, "threshold_train_accuracy": float(np.mean((train <= threshold) == train_same)),
            "accuracy": float(np.mean((test <= threshold) == test_same))}


@torch.no_grad()
def _classifier_accuracy(fusion: nn.Module, image: np.ndarray, points: np.ndarray, pairs: Pairs,
                         device: torch.device) -> float:
    """image: (S, V, D_i), points: (S, D_p) encoder features -> accuracy of argmax F_f[image; cloud]."""
    rows = torch.from_numpy(np.concatenate([image[pairs.first, pairs.first_view], points[pairs.second]], axis=1))
    logits = fusion.to(device).eval()(rows.to(device)).cpu()
    return float(np.mean((logits.argmax(1).numpy() == 1) == pairs.same))


def _pairs_for(embedded: StoreEmbeddings, views: int, factor: int, seed: int, split_tag: int) -> Pairs:
    rng = np.random.default_rng([seed, split_tag])
    return balanced_pairs(len(embedded.labels), views, factor * len(embedded.labels), rng)


def run_pretext(cfg: PretextConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The pretext metrics of a run on the test split of a store; the report."""
    if cfg.data_selection().active:
        raise ValueError("the pretext metrics draw their pairs from whole splits: --classes / --per-class do not apply")
    run = cfg.method_run()
    opened = open_method(run, cfg.random_init, cfg.seed)
    method, recipe, weights_id, source = opened.method, opened.recipe, opened.weights_id, opened.source
    settings, _ = read_store_settings(Path(cfg.data))
    device = resolve_device(cfg.device)
    image_size = image_size_of(recipe, cfg.data, cfg.image_size)
    encoder_space = method_encoders(method, "encoder", weights_id, source)
    if "image" not in encoder_space.modules:
        raise ValueError(f"{run}: the pretext metrics pair rendered views; this {recipe['method']} run has no image encoder")
    spaces = {"encoder": encoder_space}
    if method.shared_heads():
        spaces["shared"] = method_encoders(method, "shared", weights_id, source)
    fusion = method.pair_classifier()
    wanted = ("points", "image") if "points" in encoder_space.modules else ("image",)
    calibrated = None
    if cfg.random_init:  # the shared space's encoders are the same modules, plus their heads
        widest = spaces.get("shared", encoder_space)
        calibrated = calibrate_encoders(widest, cfg.data, wanted, cfg.num_points, image_size, cfg.bn_calibration_objects,
                                        cfg.batch_size, cfg.seed, device, cfg.num_workers, cfg.progress)
        for encoders in spaces.values():
            encoders.weights_id = widest.weights_id
    train_rows = _train_rows(cfg)
    common = dict(num_points=cfg.num_points, image_size=image_size, batch_size=cfg.batch_size, device=device,
                  num_workers=cfg.num_workers, cache_dir=cfg.cache_dir, use_cache=cfg.use_cache, progress=cfg.progress)
    # the encoders run once per split; the shared space is their output through the heads
    embedded = {split: embed_store(encoder_space, cfg.data, split, wanted, **common,
                                   objects=train_rows if split == "train" else None) for split in ("train", "test")}
    pairs = {split: _pairs_for(embedded[split], settings.views, cfg.pairs_factor, cfg.seed, tag)
             for tag, split in enumerate(("train", "test"))}
    results: dict[str, Any] = {}
    enc = {split: embedded[split].features for split in ("train", "test")}
    distances = {split: pair_distances(enc[split]["image"][p.first, p.first_view], enc[split]["image"][p.second, p.second_view],
                                       normalize=not cfg.raw_distances) for split, p in pairs.items()}
    results["cross_view"] = {"space": "image encoder, raw features" if cfg.raw_distances else "image encoder, L2-normalised",
                             **_distance_summary(distances["train"], pairs["train"].same, distances["test"], pairs["test"].same)}
    if "points" in wanted and fusion is not None:
        results["cross_modal_classifier"] = {
            "rule": "the method's pair classifier F_f on [image feature ; cloud feature]: same object iff logit 1 > logit 0",
            "accuracy": _classifier_accuracy(fusion, enc["test"]["image"], enc["test"]["points"], pairs["test"], device)}
    if "points" in wanted and "shared" in spaces:
        shared = {split: through_heads(spaces["shared"], enc[split], device) for split in ("train", "test")}
        distances = {split: pair_distances(shared[split]["image"][p.first, p.first_view], shared[split]["points"][p.second])
                     for split, p in pairs.items()}
        results["cross_modal"] = {"space": "the method's shared space, L2-normalised",
                                  **_distance_summary(distances["train"], pairs["train"].same, distances["test"], pairs["test"].same)}
    for name, res in results.items():
        line = f"{name:22s} accuracy {100 * res['accuracy']:.2f}%"
        if "positive_distance" in res:
            line += (f"; positive {res['positive_distance']['mean']:.3f} +- {res['positive_distance']['std']:.3f}, "
                     f"negative {res['negative_distance']['mean']:.3f} +- {res['negative_distance']['std']:.3f}")
        log(line)
    test_size = len(embedded["test"].labels)
    return {
        "protocol": "pretext",
        "dataset": cfg.data,
        "method": recipe["method"],
        "weights": source,
        "bn_calibration": calibration_note(calibrated, spaces.get("shared", encoder_space), wanted),
        "test_size": test_size,
        "pairs": {"count": len(pairs["test"].same), "positive": int(pairs["test"].same.sum()),
                  "rule": f"{cfg.pairs_factor} x the test objects, half positive (same object), half negative (an other "
                          "object, uniform); views uniform, the two views of a pair always differ; seeded"},
        "threshold_fit": f"on {len(pairs['train'].same)} pairs drawn the same way from {len(train_rows)} seeded random training objects",
        "distance": "|a/|a| - b/|b||_2",
        "num_points": cfg.num_points,
        "image_size": image_size,
        "store_views": settings.views,
        "results": results,
        "device": str(device),
        "config": config_record(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _train_rows(cfg: PretextConfig) -> list[int]:
    """A seeded random subset of the training objects (sorted), for fitting the thresholds."""
    from pretext3d.data.store import read_index

    count = sum(1 for e in read_index(Path(cfg.data))["objects"] if e["split"] == "train")
    rng = np.random.default_rng([cfg.seed, 7])
    return sorted(rng.permutation(count)[: cfg.threshold_objects].tolist())


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
