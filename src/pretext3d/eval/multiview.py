"""Multi-view 2D recognition: image features of v rendered views of each object, pooled over the
views (max, as MVCNN's view pooling, or mean), then a linear SVM (train split -> test split).

The image encoder is a pretraining run's (CrossPoint, Pic@Point, CMCV, MIMS: its ResNet), a
ResNet read from torchvision weights on disk, or a seeded random ResNet whose BatchNorm
statistics are calibrated on training views. Every view of every object is embedded once; each
v then pools the views floor(i * V / v), i < v, of the store's V (``view_subset``). Counts above
the store's views are reported as skipped, and the store's own V is always measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from pretext3d.data.store import read_store_settings
from pretext3d.eval.linear_svm import DEFAULT_C_GRID, fit_linear_svm
from pretext3d.eval.modalities import (
    ModalityEncoders, StoreProtocolConfig, calibrate_encoders, calibration_note, check_pool, describe_encoders,
    embed_store, image_encoder_alone, image_size_of, load_run_encoders, pool_views, view_subset,
)
from pretext3d.eval.protocols import config_record
from pretext3d.utils.device import resolve_device

__all__ = ["format_multiview", "MultiviewConfig", "run_multiview", "store_image_encoders"]


@dataclass
class MultiviewConfig(StoreProtocolConfig):
    """checkpoint: a run folder with an image encoder; or random_init / image_weights (torchvision
    ResNet weights on disk) with ``backbone`` the ResNet (resnet18 | resnet50; with a run, the
    encoder it must hold)."""

    random_init_needs: ClassVar[str] = "any"  # a bare ResNet

    image_weights: str | None = None
    view_counts: tuple[int, ...] = (1, 12, 36, 80)
    pool: str = "max"
    C: float | None = None
    C_grid: tuple[float, ...] = DEFAULT_C_GRID
    folds: int = 3
    svm: str = "svc"


    def weight_sources(self) -> int:
        return super().weight_sources() + int(bool(self.image_weights))

    def check_weights(self) -> None:
        if self.weight_sources() != 1:
            raise ValueError("give exactly one of a run folder (checkpoint), random_init or image_weights")
        if self.like:
            raise ValueError("multiview builds a bare ResNet for --random-init: name it with --backbone, not --like")
        super().check_weights()


def store_image_encoders(cfg: MultiviewConfig, space: str = "encoder") -> tuple[ModalityEncoders, dict | None]:
    """The image encoder ``cfg`` names (and the run's recipe, when it is a run)."""
    if cfg.checkpoint:
        encoders, recipe = load_run_encoders(cfg.checkpoint, space)
        if "image" not in encoders.modules:
            raise ValueError(f"{cfg.checkpoint}: this {recipe['method']} run has no image encoder")
        trained = {512: "resnet18", 2048: "resnet50"}.get(getattr(encoders.modules["image"], "feature_dim", 0))
        if cfg.backbone and trained != cfg.backbone:
            raise ValueError(f"{cfg.checkpoint}: the run's image encoder is {trained}, not {cfg.backbone}")
        return encoders, recipe
    return image_encoder_alone(cfg.backbone or "resnet18", cfg.image_weights, cfg.seed), None


def run_multiview(cfg: MultiviewConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Linear-SVM accuracy of view-pooled image features for each view count; the report."""
    check_pool(cfg.pool)
    settings, _ = read_store_settings(Path(cfg.data))
    encoders, recipe = store_image_encoders(cfg)
    device = resolve_device(cfg.device)
    image_size = image_size_of(recipe, cfg.data, cfg.image_size)
    calibrated = None
    if cfg.random_init:
        calibrated = calibrate_encoders(encoders, cfg.data, ("image",), None, image_size, cfg.bn_calibration_objects,
                                        cfg.batch_size, cfg.seed, device, cfg.num_workers, cfg.progress)
    embedded = {split: embed_store(encoders, cfg.data, split, ("image",), None, image_size, cfg.batch_size, device,
                                   cfg.num_workers, cfg.cache_dir, cfg.use_cache, cfg.progress,
                                   selection=cfg.data_selection())
                for split in ("train", "test")}
    counts = sorted({v for v in cfg.view_counts if v <= settings.views} | {settings.views})
    results = []
    for count in counts:
        views = view_subset(settings.views, count)
        train = pool_views(embedded["train"].features["image"], views, cfg.pool)
        test = pool_views(embedded["test"].features["image"], views, cfg.pool)
        svm = fit_linear_svm(train, embedded["train"].labels, test, embedded["test"].labels, cfg.C, cfg.C_grid,
                             cfg.folds, cfg.svm, False, cfg.seed)
        results.append({"views": count, "view_indices": views.tolist(), "accuracy": svm.accuracy,
                        "class_mean_accuracy": svm.class_mean_accuracy, "C": svm.C, "cv_accuracy": svm.cv_accuracy})
        log(f"{count:3d} view(s), {cfg.pool}-pooled: accuracy {100 * svm.accuracy:.2f}% "
            f"(class mean {100 * svm.class_mean_accuracy:.2f}%), C={svm.C:g}")
    return {
        "protocol": "multiview",
        "dataset": cfg.data,
        "data_selection": cfg.data_selection().describe(),
        "store_views": settings.views,
        "camera_layout": settings.layout,
        "num_classes": len(embedded["train"].classes),
        "train_size": len(embedded["train"].labels),
        "test_size": len(embedded["test"].labels),
        "weights": encoders.source,
        "image_encoder": describe_encoders(encoders, ("image",))["image"],
        "feature_dim": int(embedded["train"].features["image"].shape[-1]),
        "image_size": image_size,
        "images": "the stored renders resized to image_size, ImageNet-normalised, no augmentation",
        "bn_calibration": calibration_note(calibrated, encoders, ("image",)),
        "view_choice": "views floor(i * V / v), i < v, of the store's V views in camera order",
        "view_counts_skipped": sorted(v for v in cfg.view_counts if v > settings.views),
        "pool": cfg.pool,
        "classifier": f"linear SVM ({cfg.svm}) on the pooled features, C "
                      + (f"given ({cfg.C:g})" if cfg.C is not None else f"by {cfg.folds}-fold CV on train over {list(cfg.C_grid)}"),
        "features_cached": {split: e.cached.get("image", False) for split, e in embedded.items()},
        "results": results,
        "device": str(device),
        "config": config_record(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


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
