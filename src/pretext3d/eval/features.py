"""Frozen-feature extraction (batched, with progress, on any device, sharded under torchrun)
and the BatchNorm calibration used for randomly initialised backbones."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from pretext3d.data.pointclouds import PointCloudDataset
from pretext3d.utils.device import rank_and_world
from pretext3d.utils.progress import progress_bar

__all__ = ["Features", "extract_features", "calibrate_batchnorm", "batchnorm_calibration", "collate_clouds", "seeded_subset"]


@dataclass
class Features:
    """features: (S', D) float32;  labels: (S',);  indices: (S',) dataset rows they come from;
    skipped: error messages of items that could not be read;  seconds: wall time of the model
    passes (data loading excluded)."""

    features: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def collate_clouds(items: list[dict]) -> dict:
    """Stack readable items into tensors; keep the error messages of unreadable ones."""
    good = [it for it in items if "error" not in it]
    batch: dict = {"errors": [it["error"] for it in items if "error" in it]}
    if good:
        batch["points"] = torch.from_numpy(np.stack([it["points"] for it in good]))
        batch["label"] = torch.tensor([it["label"] for it in good], dtype=torch.int64)
        batch["index"] = torch.tensor([it["index"] for it in good], dtype=torch.int64)
        if all("normals" in it for it in good):
            batch["normals"] = torch.from_numpy(np.stack([it["normals"] for it in good]))
        if all("part_labels" in it for it in good):
            batch["part_labels"] = torch.from_numpy(np.stack([it["part_labels"] for it in good]))
    return batch


def _model_inputs(batch: dict, device: torch.device, use_normals: bool) -> tuple[torch.Tensor, ...]:
    points = batch["points"].to(device, non_blocking=True)
    if not use_normals:
        return (points,)
    if "normals" not in batch:
        raise ValueError("the model takes normals but the dataset has none")
    return points, batch["normals"].to(device, non_blocking=True)


def _loader(dataset, batch_size: int, num_workers: int, shuffle: bool = False, generator=None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=collate_clouds, generator=generator, persistent_workers=False)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: PointCloudDataset,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    use_normals: bool = False,
    progress: bool = True,
    desc: str = "features",
) -> Features:
    """Global features of every cloud of ``dataset`` with ``model`` in eval mode.

    Under torchrun each process embeds every world-th cloud and the results are gathered on all
    processes in dataset order. Unreadable items (lazy folder datasets with on_error="skip") are
    skipped and reported in ``Features.skipped``.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    rank, world = rank_and_world()
    shard = Subset(dataset, list(range(rank, len(dataset), world))) if world > 1 else dataset
    feats, labels, indices, skipped = [], [], [], []
    seconds = 0.0
    batches = _loader(shard, batch_size, num_workers)
    for batch in progress_bar(batches, desc=desc, unit="batch", enabled=progress and rank == 0):
        skipped.extend(batch["errors"])
        if "points" not in batch:
            continue
        inputs = _model_inputs(batch, device, use_normals)
        start = time.perf_counter()
        out = model(*inputs, need_local=False).global_
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        feats.append(out.float().cpu().numpy())
        labels.append(batch["label"].numpy())
        indices.append(batch["index"].numpy())
    dim = feats[0].shape[1] if feats else 0
    result = Features(
        np.concatenate(feats) if feats else np.zeros((0, dim), np.float32),
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        np.concatenate(indices) if indices else np.zeros(0, np.int64),
        skipped, seconds,
    )
    return _gather(result) if world > 1 else result


def _gather(local: Features) -> Features:
    """All processes' features, sorted back into dataset order."""
    parts: list[Features] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(parts, local)
    filled = [p for p in parts if len(p.indices)] or parts[:1]  # a rank may have read nothing
    indices = np.concatenate([p.indices for p in filled])
    order = np.argsort(indices, kind="stable")
    return Features(
        np.concatenate([p.features for p in filled])[order],
        np.concatenate([p.labels for p in filled])[order],
        indices[order],
        [msg for p in parts for msg in p.skipped],
        max(p.seconds for p in parts),
    )


def seeded_subset(dataset: Dataset, count: int, seed: int) -> Subset:
    """min(count, len(dataset)) items of ``dataset`` in a random order seeded by ``seed``
    (what BatchNorm statistics are calibrated on)."""
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    return Subset(dataset, chosen)


@contextmanager
def batchnorm_calibration(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, forward passes set ``model``'s BatchNorm running statistics to the
    cumulative average of the batch statistics (reset first; momentum=None; only the BatchNorm
    layers in train mode); afterwards the momenta are restored and the model is in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    # only the BatchNorm layers in training mode: dropout off, and any module with its own
    # training behaviour (e.g. MeshNet's random face masking) computes as in evaluation
    for m in model.modules():
        m.training = isinstance(m, nn.modules.batchnorm._BatchNorm)
    try:
        yield model
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()


@torch.no_grad()
def calibrate_batchnorm(
    model: nn.Module,
    dataset: PointCloudDataset,
    num_clouds: int = 2048,
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    use_normals: bool = False,
    progress: bool = True,
) -> int:
    """Set every BatchNorm's running statistics to their average over training batches.

    For an untrained backbone the running statistics (mean 0, variance 1) do not describe its
    activations, so eval-mode features would be badly scaled. This resets them, runs the model
    in training mode (dropout off) on ``num_clouds`` randomly chosen clouds of ``dataset`` in
    batches of ``batch_size``, and keeps the cumulative average of the batch statistics
    (momentum=None). Weights are untouched. Returns the number of clouds used. A final batch
    of a single cloud is left out (a BatchNorm over one vector per cloud, as in a projection
    head, has no statistics for it).
    """
    if batch_size < 2:
        raise ValueError(f"BatchNorm calibration needs batches of at least 2 clouds, got {batch_size}")
    device = torch.device(device)
    model = model.to(device)
    used = 0
    batches = _loader(seeded_subset(dataset, num_clouds, seed), batch_size, num_workers)
    with batchnorm_calibration(model):
        for batch in progress_bar(batches, desc="BN calibration", unit="batch", enabled=progress):
            if "points" not in batch or len(batch["points"]) < 2:
                continue
            model(*_model_inputs(batch, device, use_normals))
            used += len(batch["points"])
    if used == 0:
        raise ValueError("BatchNorm calibration found no readable training clouds")
    return used
