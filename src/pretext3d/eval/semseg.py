"""Semantic segmentation of rooms (S3DIS, the PointNet / DGCNN protocol): fine-tune a backbone on
blocks of the training areas and score every point of the test area.

* Splits: the rooms of ``test_area`` (default 5) are the test split; the rooms of every other
  area train. Model selection never looks at the test area: a seeded fraction of the training
  rooms (default 10 %, at least one room) is held out whole as the validation split.
* Training: random blocks (``block_size`` x ``block_size`` in x, y, any z) of ``num_points``
  points drawn from the training rooms (``SemSegBlocks``); the input is a prefix of
  ``block_features``' 9 channels: ``xyz`` (3: block-centred x, y and z), ``xyzrgb`` (6: + rgb
  / 255) or ``all`` (9: + x, y, z over the room's extent). Label fractions take a seeded,
  nested share of the training rooms.
* Scoring (validation and test): every room is tiled by ``room_blocks`` (blocks ``stride``
  apart that together hold every point), each block is predicted, and the softmax class
  probabilities are summed per point over the blocks that hold it (``vote``); the argmax per
  point is scored against all the points of the split (a confusion matrix summed room by room)
  (overall accuracy, mean class accuracy, per-class IoU, mIoU).
* The task model runs on the one training loop (``engine.Trainer``), with the frozen /
  unfrozen backbone, the head choice and the best-on-validation selection of ``finetune``:
  the weights with the best validation mIoU are kept in ``best.safetensors`` and the test
  split is scored once, with them.

The command line (``pretext3d evaluate semseg``) is built from ``add_semseg_arguments`` and
``semseg_config``; ``run_semseg`` returns the report (every protocol setting next to the
numbers) and ``format_semseg`` prints it.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from pretext3d.data.s3dis import RoomArrays, SemSegBlocks, SemSegRooms, open_semseg, room_blocks
from pretext3d.data.splits import carve_validation
from pretext3d.engine.trainer import Trainer
from pretext3d.eval.features import calibrate_batchnorm
from pretext3d.eval.finetune import (
    MIN_MEANINGFUL_STEPS, BestKeeper, FineTuned, check_step_counts, finetune_schedule, schedule_text,
    load_finetune_backbone, label_fraction, runs_folder,
    segmentation_output,
)
from pretext3d.eval.metrics import confusion_matrix, scores_from_confusion
from pretext3d.eval.options import RuntimeOptions, TrainingOptions, WeightsOptions
from pretext3d.eval.presets import format_preset, preset_record
from pretext3d.eval.protocols import config_record
from pretext3d.models import BACKBONES
from pretext3d.models.layers import PointFeatures
from pretext3d.runs import backbone_file, load_backbone
from pretext3d.utils.device import resolve_device
from pretext3d.utils.progress import progress_bar

__all__ = [
    "FEATURES",
    "FEATURE_CHANNELS",
    "SceneSegmenter",
    "SemsegConfig",
    "format_semseg",
    "hold_out_rooms",
    "predict_room",
    "run_semseg",
    "score_rooms",
    "vote",
]

# input choices -> number of leading block_features channels they take
FEATURES = {"xyz": 3, "xyzrgb": 6, "all": 9}
FEATURE_CHANNELS = ["x - cx", "y - cy", "z", "r/255", "g/255", "b/255", "x/X", "y/Y", "z/Z"]

VOTING_RULE = ("every room tiled by room_blocks (blocks of block_size x block_size in x, y, any z, starting every "
               "stride along x and y, the last of a row ending at the room's edge; each block's points shuffled "
               "and cut into chunks of num_points, the last chunk filled up with repeats); per point, the softmax "
               "class probabilities are summed over the chunks that hold it (the copies of a point repeated within "
               "one chunk count once, with their mean); prediction = argmax; every point of every room scored once")
SELECTION_RULE = ("validation = whole rooms of the training areas held out (seeded, never test-area data); the "
                  "weights with the best validation mIoU (the first best when tied) are tested once")


# --- voting -----------------------------------------------------------------------------------


def vote(num_points: int, blocks: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum per-point class scores over the blocks that hold each point.

    blocks: (indices (n,) int rows of the room, scores (n, K) per row of the block); a row
    repeated within one block (room_blocks fills its last chunk with repeats) counts once per
    block, with the mean of its copies' scores. Returns (totals (num_points, K) float64 with
    totals[p] = sum_{blocks b holding p} mean_{copies of p in b} scores_b, votes (num_points,)
    int64 = the number of blocks holding each point). Prediction: ``totals.argmax(1)``.
    """
    totals = np.zeros((num_points, num_classes), dtype=np.float64)
    votes = np.zeros(num_points, dtype=np.int64)
    for indices, scores in blocks:
        indices = np.asarray(indices, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(indices), num_classes):
            raise ValueError(f"block scores must be ({len(indices)}, {num_classes}), got {scores.shape}")
        rows, inverse, copies = np.unique(indices, return_inverse=True, return_counts=True)
        summed = np.zeros((len(rows), num_classes))
        np.add.at(summed, inverse, scores)
        totals[rows] += summed / copies[:, None]
        votes[rows] += 1
    return totals, votes


