"""Supervised fine-tuning from a pretrained (or randomly initialised) backbone: shape
classification and part segmentation, with label fractions and a frozen or trainable backbone.

Both run on the one training loop (``engine.Trainer``): a task model is a "method" whose
``forward(batch)`` returns the supervised loss. Model selection uses a validation split only:
the Trainer calls ``validate`` every ``validate_every`` steps, the best weights (by validation
accuracy / instance mIoU) are kept in ``best.safetensors``, and the test split is scored once,
with those weights, at the end.

Label fractions are drawn per class from the training objects left after the validation split
(at least one object per class), seeded, so a smaller fraction is a subset of a larger one.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from pretext3d.data.splits import carve_validation
from pretext3d.engine.trainer import OptimConfig, ScheduleConfig, TrainConfig, Trainer
from pretext3d.eval.features import calibrate_batchnorm, collate_clouds
from pretext3d.eval.linear_svm import accuracy_scores
from pretext3d.eval.metrics import part_segmentation_miou
from pretext3d.eval.options import RuntimeOptions, SelectionOptions, TrainingOptions, WeightsOptions
from pretext3d.eval.presets import format_preset, preset_record
from pretext3d.eval.protocols import config_record
from pretext3d.geometry.transforms import random_scale, random_translate
from pretext3d.models import build_backbone
from pretext3d.models.checkpoint import ExportsBackbone
from pretext3d.models.layers import PointwiseBlock
from pretext3d.runs import backbone_file, load_backbone
from pretext3d.utils.device import rank_and_world, resolve_device
from pretext3d.utils.io import atomic_path, atomic_write_json, save_tensors

__all__ = [
    "FinetuneConfig",
    "format_finetune",
    "FineTuned",
    "ShapeClassifier",
    "PartSegmenter",
    "BestKeeper",
    "finetune_schedule",
    "check_step_counts",
    "MIN_MEANINGFUL_STEPS",
    "label_fraction",
    "load_finetune_backbone",
    "runs_folder",
    "segmentation_output",
    "run_finetune",
]


# --- splits -----------------------------------------------------------------------------------


def label_fraction(rows: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The first ceil(fraction x n_c) (at least 1) of a seeded per-class order of ``rows``:
    nested across fractions. rows: candidate row indices; labels: (S,) labels of all rows."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must lie in (0, 1], got {fraction}")
    rng = np.random.default_rng([seed, 11])
    chosen = []
    for c in np.unique(labels[rows]):
        ordered = rng.permutation(rows[labels[rows] == c])
        chosen.extend(ordered[: max(1, math.ceil(fraction * len(ordered) - 1e-9))])
    return np.sort(np.array(chosen, dtype=np.int64))


# --- task models ------------------------------------------------------------------------------


def _augment(points: Tensor) -> Tensor:
    """DGCNN's training augmentation: anisotropic scale in [2/3, 3/2] and a shift in [-0.2, 0.2]
    per axis (the global torch RNG, which the Trainer saves and restores)."""
    return random_translate(random_scale(points))


def _inputs(backbone: nn.Module, batch: dict, points: Tensor) -> tuple[Tensor, ...]:
    if getattr(backbone, "in_channels", 3) == 6:
        return points, batch["normals"]
    return (points,)


class FineTuned(ExportsBackbone, nn.Module):
    """What the Trainer needs of a method (``backbone``, its name and config) and a frozen
    mode: the backbone's weights get no gradient and its BatchNorm statistics stay as loaded."""

    def __init__(self, backbone: nn.Module, backbone_name: str, backbone_config: dict[str, Any], freeze: bool):
        super().__init__()
        self.backbone, self.backbone_name, self.backbone_config = backbone, backbone_name, dict(backbone_config)
        self.freeze = freeze
        if freeze:
            for p in backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.backbone.eval()
        return self


