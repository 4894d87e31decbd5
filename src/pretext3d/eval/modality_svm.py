"""Linear SVM on a prepared store's objects in each modality a run's method encodes, and on their
concatenation (MIMS's recognition protocol: mesh, image, point and fused features).

Every object of the store's train and test splits is embedded by the run's encoders (the
encoder space: each encoder's global feature; images: each view's feature, then ``views`` of the
store's views pooled, by mean as MIMS averages them, or max). For every non-empty combination of
the chosen modalities, the features of its modalities are concatenated per object (a single
modality is itself), a linear SVM is fitted on train (C given or chosen by cross-validation on
train only) and the test split is scored once.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pretext3d.data.store import read_store_settings
from pretext3d.eval.linear_svm import DEFAULT_C_GRID, fit_linear_svm
from pretext3d.eval.modalities import (
    MODALITIES, StoreProtocolConfig, calibrate_encoders, calibration_note, check_pool, describe_encoders, embed_store,
    image_size_of, load_run_encoders, pool_views, view_subset,
)
from pretext3d.eval.protocols import config_record
from pretext3d.utils.device import resolve_device

__all__ = ["ModalitySVMConfig", "run_modality_svm", "format_modality_svm", "modality_combinations"]


@dataclass
class ModalitySVMConfig(StoreProtocolConfig):
    """modalities: the ones to embed (each alone, and every combination concatenated); views: image
    views pooled per object (default all the store has); pool: mean (MIMS) or max."""

    modalities: tuple[str, ...] = ("points", "image", "mesh")
    views: int | None = None
    pool: str = "mean"
    C: float | None = None
    C_grid: tuple[float, ...] = DEFAULT_C_GRID
    folds: int = 3
    svm: str = "svc"


def modality_combinations(modalities: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every non-empty combination, single modalities first, in MODALITIES order."""
    ordered = tuple(m for m in MODALITIES if m in modalities)
    return [c for size in range(1, len(ordered) + 1) for c in itertools.combinations(ordered, size)]


def _object_features(features: dict[str, np.ndarray], views: np.ndarray, pool: str) -> dict[str, np.ndarray]:
    """Per modality (S, D): images pooled over the chosen views."""
    return {m: pool_views(f, views, pool) if m == "image" else f for m, f in features.items()}


def run_modality_svm(cfg: ModalitySVMConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Accuracy of a linear SVM on each modality and each concatenation; the report."""
    check_pool(cfg.pool)
    unknown = [m for m in cfg.modalities if m not in MODALITIES]
    if not cfg.modalities or unknown:
        raise ValueError(f"modalities must be among {', '.join(MODALITIES)}, got {list(cfg.modalities)}")
    run = cfg.method_run()
    encoders, recipe = load_run_encoders(run, "encoder", cfg.random_init, cfg.seed)
    missing = [m for m in cfg.modalities if m not in encoders.modules]
    if missing:
        raise ValueError(f"{run}: this {recipe['method']} run has no {', '.join(missing)} encoder "
                         f"(it has {', '.join(encoders.modalities)})")
    settings, _ = read_store_settings(Path(cfg.data))
    views = view_subset(settings.views, cfg.views or settings.views, cfg.data)
    image_size = image_size_of(recipe, cfg.data, cfg.image_size)
    device = resolve_device(cfg.device)
    calibrated = calibrate_encoders(encoders, cfg.data, cfg.modalities, cfg.num_points, image_size,
                                    cfg.bn_calibration_objects, cfg.batch_size, cfg.seed, device, cfg.num_workers,
                                    cfg.progress) if cfg.random_init else None
    embedded = {split: embed_store(encoders, cfg.data, split, cfg.modalities, cfg.num_points, image_size, cfg.batch_size,
                                   device, cfg.num_workers, cfg.cache_dir, cfg.use_cache, cfg.progress,
                                   selection=cfg.data_selection())
                for split in ("train", "test")}
    train = _object_features(embedded["train"].features, views, cfg.pool)
    test = _object_features(embedded["test"].features, views, cfg.pool)
    results = []
    for combination in modality_combinations(tuple(cfg.modalities)):
        name = "+".join(combination)
        train_x = np.concatenate([train[m] for m in combination], axis=1)
        test_x = np.concatenate([test[m] for m in combination], axis=1)
        svm = fit_linear_svm(train_x, embedded["train"].labels, test_x, embedded["test"].labels, cfg.C, cfg.C_grid,
                             cfg.folds, cfg.svm, False, cfg.seed)
        results.append({"modalities": list(combination), "name": name, "feature_dim": int(train_x.shape[1]),
                        "accuracy": svm.accuracy, "class_mean_accuracy": svm.class_mean_accuracy, "C": svm.C,
                        "cv_accuracy": svm.cv_accuracy})
        log(f"{name:18s} accuracy {100 * svm.accuracy:.2f}% (class mean {100 * svm.class_mean_accuracy:.2f}%), "
            f"C={svm.C:g}, {train_x.shape[1]}-d")
    return {
        "protocol": "modality-svm",
        "dataset": cfg.data,
        "data_selection": cfg.data_selection().describe(),
        "num_classes": len(embedded["train"].classes),
        "train_size": len(embedded["train"].labels),
        "test_size": len(embedded["test"].labels),
        "weights": encoders.source,
        "method": recipe["method"],
        "encoders": describe_encoders(encoders, cfg.modalities),
        "modalities": list(cfg.modalities),
        "views": {"count": int(len(views)), "pool": cfg.pool, "indices": views.tolist()} if "image" in cfg.modalities else None,
        "view_choice": "views floor(i * V / v), i < v, of the store's V views in camera order",
        "image_size": image_size if "image" in cfg.modalities else None,
        "num_points": cfg.num_points if "points" in cfg.modalities else None,
        "fusion": "the encoders' global features concatenated (images pooled first), no rescaling",
        "bn_calibration": calibration_note(calibrated, encoders, cfg.modalities),
        "classifier": f"linear SVM ({cfg.svm}), C " + (f"given ({cfg.C:g})" if cfg.C is not None
                                                      else f"by {cfg.folds}-fold CV on train over {list(cfg.C_grid)}"),
        "features_cached": {split: e.cached for split, e in embedded.items()},
        "results": results,
        "device": str(device),
        "config": config_record(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def format_modality_svm(report: dict) -> str:
    views = report["views"]
    lines = [f"linear SVM per modality  {report['dataset']} ({report['train_size']} train / {report['test_size']} test, "
             f"{report['num_classes']} classes)",
             f"  weights         {report['weights']}",
             *([f"  views           {views['count']} per object, {views['pool']}-pooled; image size {report['image_size']}"]
               if views else []),
             f"  classifier      {report['classifier']}"]
    if report["bn_calibration"]:
        lines.append(f"  BN statistics   {report['bn_calibration']}")
    for res in report["results"]:
        lines.append(f"  {res['name']:18s} {100 * res['accuracy']:6.2f}%  (class mean {100 * res['class_mean_accuracy']:.2f}%, "
                     f"C={res['C']:g}, {res['feature_dim']}-d)")
    return "\n".join(lines)