# --- the task model ---------------------------------------------------------------------------


def _run_backbone(backbone: nn.Module, inputs: Tensor, need_local: bool = True) -> PointFeatures:
    """inputs (B, N, C): xyz then C - 3 further channels -> the backbone's PointFeatures.

    A backbone built for category inputs (dgcnn-seg with num_categories > 0, as pretrained on
    ShapeNetPart) gets an all-zero category vector: rooms have no object category."""
    points = inputs[..., :3].contiguous()
    kwargs: dict[str, Any] = {"need_local": need_local}
    categories = getattr(backbone, "num_categories", 0)
    if categories:
        kwargs["categories"] = points.new_zeros(points.shape[0], categories)
    if inputs.shape[-1] > 3:
        kwargs["features"] = inputs[..., 3:].contiguous()
    return backbone(points, **kwargs)


@torch.no_grad()
def _probe_local_dim(backbone: nn.Module, in_channels: int) -> int:
    """Width of a backbone's per-point features, from a tiny forward pass in eval mode (BatchNorm
    statistics untouched)."""
    was_training = backbone.training
    backbone.eval()
    n = max(64, 2 * int(getattr(backbone, "k", 0)))
    inputs = torch.rand(1, n, in_channels, device=next(backbone.parameters()).device)
    width = _run_backbone(backbone, inputs).local.shape[-1]
    backbone.train(was_training)
    return int(width)


class SceneSegmenter(FineTuned):
    """Per-point class logits (B, N, K) of blocks from any backbone (``PartSegmenter``'s heads,
    without categories).

    A point-wise backbone (pointnet-pointwise, dgcnn-seg, pointnext-seg) keeps its per-point
    layers and gets a new final linear layer with K outputs ("frozen": only that layer trains).
    A global backbone gets a head on [local feature ; global feature] per point:
    PointwiseBlock(C + D, 256) PointwiseBlock(256, 128) Linear(128, K).
    The network sees the first ``in_channels`` channels of the block features (3: xyz, 6: xyzrgb,
    9: all). Loss: mean cross entropy over all points of the batch,
    -1/(B N) sum_{b, n} log softmax(logits_{b n})[label_{b n}].
    """

    def __init__(self, backbone: nn.Module, backbone_name: str, backbone_config: dict[str, Any], num_classes: int,
                 in_channels: int, freeze: bool = False):
        super().__init__(backbone, backbone_name, backbone_config, freeze)
        self.in_channels = in_channels
        self.head = segmentation_output(backbone, self.backbone_config, num_classes,
                                        lambda: _probe_local_dim(backbone, in_channels))
        self.pointwise = self.head is None

    def logits(self, features: Tensor) -> Tensor:
        """features: (B, N, >= in_channels) block features -> (B, N, K)."""
        out = _run_backbone(self.backbone, features[..., : self.in_channels])
        if self.pointwise:
            return out.point_logits
        per_cloud = out.global_[:, None, :].expand(-1, out.local.shape[1], -1)
        return self.head(torch.cat([out.local, per_cloud], dim=-1))

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """batch: {"features": (B, N, 9), "labels": (B, N)} -> {"loss", "point_accuracy"}."""
        logits = self.logits(batch["features"])
        target = batch["labels"]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        return {"loss": loss, "point_accuracy": (logits.argmax(-1) == target).float().mean()}