class ShapeClassifier(FineTuned):
    """backbone -> global feature (B, D) -> DGCNN's classification head
    Linear(D, 512) BN LeakyReLU(0.2) Dropout(0.5) Linear(512, 256) BN LeakyReLU Dropout Linear(256, C).

    Loss: cross entropy with label smoothing eps: -sum_c q_c log p_c, q = (1 - eps) onehot + eps / C.
    """

    def __init__(self, backbone: nn.Module, backbone_name: str, backbone_config: dict[str, Any], num_classes: int,
                 freeze: bool = False, label_smoothing: float = 0.2, augment: bool = True, dropout: float = 0.5):
        super().__init__(backbone, backbone_name, backbone_config, freeze)
        width = backbone.global_dim
        self.head = nn.Sequential(
            nn.Linear(width, 512, bias=False), nn.BatchNorm1d(512), nn.LeakyReLU(0.2), nn.Dropout(dropout),
            nn.Linear(512, 256), nn.BatchNorm1d(256), nn.LeakyReLU(0.2), nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )
        self.label_smoothing, self.augment = label_smoothing, augment

    def logits(self, batch: dict, points: Tensor | None = None) -> Tensor:
        """batch["points"]: (B, N, 3) -> (B, C)."""
        points = batch["points"] if points is None else points
        return self.head(self.backbone(*_inputs(self.backbone, batch, points), need_local=False).global_)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        points = _augment(batch["points"]) if self.augment else batch["points"]
        logits = self.logits(batch, points)
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.label_smoothing)
        return {"loss": loss, "accuracy": (logits.argmax(1) == batch["label"]).float().mean()}


def _point_classifier(backbone: nn.Module) -> tuple[nn.Module, str] | None:
    """(the final per-point linear layer, its attribute path) of a point-wise backbone."""
    if isinstance(getattr(backbone, "classifier", None), nn.Linear):
        return backbone.classifier, "classifier"
    head = getattr(backbone, "head", None)
    if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
        return head[-1], f"head.{len(head) - 1}"
    return None


def segmentation_output(backbone: nn.Module, backbone_config: dict[str, Any], outputs: int,
                        local_dim: Callable[[], int]) -> nn.Module | None:
    """Make ``backbone`` give ``outputs`` logits per point. A point-wise backbone gets a new final
    linear layer in place of its own (``backbone_config["num_outputs"]`` follows) and None is
    returned; for a global backbone the head on [local feature ; global feature] per point is
    returned: PointwiseBlock(C + D, 256) PointwiseBlock(256, 128) Linear(128, outputs), with C =
    ``local_dim()``."""
    found = _point_classifier(backbone)
    if found is not None:
        old, path = found
        new = nn.Linear(old.in_features, outputs, bias=old.bias is not None)
        parent = backbone if path == "classifier" else backbone.head
        setattr(parent, path.rsplit(".", 1)[-1], new)
        backbone_config["num_outputs"] = outputs
        return None
    return nn.Sequential(PointwiseBlock(local_dim() + backbone.global_dim, 256), PointwiseBlock(256, 128),
                         nn.Linear(128, outputs))


SEGMENTATION_HEADS = ("local", "stages")


def stages_head(backbone: nn.Module, backbone_name: str, outputs: int) -> nn.Module:
    """Jing et al.'s part-segmentation head (Sec. 4.5): four layers on [the outputs of every
    EdgeConv block ; the global feature] per point: PointwiseBlock(S + D, 256),
    PointwiseBlock(256, 256), PointwiseBlock(256, 128), Linear(128, outputs) (the widths are
    DGCNN's segmentation head's; the paper gives none). Needs a backbone with stages (DGCNN)."""
    if backbone_name != "dgcnn":
        raise ValueError(f"the stages head reads the EdgeConv blocks' outputs: it needs a dgcnn backbone, "
                         f"not {backbone_name}")
    stage_width = sum(block.layers[-1].out_features for block in backbone.edge_convs)
    return nn.Sequential(PointwiseBlock(stage_width + backbone.global_dim, 256), PointwiseBlock(256, 256),
                         PointwiseBlock(256, 128), nn.Linear(128, outputs))


@torch.no_grad()
def _local_dim(backbone: nn.Module) -> int:
    """Width of a backbone's per-point features, from a tiny forward pass in eval mode (so that
    BatchNorm statistics are untouched)."""
    was_training = backbone.training
    backbone.eval()
    points = torch.rand(1, 32, 3, device=next(backbone.parameters()).device)
    inputs = (points, points) if getattr(backbone, "in_channels", 3) == 6 else (points,)
    width = backbone(*inputs, need_local=True).local.shape[-1]
    backbone.train(was_training)
    return int(width)


