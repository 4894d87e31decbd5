"""Part segmentation data: ShapeNetPart (``shapenetcore_partanno_segmentation_benchmark_v0_normal``)
and the built-in shapes with parts.

``open_partseg(path)`` returns ``{"train", "val", "test"}`` PartSegDatasets whose items are
``{"points": (N, 3) float32, "normals": (N, 3) float32, "label": category id, "part_labels": (N,)
int64 global part ids, "index", "name"}``. Part ids are global across categories (ShapeNetPart's
50); ``category_parts[c]`` lists the ids of category c, so per-shape IoU is taken over the parts
of the shape's own category.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

from pretext3d.data.errors import DataFormatError
from pretext3d.data.pointclouds import PointCloudDataset, item_seed
from pretext3d.data.readers import read_text_table
from pretext3d.data.splits import carve_validation, resample_indices
from pretext3d.geometry.transforms import normalize_unit_sphere

__all__ = [
    "PART_SPLITS",
    "SHAPENETPART_CATEGORY_PARTS",
    "SHAPENETPART_CLASSES",
    "PartSegDataset",
    "open_partseg",
    "read_partseg_txt",
]

OnError = Literal["raise", "skip"]
PART_SPLITS = ("train", "val", "test")

# ShapeNetPart's 16 categories (index = category id) and how many parts each has; global part
# ids run through the categories in this order: Airplane 0-3, Bag 4-5, ..., Table 47-49.
_SHAPENETPART_PART_COUNTS = {
    "Airplane": 4, "Bag": 2, "Cap": 2, "Car": 4, "Chair": 4, "Earphone": 3, "Guitar": 3, "Knife": 2,
    "Lamp": 4, "Laptop": 2, "Motorbike": 6, "Mug": 2, "Pistol": 3, "Rocket": 3, "Skateboard": 3, "Table": 3,
}
SHAPENETPART_CLASSES = list(_SHAPENETPART_PART_COUNTS)


def _consecutive_parts(counts: Sequence[int]) -> dict[int, list[int]]:
    """Category id -> its global part ids, numbering the parts of the categories one after another."""
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    return {c: list(range(starts[c], starts[c + 1])) for c in range(len(counts))}


SHAPENETPART_CATEGORY_PARTS = _consecutive_parts(list(_SHAPENETPART_PART_COUNTS.values()))


class PartSegDataset(PointCloudDataset):
    """One split of part-labelled shapes, each read by ``loader(index) -> (cloud (M, 6) x y z
    nx ny nz float32, parts (M,) int64)`` when asked for.

    num_points: points per item, resampled per shape with a seed from ``item_seed(seed, name)``
    (``resample_indices``: a random subset, or every point plus random repeats when the shape
    has fewer); None keeps every point (items then differ in size). With ``on_error="skip"`` a
    malformed file yields ``{"index", "name", "error"}`` instead of raising.

    Attributes beyond PointCloudDataset's: ``category_parts`` (category id -> its global part
    ids), ``num_parts`` (number of global part ids) and ``part_category`` ((num_parts,) the
    category of each part id).
    """

    num_points: int | None  # type: ignore[assignment]

    def __init__(
        self,
        loader: Callable[[int], tuple[np.ndarray, np.ndarray]],
        labels: np.ndarray,
        classes: Sequence[str],
        names: Sequence[str],
        split: str,
        source: str,
        category_parts: dict[int, list[int]],
        num_points: int | None,
        seed: int = 0,
        up_axis: str | None = None,
        on_error: OnError = "raise",
    ):
        if len(labels) != len(names):
            raise ValueError(f"{len(labels)} labels for {len(names)} names")
        if num_points is not None and num_points < 1:
            raise ValueError(f"num_points must be positive or None, got {num_points}")
        self.loader = loader
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes, self.names = list(classes), list(names)
        self.split, self.source, self.up_axis = split, source, up_axis
        self.category_parts = {int(c): [int(p) for p in parts] for c, parts in category_parts.items()}
        self.num_parts = 1 + max(p for parts in self.category_parts.values() for p in parts)
        self.num_points, self.seed, self.on_error = num_points, seed, on_error
        self.has_normals = True

    @property
    def part_category(self) -> np.ndarray:
        """(num_parts,) int64: the category id of each global part id (-1 for an unused id)."""
        owner = np.full(self.num_parts, -1, dtype=np.int64)
        for category, parts in self.category_parts.items():
            owner[parts] = category
        return owner

    def describe(self) -> str:
        points = "all" if self.num_points is None else self.num_points
        return (f"{self.source} [{self.split}]: {len(self)} shapes, {len(self.classes)} categories, "
                f"{self.num_parts} parts, {points} points")

    def __getitem__(self, i: int) -> dict:
        name = self.names[i]
        try:
            cloud, parts = self.loader(i)
        except DataFormatError as err:
            if self.on_error == "skip":
                return {"index": i, "name": name, "error": str(err)}
            raise
        if self.num_points is not None:
            keep = resample_indices(len(cloud), self.num_points, np.random.default_rng(item_seed(self.seed, name)))
            cloud, parts = cloud[keep], parts[keep]
        return {
            "points": np.ascontiguousarray(cloud[:, :3], dtype=np.float32),
            "normals": np.ascontiguousarray(cloud[:, 3:6], dtype=np.float32),
            "label": int(self.labels[i]),
            "part_labels": np.asarray(parts, dtype=np.int64),
            "index": i,
            "name": name,
        }


def read_partseg_txt(path: Path, allowed_parts: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a ShapeNetPart ``x y z nx ny nz part`` file: (cloud (M, 6) float32, parts (M,) int64).

    The coordinates are centred on their mean and scaled into the unit sphere (as the built-in
    shapes are, and as PointNet++'s ShapeNetPart loader does; the files are close to that
    already); normals are kept. Part ids must be whole numbers and, when ``allowed_parts`` is
    given, among them (the parts of the shape's category).
    """
    table = read_text_table(path, (7,), "x y z nx ny nz part")
    raw_parts = table[:, 6]
    if (raw_parts != np.round(raw_parts)).any():
        raise DataFormatError(path, "has part labels that are not whole numbers (last column)")
    parts = raw_parts.astype(np.int64)
    if allowed_parts is not None:
        stray = np.setdiff1d(parts, np.asarray(allowed_parts))
        if stray.size:
            raise DataFormatError(path, f"has part ids {stray.tolist()} outside its category's {list(allowed_parts)}")
    return normalize_unit_sphere(table[:, :6]).astype(np.float32), parts


