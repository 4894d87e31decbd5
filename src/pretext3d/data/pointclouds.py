"""Point-cloud datasets: one split of labelled clouds behind a common torch Dataset interface.

Every dataset yields ``{"points": (N, 3) float32, "label": int, "index": int}`` (plus
``"normals": (N, 3)`` when the source has them) and exposes ``labels`` (S,), ``classes`` and
``names`` without loading the clouds, so evaluation code can work on any source.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
from torch.utils.data import Dataset

from pretext3d.data.errors import DataFormatError
from pretext3d.data.selection import Selection, select_rows
from pretext3d.geometry.sampling import farthest_point_sample, mesh_to_points
from pretext3d.geometry.transforms import normalize_unit_sphere

__all__ = [
    "PointCloudDataset",
    "ArrayPointClouds",
    "LazyPointClouds",
    "SubsetPointClouds",
    "Subsample",
    "select_points",
    "subsample_indices",
    "item_seed",
]

Subsample = Literal["first", "random", "fps"]


def item_seed(seed: int, key: str) -> int:
    """A stable per-item seed (independent of process, order and Python's hash salt)."""
    return (zlib.crc32(key.encode(errors="surrogateescape")) * 1_000_003 + seed) % (2**32)


def subsample_indices(points: np.ndarray, n: int, mode: Subsample, seed: int, origin: str = "cloud") -> np.ndarray | slice:
    """Which n of the M rows of points (M, C) to keep: the first n (the published convention
    for pre-sampled files), n at random without replacement, or by farthest point sampling."""
    m = len(points)
    if n > m:
        raise DataFormatError(origin, f"has {m} points, fewer than the {n} requested")
    if mode not in ("first", "random", "fps"):
        raise ValueError(f"subsample must be first, random or fps, got {mode!r}")
    if n == m or mode == "first":
        return slice(0, n)
    if mode == "random":
        return np.sort(np.random.default_rng(seed).choice(m, n, replace=False))
    return farthest_point_sample(np.ascontiguousarray(points[:, :3]), n)


def select_points(points: np.ndarray, n: int, mode: Subsample, seed: int, origin: str = "cloud") -> np.ndarray:
    """points[subsample_indices(...)]: (n, C)."""
    return points[subsample_indices(points, n, mode, seed, origin)]


class PointCloudDataset(Dataset):
    """Base class: ``labels`` (S,) int64, ``classes`` (names, index = label), ``names`` (S,),
    ``split``, ``source`` (where it came from), ``up_axis`` ('x'/'y'/'z' when known)."""

    labels: np.ndarray
    classes: list[str]
    names: list[str]
    split: str
    source: str
    up_axis: str | None
    num_points: int
    has_normals: bool

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self) -> str:
        return f"{self.source} [{self.split}]: {len(self)} clouds, {len(self.classes)} classes, {self.num_points} points"

    def load_all(self, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """All clouds as one array (S', N, 3) and their labels (S',); S' < S only when a lazy
        dataset skips malformed files (items with an "error")."""
        items = range(len(self))
        if progress:
            from pretext3d.utils.progress import progress_bar

            items = progress_bar(items, desc=f"loading {self.split}", unit="cloud")
        loaded = [(item["points"], item["label"]) for item in map(self.__getitem__, items) if "error" not in item]
        return np.stack([p for p, _ in loaded]), np.array([lab for _, lab in loaded], dtype=np.int64)


class ArrayPointClouds(PointCloudDataset):
    """Clouds held in memory. points: (S, M, 3) or (S, M, 6) with normals; labels: (S,);
    point_labels: optional (S, M) per-point part labels (items then carry "part_labels")."""

    def __init__(
        self,
        points: np.ndarray,
        labels: np.ndarray,
        classes: Sequence[str],
        names: Sequence[str],
        split: str,
        source: str,
        num_points: int | None = None,
        subsample: Subsample = "first",
        seed: int = 0,
        up_axis: str | None = None,
        point_labels: np.ndarray | None = None,
    ):
        if points.ndim != 3 or points.shape[2] not in (3, 6) or not np.issubdtype(points.dtype, np.number):
            raise DataFormatError(source, f"{split} points must be numeric (S, N, 3) or (S, N, 6), got {points.dtype} {points.shape}")
        if len(labels) != len(points) or len(names) != len(points):
            raise DataFormatError(source, f"{split}: {len(points)} clouds but {len(labels)} labels and {len(names)} names")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataFormatError(source, f"{split} labels must lie in [0, {len(classes)}), found {labels.min()}..{labels.max()}")
        self.num_points = num_points or points.shape[1]
        if self.num_points > points.shape[1]:
            raise DataFormatError(source, f"has {points.shape[1]} points per cloud, fewer than the {self.num_points} requested")
        bad = ~np.isfinite(points).all(axis=(1, 2))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataFormatError(source, f"{split} cloud {names[first]!r} (and {int(bad.sum()) - 1} more) has NaN or infinite coordinates")
        self._points = points
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.names = list(names)
        self.split, self.source, self.up_axis = split, source, up_axis
        self.subsample, self.seed = subsample, seed
        self.has_normals = points.shape[2] == 6
        if point_labels is not None and point_labels.shape != points.shape[:2]:
            raise DataFormatError(source, f"{split} point labels {point_labels.shape} do not match points {points.shape}")
        self.point_labels = point_labels

    def __getitem__(self, i: int) -> dict:
        cloud = np.asarray(self._points[i], dtype=np.float32)
        keep = subsample_indices(cloud, self.num_points, self.subsample, item_seed(self.seed, self.names[i]), self.names[i])
        cloud = cloud[keep]
        item = {"points": np.ascontiguousarray(cloud[:, :3]), "label": int(self.labels[i]), "index": i}
        if self.has_normals:
            item["normals"] = np.ascontiguousarray(cloud[:, 3:6])
        if self.point_labels is not None:
            item["part_labels"] = np.asarray(self.point_labels[i][keep], dtype=np.int64)
        return item

    def load_all(self, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if self.subsample == "first" or self.num_points == self._points.shape[1]:
            return np.ascontiguousarray(self._points[:, : self.num_points, :3], dtype=np.float32), self.labels
        return super().load_all(progress)


class LazyPointClouds(PointCloudDataset):
    """Clouds read from one file each when asked for (``loader(path, index) -> (M, 3|6)``).

    With ``on_error="skip"``, a malformed file yields ``{"index": i, "error": message}``
    instead of raising (batch jobs drop and report it); with ``"raise"`` the DataFormatError
    propagates.
    """

    def __init__(
        self,
        files: Sequence[Path],
        labels: np.ndarray,
        classes: Sequence[str],
        names: Sequence[str],
        split: str,
        source: str,
        loader: Callable[[Path, int], np.ndarray],
        num_points: int,
        has_normals: bool,
        up_axis: str | None = None,
        on_error: Literal["raise", "skip"] = "raise",
    ):
        self.files = list(files)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes, self.names = list(classes), list(names)
        self.split, self.source, self.up_axis = split, source, up_axis
        self.loader, self.num_points, self.has_normals = loader, num_points, has_normals
        self.on_error = on_error

    def __getitem__(self, i: int) -> dict:
        try:
            cloud = self.loader(self.files[i], i)
        except DataFormatError as err:
            if self.on_error == "skip":
                return {"index": i, "error": str(err)}
            raise
        item = {"points": np.ascontiguousarray(cloud[:, :3], dtype=np.float32), "label": int(self.labels[i]), "index": i}
        if self.has_normals:
            item["normals"] = np.ascontiguousarray(cloud[:, 3:6], dtype=np.float32)
        return item


class SubsetPointClouds(PointCloudDataset):
    """Some of another dataset's clouds with labels renumbered: the classes and at most N
    objects per class of a ``Selection`` (e.g. ModelNet10 of 40; see ``data.selection``)."""

    def __init__(self, base: PointCloudDataset, selection: Selection, tag: str):
        self.rows, self.classes, self.labels = select_rows(base.labels, base.classes, selection, base.source)
        self.base = base
        self.names = [base.names[r] for r in self.rows]
        self.split, self.up_axis = base.split, base.up_axis
        self.source = f"{base.source} ({tag})"
        self.num_points, self.has_normals = base.num_points, base.has_normals

    def __getitem__(self, i: int) -> dict:
        item = self.base[int(self.rows[i])]
        return dict(item, index=i) if "error" in item else dict(item, label=int(self.labels[i]), index=i)

    def load_all(self, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(self.base, ArrayPointClouds):
            return self.base.load_all()[0][self.rows], self.labels
        return super().load_all(progress)


def mesh_cloud_loader(
    num_points: int, oversample: int, seed: int, normalize: bool, load: Callable[[Path], "object"],
    names: Sequence[str],
) -> Callable[[Path, int], np.ndarray]:
    """A loader that reads a mesh and samples ``num_points`` (area-weighted, then FPS) with
    normals; the sample is seeded by the item's name, so runs repeat wherever the data lives."""

    def loader(path: Path, index: int) -> np.ndarray:
        mesh = load(path)
        pts, nrm, _ = mesh_to_points(mesh.vertices, mesh.faces, num_points, oversample, item_seed(seed, names[index]))
        if normalize:
            pts = normalize_unit_sphere(pts)
        return np.concatenate([pts, nrm], axis=1)

    return loader
