"""Datasets as lists of objects to prepare: every reader's split, one object at a time.

``open_source(path)`` wraps any format ``open_splits`` reads and yields ``SourceObject``s
(unique key, class, split) and, per object, either a ``Mesh`` (mesh formats and the built-in
shapes) or a point cloud (pre-sampled formats), untouched: the store does the sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretext3d.data.builtin import CLASSES as BUILTIN_CLASSES
from pretext3d.data.builtin import make_shape, parse_builtin_spec
from pretext3d.data.errors import DataFormatError
from pretext3d.data.meshes import Mesh, load_mesh
from pretext3d.data.pointclouds import PointCloudDataset
from pretext3d.data.readers import MESH_FORMATS, detect_format, open_splits

__all__ = ["Source", "SourceObject", "open_source", "default_up_axis"]


def default_up_axis(fmt: str, known: str | None = None) -> str:
    """The up axis of a dataset: as its reader knows it, else y for OBJ/ShapeNet-style mesh
    folders and z (ModelNet's convention) for everything else."""
    if known:
        return known
    return "y" if fmt == "mesh_folder" else "z"


@dataclass(frozen=True)
class SourceObject:
    """key: unique id ("<split>/<name>"); position: index in its split of the source."""

    key: str
    name: str
    split: str
    label: int
    position: int


@dataclass
class LoadedObject:
    """What one source object holds: a mesh, or points (M, 3) with optional normals (M, 3).
    centre, scale: once normalised, ``normalised = (original - centre) / scale``."""

    mesh: Mesh | None = None
    points: np.ndarray | None = None
    normals: np.ndarray | None = None
    origin: str = ""
    estimated_normals: bool = False
    centre: np.ndarray | None = None
    scale: float = 1.0


@dataclass
class _BuiltinNames:
    """The built-in dataset's objects of one split, without making their meshes."""

    names: list[str]
    labels: np.ndarray
    classes: list[str]
    up_axis: str = "z"


def _builtin_names(seed: int, train: int, test: int) -> dict[str, _BuiltinNames]:
    """Same names and order as ``builtin_splits``: by class, then index; the first ``train``
    indices of each class are training objects."""
    splits = {}
    for split, indices in (("train", range(train)), ("test", range(train, train + test))):
        pairs = [(f"{cls}_{i:04d}", label) for label, cls in enumerate(BUILTIN_CLASSES) for i in indices]
        splits[split] = _BuiltinNames([n for n, _ in pairs], np.array([lab for _, lab in pairs], dtype=np.int64),
                                      list(BUILTIN_CLASSES))
    return splits


class Source:
    """One dataset on disk (any supported format) seen as objects to prepare."""

    def __init__(self, path: str | Path, fmt: str | None = None):
        self.path = str(path)
        self.fmt = fmt or detect_format(path)
        self.kind = "mesh" if self.fmt in MESH_FORMATS else "points"
        self._builtin = parse_builtin_spec(self.path) if self.fmt == "builtin" else None
        if self._builtin is not None:  # names only: the meshes are made per object by load()
            self.splits: dict[str, PointCloudDataset | _BuiltinNames] = _builtin_names(**self._builtin)
        else:  # num_points=None keeps every stored point; meshes are not sampled by this wrapper
            self.splits = open_splits(path, num_points=None, fmt=self.fmt, on_error="skip")
        first = next(iter(self.splits.values()))
        self.classes: list[str] = list(first.classes)
        self.up_axis: str | None = first.up_axis

    def __getstate__(self) -> dict:
        """Pickles as (path, format): a worker process reopens the data instead of receiving it."""
        return {"path": self.path, "fmt": self.fmt}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["fmt"])

    def default_up(self) -> str:
        """The up axis of the data (``default_up_axis``)."""
        return default_up_axis(self.fmt, self.up_axis)

    def objects(self) -> list[SourceObject]:
        found: list[SourceObject] = []
        seen: set[str] = set()
        for split, dataset in self.splits.items():
            for position, name in enumerate(dataset.names):
                key = f"{split}/{name}"
                if key in seen:  # two files with one name: keep both, apart
                    key = f"{key}#{position}"
                seen.add(key)
                found.append(SourceObject(key, name, split, int(dataset.labels[position]), position))
        return found

    def load(self, obj: SourceObject) -> LoadedObject:
        """Read one object; raises DataFormatError naming its file when it is malformed."""
        dataset = self.splits[obj.split]
        if self.fmt == "builtin":
            label, index = obj.label, int(obj.name.rsplit("_", 1)[1])
            mesh = make_shape(self.classes[label], np.random.default_rng([self._builtin["seed"], label, index]))
            return LoadedObject(mesh=mesh, origin=f"builtin {obj.name}")
        if self.kind == "mesh":
            file = dataset.files[obj.position]  # type: ignore[attr-defined]
            return LoadedObject(mesh=load_mesh(file), origin=str(file))
        item = dataset[obj.position]
        origin = str(getattr(dataset, "files", [self.path] * len(dataset))[obj.position])
        if "error" in item:
            raise DataFormatError(origin, item["error"])
        return LoadedObject(points=item["points"], normals=item.get("normals"), origin=f"{origin} [{obj.key}]"
                            if origin == self.path else origin)


def open_source(path: str | Path, fmt: str | None = None) -> Source:
    return Source(path, fmt)
