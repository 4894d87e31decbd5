"""Datasets as lists of objects to prepare: every reader's split, one object at a time.

``open_source(path)`` wraps any format ``open_splits`` reads and yields ``SourceObject``s
(unique key, class, split) and, per object, either a ``Mesh`` (mesh formats and the built-in
shapes) or a point cloud (pre-sampled formats), untouched: the store does the sampling.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretext3d.data.builtin import CLASSES as BUILTIN_CLASSES
from pretext3d.data.builtin import make_shape, parse_builtin_spec
from pretext3d.data.errors import DataFormatError
from pretext3d.data.meshes import Mesh, load_mesh
from pretext3d.data.pointclouds import PointCloudDataset
from pretext3d.data.readers import MESH_FORMATS, detect_format, open_splits
from pretext3d.utils.io import file_digest

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
    """One dataset on disk (any supported format) seen as objects to prepare; ``only_splits``
    keeps the objects of those splits (all when None)."""

    def __init__(self, path: str | Path, fmt: str | None = None, only_splits: tuple[str, ...] | None = None):
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
        self.only_splits = tuple(only_splits) if only_splits else None
        if self.only_splits:
            unknown = [s for s in self.only_splits if s not in self.splits]
            if unknown:
                raise DataFormatError(self.path, f"has no split {unknown[0]!r} (its splits: {', '.join(self.splits)})")

    def __getstate__(self) -> dict:
        """Pickles as (path, format, splits): a worker process reopens the data instead of receiving it."""
        return {"path": self.path, "fmt": self.fmt, "only_splits": self.only_splits}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["fmt"], state.get("only_splits"))

    def default_up(self) -> str:
        """The up axis of the data (``default_up_axis``)."""
        return default_up_axis(self.fmt, self.up_axis)

    def objects(self) -> list[SourceObject]:
        found: list[SourceObject] = []
        seen: set[str] = set()
        for split, dataset in self.splits.items():
            if self.only_splits and split not in self.only_splits:
                continue
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


    def digest(self, obj: SourceObject) -> str:
        """SHA-256 (hex) of what the object is made from, so that a changed object is noticed:
        a mesh file's bytes (an OBJ's with its material files and their textures), a per-object
        point file's bytes, a cloud's arrays inside a many-object file, a built-in shape's recipe.
        Raises DataFormatError (or OSError) naming the file when it cannot be read."""
        if self.fmt == "builtin":
            return hashlib.sha256(f"builtin {self._builtin} {obj.label} {obj.name}".encode()).hexdigest()
        dataset = self.splits[obj.split]
        files = getattr(dataset, "files", None)
        if files is not None:
            return _files_digest(Path(files[obj.position]))
        item = dataset[obj.position]
        if "error" in item:
            raise DataFormatError(f"{self.path} [{obj.key}]", item["error"])
        h = hashlib.sha256()
        for name in ("points", "normals"):
            if item.get(name) is not None:
                h.update(np.ascontiguousarray(item[name], np.float32).tobytes())
        return h.hexdigest()


def _obj_companions(obj_file: Path) -> list[Path]:
    """The material files an OBJ names (``mtllib``) and the texture files they name (``map_*``),
    those that exist, in the order named."""
    found: list[Path] = []

    def named(file: Path, keyword: str) -> list[Path]:
        try:
            lines = file.read_text(errors="replace").splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            parts = line.strip().split(None, 1)
            if len(parts) == 2 and (parts[0] == keyword or (keyword == "map_" and parts[0].startswith("map_"))):
                candidate = file.parent / parts[1].split()[-1]
                if candidate.is_file():
                    out.append(candidate)
        return out

    for material in named(obj_file, "mtllib"):
        found.append(material)
        found.extend(named(material, "map_"))
    return found


def _files_digest(file: Path) -> str:
    """SHA-256 of a file's digest and, for an OBJ, those of its materials and textures."""
    parts = [file, *(_obj_companions(file) if file.suffix.lower() == ".obj" else [])]
    return hashlib.sha256(" ".join(file_digest(p) for p in parts).encode()).hexdigest()


def open_source(path: str | Path, fmt: str | None = None, only_splits: tuple[str, ...] | None = None) -> Source:
    return Source(path, fmt, only_splits)