def open_partseg(
    path: str | Path,
    num_points: int | None = 2048,
    seed: int = 0,
    on_error: OnError = "raise",
    val_fraction: float = 0.2,
) -> dict[str, PartSegDataset]:
    """Open the train, val and test splits of a part-segmentation dataset.

    path: a ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` folder (or the folder
    holding it), or ``builtin`` / ``builtin:seed=..,train=..,test=..``.

    * ShapeNetPart: the official train/val/test lists; 16 categories, 50 global part ids; files
      are read lazily (``on_error="skip"`` turns a malformed file into an item with "error").
    * Built-in shapes: train and test of ``builtin_splits``, sampled at ``num_points`` (2048 when
      None); "val" is ``val_fraction`` of each class carved from train (``carve_validation``,
      seeded by the data seed), so model selection never looks at test; "train" keeps the rest.

    num_points: points per item, resampled per shape (seeded by ``seed`` and the shape's name);
    None keeps every point. Clouds are centred and scaled into the unit sphere.
    """
    text = str(path)
    if text == "builtin" or text.startswith("builtin:"):
        return _builtin_partseg(text, num_points, seed, val_fraction)
    return _read_shapenetpart(_shapenetpart_root(Path(path)), num_points, seed, on_error)


def _shapenetpart_root(path: Path) -> Path:
    if not path.exists():
        raise DataFormatError(path, "does not exist")
    for candidate in (path, path / "shapenetcore_partanno_segmentation_benchmark_v0_normal"):
        if (candidate / "synsetoffset2category.txt").is_file():
            return candidate
    raise DataFormatError(path, "is not a ShapeNetPart folder (no synsetoffset2category.txt, "
                                "expected shapenetcore_partanno_segmentation_benchmark_v0_normal)")


