"""Point clouds of any dataset the protocols take: every format the readers know, and prepared
stores (``pretext3d prepare``: their stored points, kept in farthest-point order so the first N
are well spread), each optionally cut to a trial ``Selection`` (``--classes``, ``--per-class``).

``open_point_splits(path)`` gives ``{"train": PointCloudDataset, "test": ...}`` (a store gives
every split it holds) whatever the source; ``point_format(path)`` names the source's format
("store" for a prepared store, else ``readers.detect_format``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pretext3d.data.errors import DataFormatError
from pretext3d.data.pointclouds import LazyPointClouds, PointCloudDataset, SubsetPointClouds, item_seed, select_points
from pretext3d.data.readers import detect_format, open_splits
from pretext3d.data.selection import Selection
from pretext3d.data.store import read_index, read_object, read_store_settings, store_file

__all__ = ["STORE", "is_store", "point_format", "open_point_splits", "select_splits"]

STORE = "store"


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is a prepared store (a folder with store.json)."""
    text = str(path)
    builtin = text == "builtin" or text.startswith("builtin:")  # the readers' spelling of the built-in data
    return not builtin and (Path(text) / "store.json").is_file()


def point_format(path: str | Path) -> str:
    """"store" for a prepared store, else the reader's format name (``detect_format``)."""
    return STORE if is_store(path) else detect_format(path)


def select_splits(splits: dict[str, PointCloudDataset], selection: Selection | None) -> dict[str, PointCloudDataset]:
    """Every split cut to ``selection`` (unchanged when it keeps everything)."""
    if selection is None or not selection.active:
        return splits
    tag = selection.describe() or ""
    return {name: SubsetPointClouds(split, selection, tag) for name, split in splits.items()}


def open_point_splits(path: str | Path, num_points: int | None = 1024, subsample: str = "first", seed: int = 0,
                      subset: str | None = None, on_error: str = "raise", fmt: str | None = None,
                      selection: Selection | None = None) -> dict[str, PointCloudDataset]:
    """The splits of any dataset or prepared store as point clouds (see the module docstring);
    the arguments are those of ``readers.open_splits``, plus ``selection``."""
    fmt = fmt or point_format(path)
    if fmt != STORE:
        splits = open_splits(path, num_points, subsample, seed, subset, on_error, fmt)  # type: ignore[arg-type]
    elif subset is not None:
        raise DataFormatError(path, f"is a prepared store; --subset {subset} reads ModelNet40 files (for a store, "
                                    "choose classes with --classes)")
    else:
        splits = _store_splits(Path(path), num_points, subsample, seed, on_error)
    return select_splits(splits, selection)


def _store_splits(root: Path, num_points: int | None, subsample: str, seed: int,
                  on_error: str) -> dict[str, PointCloudDataset]:
    """One lazily read dataset per split of the store's prepared objects."""
    settings, _ = read_store_settings(root)
    index = read_index(root)
    count = num_points or settings.points
    if count > settings.points:
        raise DataFormatError(root, f"stores {settings.points} points per object, fewer than the {count} asked for")
    by_split: dict[str, list[dict]] = {}
    for entry in index["objects"]:
        by_split.setdefault(entry["split"], []).append(entry)
    for split in ("train", "test"):
        by_split.setdefault(split, [])
    splits: dict[str, PointCloudDataset] = {}
    for split, entries in by_split.items():
        names = [e["name"] for e in entries]

        def load(file: Path, i: int, names: list[str] = names) -> np.ndarray:
            try:
                arrays = read_object(file, ("points", "normals"))
                cloud = np.concatenate([arrays["points"], arrays["normals"]], axis=1).astype(np.float32)
            except Exception as err:  # zip/npy errors of a damaged file come in many types
                raise DataFormatError(file, f"cannot be read ({type(err).__name__}: {err}); run `pretext3d verify`") from None
            return select_points(cloud, count, subsample, item_seed(seed, names[i]), str(file))  # type: ignore[arg-type]

        splits[split] = LazyPointClouds([store_file(root, e["file"]) for e in entries],
                                        np.array([e["label"] for e in entries], dtype=np.int64), index["classes"],
                                        names, split, str(root), load, count, True, settings.up, on_error)  # type: ignore[arg-type]
    return splits
