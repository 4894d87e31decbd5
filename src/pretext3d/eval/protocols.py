"""Evaluation protocols run end to end: data -> backbone -> features (cached) -> metric -> report."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar, Iterator

import numpy as np
import torch

from pretext3d.data.datasets import STORE, open_point_splits, point_format
from pretext3d.data.errors import DataFormatError
from pretext3d.data.readers import MESH_FORMATS
from pretext3d.eval.cache import FeatureCache, data_fingerprint, file_digest
from pretext3d.eval.features import Features, calibrate_batchnorm, extract_features
from pretext3d.eval.linear_svm import DEFAULT_C_GRID, fit_linear_svm
from pretext3d.eval.options import CacheOptions, RuntimeOptions, SelectionOptions, WeightsOptions
from pretext3d.eval.presets import format_preset, preset_record
from pretext3d.models import build_backbone
from pretext3d.runs import CheckpointError, backbone_file, load_backbone, provenance
from pretext3d.utils.device import resolve_device

__all__ = ["FeatureConfig", "LinearSVMConfig", "SplitFeatures", "run_linear_svm", "iter_split_features",
           "prepare_feature_config", "feature_report", "backbone_config", "BN_CALIBRATION_NOTE", "format_feature_header",
           "format_skipped", "format_linear_svm"]

BN_CALIBRATION_NOTE = (
    "random init: BatchNorm running statistics reset and set to the cumulative average of the "
    "batch statistics over {clouds} randomly chosen training clouds (train mode, batches of "
    "{batch}, dropout off, seed {seed}; clouds actually used per seed: bn_calibration_clouds, null when the "
    "features came from the cache); weights untouched"
)


@dataclass
class FeatureConfig(WeightsOptions, SelectionOptions, CacheOptions, RuntimeOptions):
    """Where frozen global features come from: data (any dataset or a prepared store, optionally
    a trial selection of its classes and objects), weights (``WeightsOptions``: a checkpoint,
    or a random initialisation with calibrated BatchNorm; with a checkpoint, backbone None means
    whatever it holds) and extraction settings. Every protocol on frozen features extends it."""

    random_backbones: ClassVar[tuple[str, ...]] = ("pointnet", "dgcnn")

    data: str
    backbone: str | None = field(default="dgcnn", kw_only=True)  # the feature protocols' own default (WeightsOptions: None)
    num_points: int = 1024
    subsample: str = "first"
    subset: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 32
    bn_calibration_clouds: int = 2048
    k: int = 20  # DGCNN neighbours (a random init, and reference weights that do not say)
    emb_dims: int = 1024  # a random init's embedding width (without random_config)


@dataclass
class LinearSVMConfig(FeatureConfig):
    C: float | None = None
    C_grid: tuple[float, ...] = DEFAULT_C_GRID
    folds: int = 3
    svm: str = "svc"
    standardize: bool = False
    preset: str | None = None  # a published protocol's settings (eval/presets.py), applied by apply_preset


@dataclass
class SplitFeatures:
    """Frozen features of the train and test splits for one seed, and where they came from."""

    seed: int
    train: Features
    test: Features
    splits: dict[str, Any]  # the opened datasets (classes, names, sizes)
    info: dict[str, Any]  # backbone source and config
    cached: bool  # both splits came from the cache
    bn_calibration_clouds: int | None  # clouds used for BN calibration (random init, not cached)
    model: torch.nn.Module  # the backbone the features come from (on ``device``)
    fmt: str  # the detected dataset format
    device: torch.device


def backbone_config(name: str, k: int = 20, emb_dims: int = 1024) -> dict[str, Any]:
    """The configuration the linear-SVM protocol builds a fresh backbone with."""
    if name == "dgcnn":
        return {"k": k, "emb_dims": emb_dims, "pooling": "max+avg"}
    if name == "pointnet":
        return {"emb_dims": emb_dims, "pooling": "max+avg"}
    raise ValueError(f"the linear-SVM protocol supports backbones pointnet and dgcnn, not {name!r}")


def _random_config(cfg: FeatureConfig) -> dict[str, Any]:
    if cfg.random_config is not None:
        return dict(cfg.random_config)
    return backbone_config(cfg.backbone, cfg.k, cfg.emb_dims)


def _weights_id(cfg: FeatureConfig, seed: int, checkpoint_digest: str | None) -> dict[str, Any]:
    if cfg.checkpoint:
        return {"checkpoint": checkpoint_digest, "backbone": cfg.backbone, "k": cfg.k}
    return {"random_init": _random_config(cfg), "backbone": cfg.backbone,
            "init_seed": seed, "bn_clouds": cfg.bn_calibration_clouds, "bn_batch": cfg.batch_size}


def _seed_matters(cfg: FeatureConfig, fmt: str) -> bool:
    """Whether the seed changes the clouds (random subsampling, sampling of meshes)."""
    return cfg.subsample != "first" or fmt in MESH_FORMATS


def prepare_feature_config(cfg: FeatureConfig) -> FeatureConfig:
    """Resolve the weights (checked when ``cfg`` was made): a run folder to its backbone file,
    ``like`` to its architecture."""
    if cfg.checkpoint:
        cfg = replace(cfg, checkpoint=str(backbone_file(cfg.checkpoint)))
        if not Path(cfg.checkpoint).is_file():
            raise CheckpointError(f"{cfg.checkpoint}: does not exist")
    elif cfg.like:
        backbone, random_config = cfg.architecture()
        cfg = replace(cfg, backbone=backbone, random_config=random_config)
    return cfg


def iter_split_features(cfg: FeatureConfig) -> Iterator[SplitFeatures]:
    """Frozen train and test features for each seed of ``cfg`` (cached; see FeatureCache).

    A random initialisation is seeded per seed and its BatchNorm statistics are calibrated on
    training clouds (never test). ``cfg`` must have gone through ``prepare_feature_config``.
    """
    fmt = point_format(cfg.data)
    device = resolve_device(cfg.device)
    cache = FeatureCache(cfg.cache_dir) if cfg.use_cache else None
    data_id = data_fingerprint(cfg.data, fmt)
    checkpoint_digest = file_digest(cfg.checkpoint) if cfg.checkpoint else None
    for seed in cfg.seeds:
        splits = open_point_splits(cfg.data, cfg.num_points, cfg.subsample, seed, cfg.subset, on_error="skip", fmt=fmt,
                                   selection=cfg.data_selection())
        check_splits(cfg.data, splits)
        keys = {
            split: FeatureCache.key(weights=_weights_id(cfg, seed, checkpoint_digest), data=data_id, fmt=fmt,
                                    subset=cfg.subset, selection=cfg.data_selection().record(), split=split,
                                    points=cfg.num_points, subsample=cfg.subsample,
                                    sample_seed=seed if _seed_matters(cfg, fmt) else None)
            for split in ("train", "test")
        }
        feats: dict[str, Features | None] = {s: cache.get(k) if cache else None for s, k in keys.items()}
        # building is cheap and checks that a checkpoint holds the requested backbone; the
        # calibration and the embedding are what the cache saves
        model, info = _build_model(cfg, seed)
        normals = _takes_normals(model)
        calibrated = None
        needs_model = any(f is None for f in feats.values())
        if needs_model and cfg.random_init:
            try:
                calibrated = calibrate_batchnorm(model, splits["train"], cfg.bn_calibration_clouds, cfg.batch_size,
                                                 seed, device, cfg.num_workers, normals, progress=cfg.progress)
            except ValueError as err:  # e.g. no readable training cloud: say which data
                raise DataFormatError(cfg.data, str(err)) from None
        for split, key in keys.items():
            if feats[split] is None:
                feats[split] = extract_features(model, splits[split], cfg.batch_size, device, cfg.num_workers,
                                                normals, progress=cfg.progress, desc=f"embed {split} (seed {seed})")
                if cache:
                    cache.put(key, feats[split])
        yield SplitFeatures(seed, feats["train"], feats["test"], splits, info, not needs_model, calibrated, model, fmt, device)


def check_splits(data: str, splits: dict[str, Any]) -> None:
    """Both splits hold clouds, and the training split at least two classes (one line naming
    the data otherwise, before any work)."""
    for split in ("train", "test"):
        if len(splits[split]) == 0:
            raise DataFormatError(data, f"its {split} split holds no clouds")
    present = np.unique(np.asarray(splits["train"].labels))
    if len(present) < 2:
        names = splits["train"].classes
        only = names[int(present[0])] if len(present) and int(present[0]) < len(names) else "?"
        raise DataFormatError(data, f"its train split holds a single class ({only}); classifying needs at least 2")


def feature_report(cfg: FeatureConfig, protocol: str, extracted: list[SplitFeatures]) -> dict[str, Any]:
    """The part of every frozen-feature report that says where the features came from."""
    first = extracted[0]
    fmt = first.fmt
    info = first.info or {}
    return {
        "protocol": protocol,
        "dataset": cfg.data,
        "dataset_format": fmt,
        "subset": cfg.subset,
        "data_selection": cfg.data_selection().describe(),
        "num_classes": len(first.splits["train"].classes),
        "backbone": info.get("backbone", cfg.backbone),
        "backbone_config": info.get("config"),
        "weights": cfg.checkpoint or "random-init",
        "weights_source": info.get("source"),
        "bn_calibration": BN_CALIBRATION_NOTE.format(
            clouds=min(cfg.bn_calibration_clouds, len(first.splits["train"])), batch=cfg.batch_size,
            seed="= the seed of the run") if cfg.random_init else None,
        "num_points": cfg.num_points,
        "subsample": cfg.subsample,
        "sampling": describe_sampling(fmt, cfg.subsample),
        "feature_dim": int(first.train.features.shape[1]),
        "seeds": list(cfg.seeds),
        "bn_calibration_clouds": [sf.bn_calibration_clouds for sf in extracted] if cfg.random_init else None,
        "features_cached": [sf.cached for sf in extracted],
        "device": str(first.device),
    }


def skipped_items(results: list[SplitFeatures]) -> list[str]:
    return sorted({msg for r in results for msg in r.train.skipped + r.test.skipped})


def run_linear_svm(cfg: LinearSVMConfig, log=print) -> dict[str, Any]:
    """Run the linear-SVM protocol for every seed and return the report (docs/protocols.md describes it)."""
    cfg = prepare_feature_config(cfg)
    per_seed, extracted = [], []
    for sf in iter_split_features(cfg):
        extracted.append(sf)
        train, test = sf.train, sf.test
        result = fit_linear_svm(train.features, train.labels, test.features, test.labels, cfg.C, cfg.C_grid,
                                cfg.folds, cfg.svm, cfg.standardize, sf.seed, log=log if cfg.progress else None)
        per_seed.append({"seed": sf.seed, **result.to_dict(), "extract_seconds": train.seconds + test.seconds,
                         "cached": sf.cached, "bn_calibration_clouds": sf.bn_calibration_clouds})
        log(f"seed {sf.seed}: accuracy {100 * result.accuracy:.2f}% (class mean {100 * result.class_mean_accuracy:.2f}%), "
            f"C={result.C:g}, {result.feature_dim}-d features" + (" [cached]" if sf.cached else ""))
    return _report(cfg, extracted, per_seed)


def _takes_normals(model: torch.nn.Module) -> bool:
    """Whether a backbone (or a backbone with a head) was built for xyz + normals input."""
    return getattr(getattr(model, "backbone", model), "in_channels", 3) == 6


def _build_model(cfg: FeatureConfig, seed: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    if cfg.checkpoint:
        loaded = load_backbone(cfg.checkpoint, expected=cfg.backbone, k=cfg.k)
        return loaded.model, {"source": loaded.source, "config": loaded.config, "backbone": loaded.backbone}
    torch.manual_seed(seed)
    config = _random_config(cfg)
    return build_backbone(cfg.backbone, **config), {"source": "random-init", "config": config}


def describe_sampling(fmt: str, subsample: str) -> str:
    if fmt in MESH_FORMATS:
        return "area-weighted surface samples reduced by FPS, seeded per object"
    if fmt == STORE and subsample == "first":
        return "first N stored points (a prepared store keeps them in farthest-point order)"
    return {"first": "first N stored points", "random": "N random stored points (seeded)",
            "fps": "FPS of the stored points"}[subsample]


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(statistics.stdev(values)) if len(values) > 1 else 0.0


def _report(cfg: LinearSVMConfig, extracted: list[SplitFeatures], per_seed: list[dict]) -> dict[str, Any]:
    acc, acc_std = mean_std([r["accuracy"] for r in per_seed])
    cls_acc, cls_std = mean_std([r["class_mean_accuracy"] for r in per_seed])
    chosen = [r["C"] for r in per_seed]
    return {
        **feature_report(cfg, "linear-svm", extracted),
        "accuracy": acc,
        "accuracy_std": acc_std,
        "class_mean_accuracy": cls_acc,
        "class_mean_accuracy_std": cls_std,
        "C": Counter(chosen).most_common(1)[0][0],
        "C_per_seed": chosen,
        "C_selection": "given" if cfg.C is not None else f"{per_seed[0]['cv_folds']}-fold CV on train over {list(cfg.C_grid)}",
        "train_size": per_seed[0]["train_size"],
        "test_size": per_seed[0]["test_size"],
        "svm": cfg.svm,
        "standardize": cfg.standardize,
        "preset": preset_record("linear-svm", cfg.preset),
        "skipped": skipped_items(extracted),
        "per_seed": per_seed,
        "config": config_record(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def config_record(cfg) -> dict[str, Any]:
    """A protocol config (a dataclass) as JSON-ready settings, without the progress switch, and,
    when the weights come from a run folder, that run's provenance (``weights_run``: its method
    and whether it ran its paper's setting)."""
    record = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    record["weights_run"] = provenance(getattr(cfg, "checkpoint", None) or getattr(cfg, "like", None))
    return record