class _BackboneOnInputs(nn.Module):
    """A backbone called as ``(points (B, N, 3), features (B, N, C - 3) | None)``, whatever its
    own signature: what ``calibrate_batchnorm`` calls."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, points: Tensor, features: Tensor | None = None):
        inputs = points if features is None else torch.cat([points, features], dim=-1)
        return _run_backbone(self.backbone, inputs)


class _BlocksAsClouds(Dataset):
    """Training blocks as the clouds ``calibrate_batchnorm`` reads: points = xyz, normals = the
    further input channels."""

    def __init__(self, blocks: SemSegBlocks, in_channels: int):
        self.blocks, self.in_channels = blocks, in_channels

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict:
        features = self.blocks[i]["features"]
        item = {"points": np.ascontiguousarray(features[:, :3]), "label": 0, "index": i}
        if self.in_channels > 3:
            item["normals"] = np.ascontiguousarray(features[:, 3:self.in_channels])
        return item


# --- scoring rooms ----------------------------------------------------------------------------


@torch.no_grad()
def predict_room(model: SceneSegmenter, room_points: np.ndarray, num_classes: int, block_size: float = 1.0,
                 stride: float = 0.5, num_points: int = 4096, batch_size: int = 32,
                 seed: int = 0, name: str = "the room") -> tuple[np.ndarray, np.ndarray, int]:
    """Predict every point of one room by voting over its test blocks.

    room_points: (P, 6) x y z r g b, min corner at the origin (as SemSegRooms loads it); the
    model must be in eval mode. Returns (predictions (P,) int64 = argmax_k of the summed softmax
    probabilities (``vote``), votes (P,) int64 blocks per point (all >= 1), number of blocks).
    """
    device = next(model.parameters()).device
    blocks = room_blocks(room_points, block_size, stride, num_points, seed)

    def scored() -> Iterable[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(blocks), batch_size):
            chunk = blocks[start:start + batch_size]
            features = torch.from_numpy(np.stack([f for f, _ in chunk])).to(device)
            probabilities = model.logits(features).float().softmax(-1).cpu().numpy()
            yield from ((indices, p) for (_, indices), p in zip(chunk, probabilities))

    totals, votes = vote(len(room_points), scored(), num_classes)
    if (votes == 0).any():
        raise RuntimeError(f"{name}: {int((votes == 0).sum())} points lie in no test block")
    return totals.argmax(1).astype(np.int64), votes, len(blocks)


def score_rooms(model: SceneSegmenter, rooms: Iterable[tuple[str, np.ndarray, np.ndarray]], classes: Sequence[str],
                block_size: float = 1.0, stride: float = 0.5, num_points: int = 4096, batch_size: int = 32,
                seed: int = 0, total: int | None = None, desc: str = "vote rooms", progress: bool = True,
                log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Predict every point of every room (``predict_room``) and score the split at once.

    rooms: (name, points (P, 6), labels (P,)) per room (read lazily when a generator). Scores
    of the confusion matrix summed over all points of all rooms (``scores_from_confusion``): IoU_c = TP_c / (TP_c +
    FP_c + FN_c), mIoU = mean over the classes present in truth or prediction, OA = correct /
    points, mAcc = mean over classes present in truth of TP_c / (TP_c + FN_c); per-class IoU is
    keyed by class name (None: absent from truth and prediction). ``points`` = points scored
    (each once), ``per_room`` their counts and accuracies. log: a line per room when given.
    """
    was_training = model.training
    model.eval()
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)  # summed room by room: no per-point store
    per_room = []
    blocks = 0
    try:
        for name, points, labels in progress_bar(rooms, total=total, desc=desc, unit="room", enabled=progress):
            pred, _, count = predict_room(model, points, len(classes), block_size, stride, num_points, batch_size, seed,
                                          name)
            accuracy = float((pred == labels).mean())
            confusion += confusion_matrix(pred, labels, len(classes))
            per_room.append({"name": name, "points": len(pred), "blocks": count, "overall_accuracy": accuracy})
            blocks += count
            if log:
                log(f"[semseg] {desc}: {name}: {len(pred)} points, {count} blocks, accuracy {100 * accuracy:.2f}%")
    finally:
        model.train(was_training)
    if not per_room:
        raise ValueError("no rooms to score")
    scores = scores_from_confusion(confusion)
    scores["per_class_iou"] = dict(zip(classes, scores["per_class_iou"]))
    return {**scores, "rooms": len(per_room), "points": int(sum(r["points"] for r in per_room)), "blocks": blocks,
            "per_room": per_room}