def _read_synsets(file: Path) -> dict[str, int]:
    """synsetoffset2category.txt ('Airplane\\t02691156' per line) -> synset -> category id."""
    synsets = {}
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DataFormatError(file, f"line {number} is not '<category> <synset>': {line!r}")
        if fields[0] not in SHAPENETPART_CLASSES:
            raise DataFormatError(file, f"names category {fields[0]!r}, not one of ShapeNetPart's 16 "
                                        f"({', '.join(SHAPENETPART_CLASSES)})")
        synsets[fields[1]] = SHAPENETPART_CLASSES.index(fields[0])
    if not synsets:
        raise DataFormatError(file, "is empty")
    return synsets


def _read_split_list(listing: Path, synsets: dict[str, int]) -> tuple[list[Path], list[int], list[str]]:
    """A shuffled_<split>_file_list.json -> (files, category ids, names '<synset>/<id>')."""
    if not listing.is_file():
        raise DataFormatError(listing, "is missing (it lists the shapes of the split)")
    try:
        entries = json.loads(listing.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFormatError(listing, f"is not valid JSON ({err})") from None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise DataFormatError(listing, "must be a JSON list of 'shape_data/<synset>/<id>' strings")
    root = listing.parent.parent
    files, labels, names = [], [], []
    for entry in entries:
        fields = entry.strip("/").split("/")
        if len(fields) < 2 or fields[-2] not in synsets:
            raise DataFormatError(listing, f"lists {entry!r}, whose synset is not in synsetoffset2category.txt")
        synset, shape = fields[-2], fields[-1]
        files.append(root / synset / f"{shape}.txt")
        labels.append(synsets[synset])
        names.append(f"{synset}/{shape}")
    return files, labels, names


def _read_shapenetpart(root: Path, num_points: int | None, seed: int, on_error: OnError) -> dict[str, PartSegDataset]:
    synsets = _read_synsets(root / "synsetoffset2category.txt")
    out = {}
    for split in PART_SPLITS:
        files, labels, names = _read_split_list(root / "train_test_split" / f"shuffled_{split}_file_list.json", synsets)

        def loader(i: int, files: list[Path] = files, labels: list[int] = labels) -> tuple[np.ndarray, np.ndarray]:
            return read_partseg_txt(files[i], SHAPENETPART_CATEGORY_PARTS[labels[i]])

        out[split] = PartSegDataset(loader, np.array(labels, dtype=np.int64), SHAPENETPART_CLASSES, names, split,
                                    str(root), SHAPENETPART_CATEGORY_PARTS, num_points, seed, on_error=on_error)
    return out


def _builtin_partseg(spec: str, num_points: int | None, seed: int, val_fraction: float) -> dict[str, PartSegDataset]:
    from pretext3d.data.builtin import CLASSES, PART_NAMES, builtin_splits, parse_builtin_spec

    options = parse_builtin_spec(spec, seed)
    base = builtin_splits(num_points=num_points or 2048, **options)
    category_parts = _consecutive_parts([len(PART_NAMES[c]) for c in CLASSES])
    train_rows, val_rows = carve_validation(base["train"].labels, val_fraction, options["seed"])
    chosen = {"train": (base["train"], train_rows), "val": (base["train"], val_rows),
              "test": (base["test"], np.arange(len(base["test"])))}
    out = {}
    for split, (clouds, rows) in chosen.items():

        def loader(i: int, clouds=clouds, rows=rows) -> tuple[np.ndarray, np.ndarray]:
            item = clouds[int(rows[i])]
            return np.concatenate([item["points"], item["normals"]], axis=1), item["part_labels"]

        out[split] = PartSegDataset(loader, clouds.labels[rows], CLASSES, [clouds.names[r] for r in rows], split,
                                    clouds.source, category_parts, num_points, seed, up_axis="z")
    return out