def format_feature_header(report: dict, title: str) -> list[str]:
    """The first lines of a frozen-feature report: data, weights, feature, points."""
    lines = [
        f"{title}  {report['dataset']} ({report['dataset_format']}{', ' + report['subset'] if report['subset'] else ''}, "
        f"{report['num_classes']} classes)",
        *([f"  data subset     {report['data_selection']}"] if report.get("data_selection") else []),
        f"  backbone        {report['backbone']} ({report['weights']})",
        f"  feature dim     {report['feature_dim']}",
        f"  points / cloud  {report['num_points']} ({report['sampling']})",
    ]
    if report["bn_calibration"]:
        lines.append(f"  BN statistics   {report['bn_calibration']}")
    return lines


def format_skipped(report: dict) -> list[str]:
    """Lines naming the unreadable items a report skipped (at most 20)."""
    if not report["skipped"]:
        return []
    return [f"  skipped         {len(report['skipped'])} unreadable item(s):", *(f"    {m}" for m in report["skipped"][:20])]


def format_linear_svm(report: dict) -> str:
    seeds = report["seeds"]
    acc = f"{100 * report['accuracy']:.2f}%"
    cls = f"{100 * report['class_mean_accuracy']:.2f}%"
    if len(seeds) > 1:
        acc += f" +- {100 * report['accuracy_std']:.2f}"
        cls += f" +- {100 * report['class_mean_accuracy_std']:.2f}"
    lines = format_feature_header(report, "linear SVM")
    lines[0] += f", {report['train_size']} train / {report['test_size']} test"
    lines[2:2] = [f"  accuracy        {acc}   (class mean {cls}, seeds {' '.join(map(str, seeds))})",
                  f"  C               {report['C']:g}   ({report['C_selection']})"]
    return "\n".join(lines + format_preset(report.get("preset")) + format_skipped(report))