# --- the protocol -----------------------------------------------------------------------------


@dataclass
class SemsegConfig(WeightsOptions, TrainingOptions, RuntimeOptions):
    """Semantic segmentation from the weights (``WeightsOptions``) with the fine-tuning runs of
    ``TrainingOptions`` (label fractions: shares of the training rooms; epochs: passes over the
    training blocks, SemSegBlocks: ceil(P / num_points) per room)."""

    data: str  # an S3DIS folder: raw (Area_N/<room>/Annotations) or the npy export (Area_N_<room>.npy)
    test_area: int = 5
    features: str | None = None  # xyz | xyzrgb | all; None: what the backbone takes (its in_channels)
    block_size: float = 1.0  # metres (x and y)
    stride: float | None = None  # of the validation / test tiling; None: block_size / 2
    num_points: int = 4096  # per block
    val_fraction: float = 0.1  # of the training rooms, held out whole for model selection
    bn_calibration_blocks: int = 1024  # random init: training blocks for BatchNorm calibration
    train_areas: list[int] | None = None  # the areas trained on (default: every area but the test area)
    preset: str | None = None  # a published protocol's settings (eval/presets.py), applied by apply_preset

    @property
    def test_stride(self) -> float:
        return self.block_size / 2 if self.stride is None else self.stride


def _feature_name(channels: int, owner: str) -> str:
    for name, count in FEATURES.items():
        if count == channels:
            return name
    raise ValueError(f"{owner} takes {channels} input channels; semantic segmentation feeds 3 (xyz), "
                     "6 (xyzrgb) or 9 (all)")


def _resolve_inputs(cfg: SemsegConfig) -> tuple[str, int, str, dict[str, Any]]:
    """(features, in_channels, backbone name, backbone config) the runs use; the config is the
    random-init config (in_channels set, no categories for dgcnn-seg) or the checkpoint's."""
    if cfg.features is not None and cfg.features not in FEATURES:
        raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {cfg.features!r}")
    if cfg.checkpoint:
        path = backbone_file(cfg.checkpoint)
        loaded = load_backbone(path, expected=cfg.backbone)
        channels = int(getattr(loaded.model, "in_channels", 3))
        takes = _feature_name(channels, f"{path}: the {loaded.backbone} backbone")
        if channels == 6 and cfg.features is None:
            raise ValueError(f"{path}: the {loaded.backbone} backbone takes 6 input channels, usually xyz + normals from "
                             "pretraining; S3DIS blocks have colours, not normals: pass --features xyzrgb to feed colours "
                             "in their place knowingly")
        if cfg.features is not None and FEATURES[cfg.features] != channels:
            raise ValueError(f"{path}: the {loaded.backbone} backbone takes {channels} input channels ({takes}), "
                             f"but features {cfg.features!r} give {FEATURES[cfg.features]}; use features {takes!r} "
                             "with this checkpoint (or random init to train on any features)")
        return takes, channels, loaded.backbone, dict(loaded.config)
    backbone, random_config = cfg.architecture()
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; known: {', '.join(sorted(BACKBONES))}")
    config = dict(random_config or {})
    features = cfg.features or _feature_name(int(config.get("in_channels", 3)), f"the {backbone} configuration")
    channels = FEATURES[features]
    parameters = inspect.signature(BACKBONES[backbone]).parameters
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if "in_channels" in parameters or open_kwargs:
        config["in_channels"] = channels
    elif channels != 3:
        raise ValueError(f"the {backbone} backbone takes xyz only (3 input channels), but features {features!r} "
                         f"give {channels}; use features 'xyz' or a backbone with in_channels "
                         "(pointnet, dgcnn, pointnet-pointwise)")
    if "num_categories" in parameters and "num_categories" not in config:
        config["num_categories"] = 0  # rooms have no object category
    return features, channels, backbone, config