class PartSegmenter(FineTuned):
    """Per-point part logits (B, N, P) from any backbone.

    A point-wise backbone (dgcnn-seg, pointnet-pointwise, pointnext-seg) keeps its pretrained
    per-point layers and gets a new final linear layer with P outputs ("frozen": only that layer
    trains). A global backbone gets a head on [local feature ; global feature] per point:
    PointwiseBlock(C + D, 256) PointwiseBlock(256, 128) Linear(128, P). Logits of parts outside
    a shape's category are masked to -inf (the category is known, as in the ShapeNetPart
    protocol). Loss: mean cross entropy over all points of the batch.
    """

    def __init__(self, backbone: nn.Module, backbone_name: str, backbone_config: dict[str, Any], num_parts: int,
                 category_parts: dict[int, Sequence[int]], freeze: bool = False, augment: bool = True,
                 head: str = "local"):
        super().__init__(backbone, backbone_name, backbone_config, freeze)
        if head not in SEGMENTATION_HEADS:
            raise ValueError(f"head must be one of {', '.join(SEGMENTATION_HEADS)}, got {head!r}")
        self.head_input = head
        if head == "stages":
            self.head = stages_head(backbone, backbone_name, num_parts)
        else:
            self.head = segmentation_output(backbone, self.backbone_config, num_parts, lambda: _local_dim(backbone))
        self.pointwise = self.head is None
        mask = torch.full((max(category_parts) + 1, num_parts), float("-inf"))
        for category, parts in category_parts.items():
            mask[category, list(parts)] = 0.0
        self.register_buffer("category_mask", mask, persistent=False)
        self.augment = augment

    def logits(self, batch: dict, points: Tensor | None = None) -> Tensor:
        """batch["points"]: (B, N, 3), batch["label"]: (B,) categories -> (B, N, P), masked."""
        points = batch["points"] if points is None else points
        kwargs = {}
        if getattr(self.backbone, "num_categories", 0):
            kwargs["categories"] = F.one_hot(batch["label"], self.backbone.num_categories).float()
        out = self.backbone(*_inputs(self.backbone, batch, points), **kwargs)
        if self.pointwise:
            logits = out.point_logits
        else:
            per_point = out.stages if self.head_input == "stages" else out.local
            per_cloud = out.global_[:, None, :].expand(-1, per_point.shape[1], -1)
            logits = self.head(torch.cat([per_point, per_cloud], dim=-1))
        return logits + self.category_mask[batch["label"]][:, None, :]

    def forward(self, batch: dict) -> dict[str, Tensor]:
        points = _augment(batch["points"]) if self.augment else batch["points"]
        logits = self.logits(batch, points)
        target = batch["part_labels"]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        return {"loss": loss, "point_accuracy": (logits.argmax(-1) == target).float().mean()}


# --- evaluation on a split --------------------------------------------------------------------


@torch.no_grad()
def _predictions(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device) -> list[tuple[dict, Tensor]]:
    was_training = model.training
    model.eval()
    out = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_clouds):
        if "points" not in batch:
            continue
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        out.append((batch, model.logits(batch)))
    model.train(was_training)
    return out


def classification_scores(model: ShapeClassifier, dataset: Dataset, batch_size: int, device: torch.device) -> dict[str, float]:
    pairs = _predictions(model, dataset, batch_size, device)
    truth = torch.cat([b["label"] for b, _ in pairs]).cpu().numpy()
    pred = torch.cat([logits.argmax(1) for _, logits in pairs]).cpu().numpy()
    overall, class_mean = accuracy_scores(truth, pred)
    return {"accuracy": overall, "class_mean_accuracy": class_mean}


def segmentation_scores(model: PartSegmenter, dataset: Dataset, category_parts: dict[int, Sequence[int]],
                        batch_size: int, device: torch.device) -> dict[str, Any]:
    preds, truths, categories = [], [], []
    for batch, logits in _predictions(model, dataset, batch_size, device):
        preds.extend(logits.argmax(-1).cpu().numpy())
        truths.extend(batch["part_labels"].cpu().numpy())
        categories.extend(batch["label"].cpu().numpy())
    return part_segmentation_miou(preds, truths, categories, category_parts)