def hold_out_rooms(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of ``count`` training-area rooms: round(fraction x count)
    rooms, at least one and never all, drawn with a generator seeded by ``seed``
    (``carve_validation`` with every room in one class)."""
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must lie in (0, 1), got {fraction}")
    if count < 2:
        raise ValueError(f"the training areas hold {count} room(s); at least 2 are needed (one is held out "
                         "for validation, the test area never is)")
    return carve_validation(np.zeros(count, dtype=np.int64), fraction, seed)


def _check(cfg: SemsegConfig) -> None:
    for mode in cfg.modes:
        if mode not in ("frozen", "unfrozen"):
            raise ValueError(f"mode must be 'frozen' or 'unfrozen', got {mode!r}")
    if not cfg.modes or not cfg.fractions:
        raise ValueError("give at least one mode and one label fraction")
    if cfg.block_size <= 0:
        raise ValueError(f"block_size must be positive, got {cfg.block_size}")
    if not 0 < cfg.test_stride <= cfg.block_size:
        raise ValueError(f"stride must lie in (0, block_size = {cfg.block_size}], got {cfg.test_stride}")
    if cfg.num_points < 1 or cfg.batch_size < 2 or cfg.validations < 1:
        raise ValueError("num_points must be >= 1, batch_size >= 2 and validations >= 1")
    for fraction in cfg.fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"label fraction must lie in (0, 1], got {fraction}")


def _open_rooms(cfg: SemsegConfig) -> dict[str, SemSegRooms]:
    rooms = open_semseg(cfg.data, cfg.test_area)  # DataFormatError (a ValueError) names a missing test area
    if len(rooms["train"]) == 0:
        raise ValueError(f"{cfg.data}: no training rooms: every room lies in the test area Area_{cfg.test_area}")
    if cfg.train_areas:
        if cfg.test_area in cfg.train_areas:
            raise ValueError(f"the test area {cfg.test_area} cannot also be a training area")
        train = rooms["train"]
        missing = sorted(set(cfg.train_areas) - set(train.areas.tolist()))
        if missing:
            raise ValueError(f"{cfg.data}: holds no rooms of training area(s) {missing} (it has "
                             f"{sorted(set(train.areas.tolist()))})")
        kept = [room for room in train.rooms if room[0] in cfg.train_areas]
        rooms = {**rooms, "train": SemSegRooms(kept, train.layout, train.split, train.source, train.on_error)}
    return rooms


def _one_run(cfg: SemsegConfig, rooms: dict[str, SemSegRooms], loaded: dict[int, RoomArrays], train_rows: np.ndarray,
             val_rooms: list[tuple[str, np.ndarray, np.ndarray]], inputs: tuple[str, int, str, dict[str, Any]],
             fraction: float, mode: str, out: Path, device: torch.device, log: Callable[[str], None]) -> dict[str, Any]:
    features, channels, resolved_name, config = inputs
    classes = rooms["train"].classes
    labelled, blocks = _training_blocks(cfg, loaded, train_rows, fraction)
    if len(blocks) < 2:
        raise ValueError(f"the training rooms give {len(blocks)} block(s) per epoch (ceil(points / {cfg.num_points}) "
                         "per room); at least 2 are needed for a batch: use fewer points per block")
    backbone, name, backbone_config, source = load_finetune_backbone(cfg, cfg.seed, (resolved_name, config))
    train_cfg = finetune_schedule(cfg, len(blocks))
    batch, steps = train_cfg.batch_size, train_cfg.steps
    if cfg.random_init:  # untrained BatchNorm statistics would scale features badly, frozen or not
        calibrate_batchnorm(_BackboneOnInputs(backbone), _BlocksAsClouds(blocks, channels), cfg.bn_calibration_blocks,
                            batch, cfg.seed, device, use_normals=channels > 3, progress=False)
    model = SceneSegmenter(backbone, name, backbone_config, len(classes), channels, freeze=mode == "frozen")
    tiling = {"block_size": cfg.block_size, "stride": cfg.test_stride, "num_points": cfg.num_points,
              "batch_size": cfg.batch_size, "seed": cfg.seed}

    last: dict[str, Any] = {}

    def score_val(m: nn.Module) -> dict[str, Any]:
        last["scores"] = score_rooms(m, val_rooms, classes, **tiling, total=len(val_rooms),  # type: ignore[arg-type]
                                     desc="vote val rooms", progress=cfg.progress)
        return last["scores"]

    keeper = BestKeeper(out, score_val, "miou")
    best_full: dict[str, Any] = {}

    def validate(m: nn.Module, step: int) -> dict[str, float]:
        """The keeper's scalars (mIoU, OA, mAcc); remembers the full scores of the best pass."""
        scalars = keeper(m, step)
        if keeper.best is not None and keeper.best["step"] == step:
            best_full.clear()
            best_full.update(last["scores"])
        return scalars

    trainer = Trainer(model, blocks, train_cfg, out, log=log, validate=validate,
                      extra_config={"semseg": asdict(cfg), "features": features, "fraction": fraction, "mode": mode})
    summary = trainer.fit(resume=(out / "checkpoints").exists())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # rank 0 has written best.safetensors
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(out / "best.safetensors"), device=str(device)))
    model.to(device)
    if not best_full:  # a resumed run: its best validation pass happened before the restart
        best_full.update(score_val(model))
    test = rooms["test"]
    test_scores = score_rooms(model, ((test.names[i], *test.load(i)) for i in range(len(test))), classes, **tiling,
                              total=len(test), desc="vote test rooms", progress=False, log=log)
    return {"fraction": fraction, "mode": mode, "labelled_rooms": len(labelled),
            "labelled_room_names": [rooms["train"].names[int(r)] for r in labelled],
            "blocks_per_epoch": len(blocks), "steps": steps, "too_few_steps": steps < MIN_MEANINGFUL_STEPS,
            "batch_size": batch, "weights": source,
            "backbone_config": model.backbone_config, "selected": keeper.best, "val": best_full, "test": test_scores,
            "train_seconds": summary["seconds"]}


def _training_blocks(cfg: SemsegConfig, loaded: dict[int, RoomArrays], train_rows: np.ndarray,
                     fraction: float) -> tuple[np.ndarray, SemSegBlocks]:
    """(the labelled rooms, their training blocks) of the share ``fraction`` of the training rooms."""
    labelled = label_fraction(train_rows, np.zeros(int(train_rows.max()) + 1, dtype=np.int64), fraction, cfg.seed)
    return labelled, SemSegBlocks([loaded[int(r)] for r in labelled], cfg.block_size, cfg.num_points, cfg.seed,
                                  min_block_points=max(1, cfg.num_points // 4))


def run_semseg(cfg: SemsegConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every (label fraction, frozen/unfrozen) pair: train on blocks of the training rooms,
    select on the held-out validation rooms (mIoU), score every point of the test area once."""
    _check(cfg)
    rooms = _open_rooms(cfg)
    inputs = _resolve_inputs(cfg)
    features, channels, backbone_name, backbone_config = inputs
    train_rows, val_rows = hold_out_rooms(len(rooms["train"]), cfg.val_fraction, cfg.seed)
    train_rooms = rooms["train"]
    labels = np.zeros(len(train_rooms), dtype=np.int64)  # rooms are drawn as one class
    needed = np.unique(np.concatenate([label_fraction(train_rows, labels, f, cfg.seed) for f in cfg.fractions]))
    loaded = {int(r): train_rooms.load(int(r)) for r in needed}  # the largest fraction's rooms, read once
    val_rooms = [(train_rooms.names[int(r)], *train_rooms.load(int(r))) for r in val_rows]
    names = {"train": [train_rooms.names[int(r)] for r in train_rows], "val": [n for n, _, _ in val_rooms],
             "test": list(rooms["test"].names)}
    check_step_counts(cfg, {f: len(_training_blocks(cfg, loaded, train_rows, f)[1]) for f in cfg.fractions}, log)
    device = resolve_device(cfg.device)
    log(f"[semseg] {cfg.data}: test Area_{cfg.test_area} ({len(names['test'])} rooms); training areas "
        f"{sorted(set(train_rooms.areas.tolist()))}: {len(names['train'])} rooms train, {len(names['val'])} held out "
        f"for validation; features {features} ({channels} channels)")
    start = time.perf_counter()
    runs = []
    with runs_folder(cfg.out, "pretext3d-semseg-") as root:
        for fraction in cfg.fractions:
            for mode in cfg.modes:
                out = root / f"semseg_{mode}_{fraction:g}"
                log(f"[semseg] {mode} backbone, {100 * fraction:g}% of the training rooms -> {out}")
                runs.append(_one_run(cfg, rooms, loaded, train_rows, val_rooms, inputs, fraction, mode, out, device, log))
                run = runs[-1]
                log(f"[semseg] test mIoU {100 * run['test']['miou']:.2f}% (OA {100 * run['test']['overall_accuracy']:.2f}%, "
                    f"mAcc {100 * run['test']['mean_class_accuracy']:.2f}%), selected at step {run['selected']['step']} "
                    f"(val mIoU {100 * run['selected']['miou']:.2f}%)")
    return {
        "protocol": "semseg",
        "dataset": cfg.data,
        "dataset_layout": train_rooms.layout,
        "classes": list(train_rooms.classes),
        "test_area": cfg.test_area,
        "train_areas": sorted(set(train_rooms.areas.tolist())),
        "rooms": {split: len(v) for split, v in names.items()},
        "room_names": names,
        "backbone": backbone_name,
        "backbone_config": backbone_config,
        "weights": str(backbone_file(cfg.checkpoint)) if cfg.checkpoint else "random-init",
        "features": features,
        "in_channels": channels,
        "input_channels": FEATURE_CHANNELS[:channels],
        "block_size": cfg.block_size,
        "stride": cfg.test_stride,
        "num_points": cfg.num_points,
        "training_blocks": (f"SemSegBlocks: per epoch ceil(P / {cfg.num_points}) blocks per training room; a block is "
                            f"centred on a random point of its room, holds the points within {cfg.block_size / 2:g} m "
                            f"in x and y (any z; up to 10 centres tried for more than {max(1, cfg.num_points // 4)} "
                            f"points) and {cfg.num_points} of them are drawn (repeats when fewer); seed {cfg.seed}"),
        "voting": VOTING_RULE,
        "selection": SELECTION_RULE,
        "validation_rooms": f"round({cfg.val_fraction:g} x training rooms), at least 1, seeded by {cfg.seed}",
        "label_fractions": "ceil(fraction x training rooms), at least 1, from a seeded order (nested across fractions)",
        "bn_calibration": (f"random init: BatchNorm statistics averaged over up to {cfg.bn_calibration_blocks} training "
                           "blocks before training" if cfg.random_init else None),
        "augmentation": "none",
        "schedule": schedule_text(cfg),
        "preset": preset_record("semseg", cfg.preset),
        "runs": runs,
        "device": str(device),
        "seconds": time.perf_counter() - start,
        "config": config_record(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def format_semseg(report: dict) -> str:
    """The report as a few lines of text: settings, a row per run, the per-class test IoU."""
    rooms = report["rooms"]
    lines = [
        (f"semseg  {report['dataset']} ({report['dataset_layout']}): test Area_{report['test_area']} ({rooms['test']} "
         f"rooms), train {rooms['train']} / val {rooms['val']} rooms of areas {' '.join(map(str, report['train_areas']))}"),
        f"  backbone        {report['backbone']} ({report['weights']})",
        f"  input           {report['features']}: {', '.join(report['input_channels'])}",
        (f"  blocks          {report['block_size']:g} m x {report['block_size']:g} m, {report['num_points']} points; "
         f"val / test tiled every {report['stride']:g} m, softmax summed per point"),
        f"  selection       {report['selection']}",
        (f"  {'labels':>8s} {'backbone':>9s} {'rooms':>6s} {'steps':>6s} {'best step':>10s} {'val mIoU':>9s}  "
         f"{'test OA':>8s} {'mAcc':>7s} {'mIoU':>7s}"),
    ]
    for run in report["runs"]:
        test = run["test"]
        lines.append(f"  {100 * run['fraction']:7g}% {run['mode']:>9s} {run['labelled_rooms']:6d} {run['steps']:6d} "
                     f"{run['selected']['step']:10d} {100 * run['selected']['miou']:8.2f}%  "
                     f"{100 * test['overall_accuracy']:7.2f}% {100 * test['mean_class_accuracy']:6.2f}% "
                     f"{100 * test['miou']:6.2f}%")
    for run in report["runs"]:
        ious = " ".join(f"{name} {_percent(v)}" for name, v in run["test"]["per_class_iou"].items())
        lines.append(f"  test IoU ({run['mode']}, {100 * run['fraction']:g}%): {ious}")
    return "\n".join(lines + format_preset(report.get("preset")))