# --- the protocol -----------------------------------------------------------------------------


@dataclass
class FinetuneConfig(WeightsOptions, SelectionOptions, TrainingOptions, RuntimeOptions):
    """Fine-tuning for a task from the weights (``WeightsOptions``; a random init builds
    ``backbone`` with ``random_config``, or ``like``'s architecture) with the runs of
    ``TrainingOptions``; classification reads any dataset or prepared store, optionally a trial
    selection of it (``SelectionOptions``)."""

    task: str  # "classification" | "partseg"
    data: str
    label_smoothing: float | None = None  # classification: None means 0.2 (DGCNN); part segmentation: none
    val_fraction: float = 0.1  # classification: held out of train for model selection
    num_points: int = 1024
    bn_calibration_clouds: int = 1024
    train_splits: str = "train"  # partseg: "train" or "train+val" (then nothing is left to select on)
    head: str = "local"  # partseg, global backbones: on [local ; global] or on [EdgeConv stages ; global] (Jing et al.)
    selection: str = "val"  # "val": the weights that do best on validation; "last": the final weights
    preset: str | None = None  # a published protocol's settings (eval/presets.py), applied by apply_preset


@contextmanager
def runs_folder(out: str | Path | None, prefix: str) -> Iterator[Path]:
    """Where the fine-tuning runs of a protocol are kept: ``out``, or a temporary folder that is
    removed afterwards."""
    if out is not None:
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def finetune_schedule(cfg: Any, items: int) -> TrainConfig:
    """The training run of one fine-tuning: batches of min(batch_size, items) (at least 2),
    max(min_steps, ceil(epochs x items / batch)) steps, a cosine schedule to ``min_lr`` or a
    step schedule (x ``gamma`` every ``step_epochs`` epochs, in steps), ``validations``
    validation passes. cfg: a fine-tuning config (FinetuneConfig, SemsegConfig)."""
    batch = max(2, min(cfg.batch_size, items))
    steps = max(1, cfg.min_steps, math.ceil(cfg.epochs * items / batch))
    if cfg.schedule not in ("cosine", "step"):
        raise ValueError(f"schedule must be cosine or step, got {cfg.schedule!r}")
    if not 0 <= cfg.min_lr <= cfg.lr:
        raise ValueError(f"min_lr must lie in [0, lr = {cfg.lr}], got {cfg.min_lr}")
    schedule = ScheduleConfig(name=cfg.schedule, min_lr_ratio=cfg.min_lr / cfg.lr,
                              step_size=max(1, math.ceil(cfg.step_epochs * items / batch)), gamma=cfg.gamma)
    return TrainConfig(steps=steps, batch_size=batch, seed=cfg.seed,
                       optimizer=OptimConfig(name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                             momentum=cfg.momentum),
                       schedule=schedule, log_every=max(1, steps // 20),
                       checkpoint_every=max(1, steps // 4), device=cfg.device,
                       validate_every=max(1, steps // max(1, cfg.validations)))


# below this many optimiser steps a fine-tuned head has barely left its initialisation (a 7-step
# frozen run scored chance level): such a run is refused unless forced, and flagged in the report
MIN_MEANINGFUL_STEPS = 100


def check_step_counts(cfg: Any, items_per_fraction: dict[float, int], log: Callable[[str], None]) -> None:
    """Refuse (or, with ``cfg.force``, warn about) runs that would get fewer than
    ``MIN_MEANINGFUL_STEPS`` steps, before any of them trains. items_per_fraction: label
    fraction -> training items of its runs."""
    short = {f: finetune_schedule(cfg, n).steps for f, n in items_per_fraction.items()}
    short = {f: steps for f, steps in short.items() if steps < MIN_MEANINGFUL_STEPS}
    if not short:
        return
    listing = ", ".join(f"{100 * f:g}% of the labels: {steps} steps ({items_per_fraction[f]} items)"
                        for f, steps in short.items())
    message = (f"{listing}; fewer than {MIN_MEANINGFUL_STEPS} steps per run are too few for the score to mean "
               "anything (the new head barely leaves its initialisation): raise --epochs or --min-steps")
    if not cfg.force:
        raise ValueError(f"{message}, or pass --force to run anyway")
    log(f"warning: {message}")


def _open_task_splits(cfg: FinetuneConfig) -> tuple[dict[str, Dataset], dict[int, list[int]] | None, int]:
    """(train / val / test datasets, category -> parts, number of outputs)."""
    if cfg.task == "partseg":
        from pretext3d.data.shapenetpart import open_partseg

        splits = open_partseg(cfg.data, num_points=cfg.num_points, seed=cfg.seed, on_error="skip")
        parts, num_parts = {int(k): list(v) for k, v in splits["train"].category_parts.items()}, splits["train"].num_parts
        if cfg.train_splits == "train+val":  # CrossPoint's fine-tuning set (it then selects on test; we do not)
            joined = ConcatDataset([splits["train"], splits["val"]])
            joined.labels = np.concatenate([_labels_of(splits["train"]), _labels_of(splits["val"])])  # type: ignore[attr-defined]
            splits = {**splits, "train": joined}
        return splits, parts, num_parts
    if cfg.task != "classification":
        raise ValueError(f"task must be 'classification' or 'partseg', got {cfg.task!r}")
    from pretext3d.data.datasets import open_point_splits

    splits = open_point_splits(cfg.data, cfg.num_points, "first", cfg.seed, on_error="skip",
                               selection=cfg.data_selection())
    kept, held = carve_validation(splits["train"].labels, cfg.val_fraction, cfg.seed)
    train = splits["train"]
    pool = Subset(train, kept.tolist())
    pool.labels, pool.classes = train.labels[kept], train.classes  # type: ignore[attr-defined]
    val = Subset(train, held.tolist())
    return {"train": pool, "val": val, "test": splits["test"]}, None, len(train.classes)


def _labels_of(dataset: Dataset) -> np.ndarray:
    return np.asarray(dataset.labels)  # type: ignore[attr-defined]


def load_finetune_backbone(cfg: WeightsOptions, seed: int, architecture: tuple[str, dict[str, Any]] | None = None
                           ) -> tuple[nn.Module, str, dict[str, Any], str]:
    """(backbone, its registry name, its config, where its weights come from) of the weights
    options: the checkpoint's, or a random init seeded with ``seed`` of ``architecture`` (name,
    config) when the caller resolved it (default: ``cfg.architecture()``)."""
    if cfg.checkpoint:
        path = backbone_file(cfg.checkpoint)
        loaded = load_backbone(path, expected=cfg.backbone)
        return loaded.model, loaded.backbone, dict(loaded.config), str(path)
    name, config = architecture or cfg.architecture()
    if name is None:
        raise ValueError("random init needs a backbone name (--backbone) or an architecture to copy (--like)")
    torch.manual_seed(seed)
    return build_backbone(name, **(config or {})), name, dict(config or {}), "random-init"


def _scorer(cfg: FinetuneConfig, category_parts, device: torch.device) -> tuple[str, Callable[[nn.Module, Dataset], dict]]:
    """(the selection key, how a model is scored on a split) of the task."""
    if cfg.task == "classification":
        return "accuracy", lambda model, split: classification_scores(model, split, cfg.batch_size, device)
    return "instance_miou", lambda model, split: segmentation_scores(model, split, category_parts, cfg.batch_size, device)


class BestKeeper:
    """The Trainer's validate callback: scores the validation split and keeps the best weights
    (``best.safetensors`` + ``best.json`` in the run folder, written atomically)."""

    def __init__(self, out: Path, score: Callable[[nn.Module], dict], key: str):
        self.out, self.score, self.key = out, score, key
        record = out / "best.json"
        self.best = json.loads(record.read_text()) if record.exists() else None  # a resumed run keeps its best

    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        values = self.score(model)
        scalar = {k: v for k, v in values.items() if isinstance(v, float)}
        if self.best is None or values[self.key] > self.best[self.key]:
            self.best = {"step": step, **scalar}
            if rank_and_world()[0] == 0:  # every process scores the same split; one writes
                state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
                with atomic_path(self.out / "best.safetensors") as tmp:
                    save_tensors(state, tmp)
                atomic_write_json(self.out / "best.json", self.best)
        return scalar


def _one_run(cfg: FinetuneConfig, splits: dict[str, Dataset], category_parts, num_outputs: int, fraction: float,
             mode: str, out: Path, device: torch.device, log, architecture: tuple[str, dict[str, Any]] | None
             ) -> dict[str, Any]:
    train = _labelled(cfg, splits["train"], fraction)
    backbone, name, config, source = load_finetune_backbone(cfg, cfg.seed, architecture)
    if cfg.random_init:  # untrained BatchNorm statistics would scale features badly, frozen or not
        calibrate_batchnorm(backbone, train, cfg.bn_calibration_clouds, min(cfg.batch_size, max(2, len(train))),
                            cfg.seed, device, progress=False)
    freeze = mode == "frozen"
    if cfg.task == "classification":
        model: FineTuned = ShapeClassifier(backbone, name, config, num_outputs, freeze,
                                            0.2 if cfg.label_smoothing is None else cfg.label_smoothing,
                                            augment=cfg.augment)
    else:
        model = PartSegmenter(backbone, name, config, num_outputs, category_parts, freeze, augment=cfg.augment,
                              head=cfg.head)
    key, score = _scorer(cfg, category_parts, device)
    train_cfg = finetune_schedule(cfg, len(train))
    batch, steps = train_cfg.batch_size, train_cfg.steps
    keeper = BestKeeper(out, lambda m: score(m, splits["val"]), key) if cfg.selection == "val" else None
    trainer = Trainer(model, train, train_cfg, out, collate=collate_clouds, log=log,
                      extra_config={"finetune": asdict(cfg), "fraction": fraction, "mode": mode},
                      validate=keeper)
    summary = trainer.fit(resume=(out / "checkpoints").exists())
    if keeper is not None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # rank 0 has written best.safetensors
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(out / "best.safetensors"), device=str(device)))
    model.to(device)
    test = score(model, splits["test"])
    selected = keeper.best if keeper is not None else {"step": steps, "rule": "the final weights"}
    return {"fraction": fraction, "mode": mode, "labelled": int(len(train)), "steps": steps, "batch_size": batch,
            "too_few_steps": steps < MIN_MEANINGFUL_STEPS,
            "weights": source, "selected": selected, "test": test, "train_seconds": summary["seconds"]}


def _labelled(cfg: FinetuneConfig, train_all: Dataset, fraction: float) -> Subset:
    """The labelled share of the training split a run of ``fraction`` trains on."""
    rows = label_fraction(np.arange(len(train_all)), _labels_of(train_all), fraction, cfg.seed)
    return Subset(train_all, rows.tolist())


def run_finetune(cfg: FinetuneConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every (label fraction, frozen/unfrozen) pair: train, select on validation, test once."""
    for mode in cfg.modes:
        if mode not in ("frozen", "unfrozen"):
            raise ValueError(f"mode must be 'frozen' or 'unfrozen', got {mode!r}")
    if cfg.train_splits not in ("train", "train+val") or (cfg.train_splits != "train" and cfg.task != "partseg"):
        raise ValueError(f"train_splits must be 'train', or 'train+val' for partseg, got {cfg.train_splits!r}")
    if cfg.selection not in ("val", "last"):
        raise ValueError(f"selection must be 'val' or 'last', got {cfg.selection!r}")
    if cfg.train_splits == "train+val" and cfg.selection == "val":
        raise ValueError("training on train+val leaves no validation split to select on: use --selection last "
                         "(the final weights; the test split is never used to select)")
    if cfg.task == "partseg" and cfg.label_smoothing:  # the category mask makes other parts impossible: no smoothing
        raise ValueError("part segmentation trains without label smoothing (its logits of parts outside the shape's "
                         "category are -inf); --label-smoothing applies to finetune-cls only")
    device = resolve_device(cfg.device)
    architecture = None
    if cfg.random_init:  # resolved once, before the data are read (a wrong --like fails at once)
        name, config = cfg.architecture()
        architecture = (name, dict(config or {}))
    splits, category_parts, num_outputs = _open_task_splits(cfg)
    check_step_counts(cfg, {f: len(_labelled(cfg, splits["train"], f)) for f in cfg.fractions}, log)
    start = time.perf_counter()
    key = _scorer(cfg, category_parts, device)[0]
    runs = []
    with runs_folder(cfg.out, "pretext3d-finetune-") as root:
        for fraction in cfg.fractions:
            for mode in cfg.modes:
                out = root / f"{cfg.task}_{mode}_{fraction:g}"
                log(f"[finetune] {cfg.task}, {mode} backbone, {100 * fraction:g}% of the labels -> {out}")
                runs.append(_one_run(cfg, splits, category_parts, num_outputs, fraction, mode, out, device, log,
                                     architecture))
                log(f"[finetune] test {key} {100 * runs[-1]['test'][key]:.2f}% after {runs[-1]['steps']} steps "
                    f"({_selected_text(runs[-1]['selected'])})")
    report_protocol = "finetune-cls" if cfg.task == "classification" else "partseg"
    return {
        "protocol": report_protocol,
        "dataset": cfg.data,
        "data_selection": cfg.data_selection().describe(),
        "train_size": len(splits["train"]),
        "val_size": len(splits["val"]),
        "test_size": len(splits["test"]),
        "validation": _selection_text(cfg),
        "label_fractions": "per class ceil(fraction x n), at least 1, from a seeded order (nested across fractions)",
        "augmentation": "anisotropic scale [2/3, 3/2] and shift [-0.2, 0.2] per axis (DGCNN)" if cfg.augment else "none",
        "schedule": schedule_text(cfg),
        "preset": preset_record(report_protocol, cfg.preset),
        "runs": runs,
        "random_init_architecture": {"backbone": architecture[0], "config": architecture[1]} if architecture else None,
        "device": str(device),
        "seconds": time.perf_counter() - start,
        "config": config_record(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _selected_text(selected: dict[str, Any]) -> str:
    return "the final weights" if "rule" in selected else f"selected at step {selected['step']} on validation"


def _selection_text(cfg: FinetuneConfig) -> str:
    if cfg.selection == "last":
        return f"none: the final weights are tested once (trained on {cfg.train_splits})"
    return (("stratified hold-out of the train split" if cfg.task == "classification" else "the dataset's val split")
            + "; the weights with the best validation score are tested once")


def schedule_text(cfg: Any) -> str:
    """The optimiser and schedule of a fine-tuning config, in words (reports)."""
    rate = f"{cfg.optimizer} lr {cfg.lr:g}" + (f" momentum {cfg.momentum:g}" if cfg.optimizer == "sgd" else "")
    rate += f", weight decay {cfg.weight_decay:g}"
    if cfg.schedule == "step":
        return f"{rate}, x{cfg.gamma:g} every {cfg.step_epochs:g} epochs"
    return f"{rate}, cosine to {cfg.min_lr:g}"


def format_finetune(report: dict) -> str:
    seg = report["protocol"] == "partseg"
    lines = [f"{report['protocol']}  {report['dataset']} ({report['train_size']} train / {report['val_size']} val / "
             f"{report['test_size']} test); weights {report['runs'][0]['weights']}",
             *([f"  data subset     {report['data_selection']}"] if report.get("data_selection") else []),
             f"  selection       {report['validation']}",
             f"  training        {report.get('schedule', '')}; augmentation {report.get('augmentation', '')}",
             f"  {'labels':>8s} {'backbone':>9s} {'objects':>8s} {'steps':>6s} {'best step':>10s}  "
             + ("instance mIoU  class mIoU" if seg else "accuracy  class mean")]
    for run in report["runs"]:
        test = run["test"]
        values = (f"{100 * test['instance_miou']:12.2f}% {100 * test['class_miou']:10.2f}%" if seg else
                  f"{100 * test['accuracy']:7.2f}% {100 * test['class_mean_accuracy']:10.2f}%")
        lines.append(f"  {100 * run['fraction']:7g}% {run['mode']:>9s} {run['labelled']:8d} {run['steps']:6d} "
                     f"{run['selected']['step']:10d}  {values}")
    return "\n".join(lines + format_preset(report.get("preset")))
