"""Readers for the point-cloud and mesh formats users already have, with format detection.

``open_splits(path)`` returns ``{"train": dataset, "test": dataset}`` for:

* ``npz``: a file with ``train_x`` (S, N, 3|6), ``train_y``, ``test_x``, ``test_y`` and optional
  ``classes``, ``train_names``, ``test_names`` (the layout of modelnet40_1024.npz);
* ``ply_hdf5``: a ``modelnet40_ply_hdf5_2048`` folder (``ply_data_{train,test}*.h5`` holding
  ``data``/``label`` [/``normal``], and ``shape_names.txt``);
* ``normal_resampled``: a ``modelnet40_normal_resampled`` folder (``<class>/<class>_XXXX.txt``
  with x,y,z,nx,ny,nz rows, ``modelnet40_{train,test}.txt``, ``modelnet40_shape_names.txt``);
* ``modelnet_meshes``: ``ModelNet40/<class>/{train,test}/*.off``;
* ``mesh_folder``: any folder of OFF/OBJ/PLY/STL meshes, class = top-level folder name; the
  split comes from a ``train``/``test`` folder in the path when there is one, otherwise every
  fifth file of each class (sorted by path) is a test file;
* ``scanobjectnn``: ScanObjectNN's ``h5_files`` folder (holding ``main_split/`` and/or
  ``main_split_nobg/``), one of those two folders, or one of its ``{training,test}_objectdataset*.h5``
  files; the variant is a path suffix ``PATH:obj_only``, ``PATH:obj_bg`` or ``PATH:pb_t50_rs``
  (see ``scanobjectnn_files``);
* ``builtin``: the procedural dataset (``builtin`` or ``builtin:seed=3,train=40,test=10``).

Meshes are read with trimesh and sampled on the fly (area-weighted, then farthest point
sampling, normalised to the unit sphere). Pre-sampled files keep their first N points unless
``subsample`` says otherwise. ``subset="modelnet10"`` keeps the ten ModelNet10 classes.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np

from pretext3d.data.errors import DataFormatError
from pretext3d.data.meshes import MESH_SUFFIXES, load_mesh
from pretext3d.data.pointclouds import (
    ArrayPointClouds,
    LazyPointClouds,
    PointCloudDataset,
    Subsample,
    SubsetPointClouds,
    item_seed,
    mesh_cloud_loader,
    select_points,
)
from pretext3d.data.selection import Selection

__all__ = [
    "FORMATS",
    "MESH_FORMATS",
    "MODELNET10_CLASSES",
    "SCANOBJECTNN_CLASSES",
    "SCANOBJECTNN_VARIANTS",
    "detect_format",
    "open_splits",
    "parse_scanobjectnn_spec",
    "read_h5_clouds",
    "read_text_table",
    "read_xyz_normal_txt",
    "scanobjectnn_files",
]

FORMATS = ("npz", "ply_hdf5", "normal_resampled", "modelnet_meshes", "mesh_folder", "scanobjectnn", "builtin")
MESH_FORMATS = ("modelnet_meshes", "mesh_folder", "builtin")  # clouds sampled from meshes, seeded
MODELNET10_CLASSES = ["bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet"]
SPLITS = ("train", "test")
OnError = Literal["raise", "skip"]


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def detect_format(path: str | Path) -> str:
    """Name the format of a dataset file or folder (one of ``FORMATS``)."""
    text = str(path)
    if text == "builtin" or text.startswith("builtin:"):
        return "builtin"
    path, variant = parse_scanobjectnn_spec(path)
    if not path.exists():
        raise DataFormatError(path, "does not exist")
    if variant is not None or _is_scanobjectnn(path):
        return "scanobjectnn"
    if path.is_file():
        if path.suffix == ".npz":
            return "npz"
        if path.suffix == ".h5":
            return "ply_hdf5"
        raise DataFormatError(path, "is not a supported dataset file (expected .npz, or a folder)")
    if any(path.glob("ply_data_*.h5")):
        return "ply_hdf5"
    if any(path.glob("modelnet*_shape_names.txt")):
        return "normal_resampled"
    class_dirs = [d for d in path.iterdir() if d.is_dir()]
    if any((d / s).is_dir() and any((d / s).glob("*.off")) for d in class_dirs for s in SPLITS):
        return "modelnet_meshes"
    for d in class_dirs:
        if any(f.suffix.lower() in MESH_SUFFIXES for f in d.rglob("*") if f.is_file()):
            return "mesh_folder"
    raise DataFormatError(path, "holds no supported dataset (npz, ply_hdf5, normal_resampled, or class folders of meshes)")


def open_splits(
    path: str | Path,
    num_points: int | None = 1024,
    subsample: Subsample = "first",
    seed: int = 0,
    subset: str | None = None,
    on_error: OnError = "raise",
    fmt: str | None = None,
) -> dict[str, PointCloudDataset]:
    """Open the train and test splits of a dataset in any supported format (detected).

    num_points: points per cloud (None: as stored for pre-sampled formats, 1024 for meshes);  subsample: how pre-sampled clouds with more points are cut
    (first N / random / FPS; for meshes, "random" gives uniform random surface samples, any
    other value FPS-spread ones);  seed: seeds random subsampling and mesh sampling;  subset:
    ``"modelnet10"`` for the 10-class view;  on_error: for folder formats read lazily, whether
    a malformed file raises or is skipped (its item carries an "error" and batch jobs report it).
    ScanObjectNN's variant rides on the path: ``h5_files:pb_t50_rs`` (obj_only, obj_bg,
    pb_t50_rs; obj_bg where the path leaves it open, see ``scanobjectnn_files``).
    """
    fmt = fmt or detect_format(path)
    if fmt == "npz":
        splits = _read_npz(Path(path), num_points, subsample, seed)
    elif fmt == "ply_hdf5":
        splits = _read_ply_hdf5(Path(path), num_points, subsample, seed)
    elif fmt == "normal_resampled":
        splits = _read_normal_resampled(Path(path), num_points, subsample, seed, on_error)
    elif fmt == "modelnet_meshes":
        splits = _read_mesh_folder(Path(path), num_points or 1024, seed, on_error, True, subsample)
    elif fmt == "mesh_folder":
        splits = _read_mesh_folder(Path(path), num_points or 1024, seed, on_error, False, subsample)
    elif fmt == "scanobjectnn":
        splits = _read_scanobjectnn(path, num_points, subsample, seed)
    elif fmt == "builtin":
        from pretext3d.data.builtin import builtin_splits, parse_builtin_spec

        splits = builtin_splits(num_points=num_points or 1024, **parse_builtin_spec(str(path), seed))
    else:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if subset is not None:
        if subset.lower() != "modelnet10":
            raise ValueError(f"unknown subset {subset!r}; known: modelnet10")
        splits = {k: SubsetPointClouds(v, Selection(classes=tuple(MODELNET10_CLASSES)), "ModelNet10")
                  for k, v in splits.items()}
    return splits


# --- npz --------------------------------------------------------------------------------------


def _read_npz(path: Path, num_points: int | None, subsample: Subsample, seed: int) -> dict[str, PointCloudDataset]:
    if path.stat().st_size == 0:
        raise DataFormatError(path, "is empty")
    try:
        data = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise DataFormatError(path, f"is not a readable npz file ({err})") from None
    with data:
        required = [f"{s}_{x}" for s in SPLITS for x in ("x", "y")]
        missing = [k for k in required if k not in data.files]
        if missing:
            raise DataFormatError(path, f"lacks key(s) {missing}; expected {required} (+ optional classes, *_names)")
        try:
            arrays = {k: data[k] for k in data.files}
        except ValueError as err:
            if "allow_pickle" in str(err):
                raise DataFormatError(path, "stores pickled object arrays, which are never loaded "
                                      "(save classes and names as string arrays)") from None
            raise DataFormatError(path, f"is truncated or corrupt ({err})") from None
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise DataFormatError(path, f"is truncated or corrupt ({err})") from None
        except MemoryError as err:  # a header that claims a huge shape
            raise DataFormatError(path, f"declares an array too large to load ({err}): the file is damaged or not "
                                  "a point-cloud file") from None
    labels = {split: _integer_labels(path, f"{split}_y", arrays[f"{split}_y"]) for split in SPLITS}
    n_classes = int(max(labels["train"].max(initial=-1), labels["test"].max(initial=-1))) + 1
    classes = _strings(path, "classes", arrays["classes"]) if "classes" in arrays else [f"class_{i}" for i in range(n_classes)]
    up_axis = str(arrays["up_axis"]) if "up_axis" in arrays else None
    out = {}
    for split in SPLITS:
        x = arrays[f"{split}_x"]
        if x.ndim != 3 or not np.issubdtype(x.dtype, np.number):
            raise DataFormatError(path, f"{split}_x must be a numeric (S, N, 3) array, got {x.dtype} {x.shape}")
        key = f"{split}_names"
        names = _strings(path, key, arrays[key]) if key in arrays else [f"{split}_{i:05d}" for i in range(len(x))]
        out[split] = ArrayPointClouds(np.asarray(x), labels[split], classes, names, split, str(path),
                                      num_points, subsample, seed, up_axis)
    return out


def _integer_labels(path: Path, key: str, y: np.ndarray) -> np.ndarray:
    """Labels as int64 (S,), accepting (S,) or (S, 1) integer or integer-valued float arrays."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.number):
        raise DataFormatError(path, f"{key} must be a 1-D array of class indices, got {y.dtype} {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise DataFormatError(path, f"{key} holds values that are not whole class indices (NaN or fractions)")
    return y.astype(np.int64)


def _strings(path: Path, key: str, values: np.ndarray) -> list[str]:
    """A 1-D array of names (str or bytes) as Python strings."""
    if values.ndim != 1:
        raise DataFormatError(path, f"{key} must be a 1-D array of names, got shape {values.shape}")
    try:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()]
    except UnicodeDecodeError as err:
        raise DataFormatError(path, f"{key} holds a name that is not UTF-8 text (byte {err.object[err.start]:#04x}); "
                              "save the names as UTF-8") from None


# --- modelnet40_ply_hdf5_2048 ----------------------------------------------------------------


def _read_shape_names(path: Path) -> list[str]:
    if not path.exists():
        raise DataFormatError(path, "is missing (it lists the class names)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataFormatError(path, "is empty")
    return names


def read_h5_clouds(file: Path, optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Read an HDF5 file of clouds: ``data`` (S, N, 3) as float32, ``label`` (S,) or (S, 1) as
    int64 (S,), and whichever ``optional`` datasets it has (as stored). Every problem (not HDF5,
    missing datasets, shapes that disagree) is a DataFormatError naming the file."""
    import h5py

    try:
        with h5py.File(file, "r") as h5:
            if "data" not in h5 or "label" not in h5:
                raise DataFormatError(file, f"lacks the 'data' and/or 'label' datasets (has {sorted(h5.keys())})")
            arrays = {"data": np.asarray(h5["data"], dtype=np.float32), "label": np.asarray(h5["label"])}
            arrays.update({k: np.asarray(h5[k]) for k in optional if k in h5})
    except (OSError, ValueError, TypeError) as err:
        if isinstance(err, DataFormatError):
            raise
        raise DataFormatError(file, f"is not a readable HDF5 point-cloud file ({err})") from None
    arrays["label"] = _integer_labels(file, "label", arrays["label"].reshape(-1))
    if arrays["data"].ndim != 3 or len(arrays["label"]) != len(arrays["data"]):
        raise DataFormatError(file, f"has data {arrays['data'].shape} and {len(arrays['label'])} labels")
    return arrays


def _read_ply_hdf5(path: Path, num_points: int | None, subsample: Subsample, seed: int) -> dict[str, PointCloudDataset]:
    folder = path.parent if path.is_file() else path
    classes = _read_shape_names(folder / "shape_names.txt")
    out = {}
    for split in SPLITS:
        files = sorted(folder.glob(f"ply_data_{split}*.h5"), key=_natural_key)
        if not files:
            raise DataFormatError(folder, f"has no ply_data_{split}*.h5 files")
        points, labels, names = [], [], []
        for f in files:
            arrays = read_h5_clouds(f, optional=("normal",))
            data, label = arrays["data"], arrays["label"]
            if "normal" in arrays:
                if arrays["normal"].shape != data.shape:
                    raise DataFormatError(f, f"has 'normal' {arrays['normal'].shape} unlike 'data' {data.shape}")
                data = np.concatenate([data, arrays["normal"].astype(np.float32)], axis=2)
            points.append(data)
            labels.append(label)
            names.extend(_h5_names(f, len(data)))
        out[split] = ArrayPointClouds(np.concatenate(points), np.concatenate(labels), classes, names, split,
                                      str(folder), num_points, subsample, seed, up_axis="y")
    return out


def _h5_names(h5_file: Path, count: int) -> list[str]:
    """Shape names from the id2file JSON beside an h5 file (``ply_data_train0.h5`` ->
    ``ply_data_train_0_id2file.json``), else '<file stem>_<row>'."""
    match = re.fullmatch(r"(ply_data_[a-z]+)(\d+)", h5_file.stem)
    candidates = [h5_file.parent / f"{h5_file.stem}_id2file.json"]
    if match:
        candidates.insert(0, h5_file.parent / f"{match.group(1)}_{match.group(2)}_id2file.json")
    for candidate in candidates:
        if candidate.exists():
            try:
                entries = json.loads(candidate.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise DataFormatError(candidate, f"is not valid JSON ({err})") from None
            if isinstance(entries, list) and len(entries) == count:
                return [Path(str(e)).stem for e in entries]
    return [f"{h5_file.stem}_{i}" for i in range(count)]


# --- ScanObjectNN ----------------------------------------------------------------------------

SCANOBJECTNN_CLASSES = ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed",
                        "pillow", "sink", "sofa", "toilet"]  # index = label in the h5 files
# variant -> (its folder under h5_files, the suffix of its file names)
SCANOBJECTNN_VARIANTS = {
    "obj_only": ("main_split_nobg", ""),
    "obj_bg": ("main_split", ""),
    "pb_t50_rs": ("main_split", "_augmentedrot_scale75"),
}
DEFAULT_SCANOBJECTNN_VARIANT = "obj_bg"
_SCANOBJECTNN_FILE = re.compile(r"(training|test)_objectdataset(_augmentedrot_scale75)?\.h5")


def parse_scanobjectnn_spec(path: str | Path) -> tuple[Path, str | None]:
    """'PATH:pb_t50_rs' -> (PATH, 'pb_t50_rs'); any other path -> (path, None). The suffix is
    only read as a variant when it names one and PATH itself (with the suffix) does not exist."""
    text = str(path)
    base, sep, tail = text.rpartition(":")
    if sep and tail in SCANOBJECTNN_VARIANTS and base and not Path(text).exists():
        return Path(base), tail
    return Path(text), None


def _is_scanobjectnn(path: Path) -> bool:
    if path.is_file():
        return bool(_SCANOBJECTNN_FILE.fullmatch(path.name))
    return any(path.glob("training_objectdataset*.h5")) or any(
        (path / folder).is_dir() for folder, _ in SCANOBJECTNN_VARIANTS.values())


def scanobjectnn_files(path: str | Path) -> tuple[str, dict[str, Path]]:
    """The variant and the ``{"train": h5, "test": h5}`` files a ScanObjectNN path names.

    path: the ``h5_files`` folder, ``main_split``/``main_split_nobg``, or one of the h5 files,
    optionally with a variant suffix ``:obj_only`` (``main_split_nobg/*_objectdataset.h5``),
    ``:obj_bg`` (``main_split/*_objectdataset.h5``) or ``:pb_t50_rs``
    (``main_split/*_objectdataset_augmentedrot_scale75.h5``). Without a suffix the variant is
    the one the path implies (a file names its own; ``main_split_nobg`` is obj_only); where
    several are present it is obj_bg, the default.
    """
    root, asked = parse_scanobjectnn_spec(path)
    if not root.exists():
        raise DataFormatError(root, "does not exist")
    if root.is_file():
        match = _SCANOBJECTNN_FILE.fullmatch(root.name)
        if not match:
            raise DataFormatError(root, "is not a ScanObjectNN file "
                                        "({training,test}_objectdataset[_augmentedrot_scale75].h5)")
        implied = "pb_t50_rs" if match.group(2) else "obj_only" if "nobg" in root.parent.name else "obj_bg"
        if asked not in (None, implied):
            raise DataFormatError(root, f"holds the {implied} variant, not {asked}")
        candidates = {implied: root.parent}
    elif any(root.glob("training_objectdataset*.h5")):  # a variant folder itself
        names = ["obj_only"] if "nobg" in root.name else ["obj_bg", "pb_t50_rs"]
        candidates = {v: root for v in names}
    else:
        candidates = {v: root / folder for v, (folder, _) in SCANOBJECTNN_VARIANTS.items()}

    def files(variant: str) -> dict[str, Path]:
        suffix = SCANOBJECTNN_VARIANTS[variant][1]
        return {"train": candidates[variant] / f"training_objectdataset{suffix}.h5",
                "test": candidates[variant] / f"test_objectdataset{suffix}.h5"}

    available = [v for v in candidates if all(f.is_file() for f in files(v).values())]
    if asked is None:
        if DEFAULT_SCANOBJECTNN_VARIANT in available:
            asked = DEFAULT_SCANOBJECTNN_VARIANT
        elif len(available) == 1:
            asked = available[0]
        elif available:
            raise DataFormatError(root, f"holds ScanObjectNN variants {', '.join(available)} but not the default "
                                        f"{DEFAULT_SCANOBJECTNN_VARIANT}; choose one with PATH:<variant>")
        else:
            looked = ", ".join(str(f) for v in candidates for f in files(v).values())
            raise DataFormatError(root, f"holds no ScanObjectNN variant with both training and test files "
                                        f"(looked for {looked})")
    if asked not in available:
        wanted = files(asked) if asked in candidates else {"train": f"{SCANOBJECTNN_VARIANTS[asked][0]}/..."}
        raise DataFormatError(root, f"lacks the {asked} variant ({', '.join(str(f) for f in wanted.values())}); "
                                    f"available here: {', '.join(available) or 'none'} "
                                    f"(choose one with PATH:<variant>)")
    return asked, files(asked)


def _read_scanobjectnn(path: str | Path, num_points: int | None, subsample: Subsample,
                       seed: int) -> dict[str, PointCloudDataset]:
    """ScanObjectNN clouds as stored (2048 points, no normals; the background ``mask`` is not
    read), labels in SCANOBJECTNN_CLASSES order; names '<variant>_<split>_<row>'; up axis y
    (the axis the dataset's own training code rotates about)."""
    variant, files = scanobjectnn_files(path)
    source = f"{files['train'].parent}:{variant}"
    out = {}
    for split, file in files.items():
        arrays = read_h5_clouds(file)
        names = [f"{variant}_{split}_{i:05d}" for i in range(len(arrays["label"]))]
        out[split] = ArrayPointClouds(arrays["data"], arrays["label"], SCANOBJECTNN_CLASSES, names, split, source,
                                      num_points, subsample, seed, up_axis="y")
    return out


# --- modelnet40_normal_resampled --------------------------------------------------------------


def read_text_table(path: Path, columns: tuple[int, ...], layout: str) -> np.ndarray:
    """Parse a text file of numbers, one row per line (comma or space separated), into
    (M, C) float64, where C, the column count of the first row, must be one of ``columns``;
    ``layout`` names the columns for the error messages. Empty, ragged or non-finite files
    raise a DataFormatError naming the file."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DataFormatError(path, f"cannot be read ({getattr(err, 'strerror', None) or err})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataFormatError(path, "is empty")
    n_cols = len(lines[0].replace(",", " ").split())
    if n_cols not in columns:
        expected = " or ".join(str(c) for c in columns)
        raise DataFormatError(path, f"has {n_cols} columns per row, expected {expected} ({layout})")
    # numpy's text parser is ~10x faster than np.loadtxt on these 10,000-row files
    try:
        values = np.array(" ".join(lines).replace(",", " ").split(), dtype=np.float64)
    except ValueError as err:
        raise DataFormatError(path, f"holds text that is not a number ({err})") from None
    if values.size != len(lines) * n_cols:
        raise DataFormatError(path, f"is truncated or ragged: {values.size} numbers in {len(lines)} rows of {n_cols}")
    table = values.reshape(len(lines), n_cols)
    if not np.isfinite(table).all():
        raise DataFormatError(path, "has NaN or infinite values")
    return table


def read_xyz_normal_txt(path: Path) -> np.ndarray:
    """Parse a 'x,y,z,nx,ny,nz' (or 'x,y,z') text file into (M, 6|3) float32 with clear errors."""
    return read_text_table(path, (6, 3), "x,y,z,nx,ny,nz or x,y,z").astype(np.float32)


def _read_normal_resampled(path: Path, num_points: int | None, subsample: Subsample, seed: int,
                           on_error: OnError) -> dict[str, PointCloudDataset]:
    prefix = "modelnet40" if (path / "modelnet40_shape_names.txt").exists() else "modelnet10"
    classes = _read_shape_names(path / f"{prefix}_shape_names.txt")

    def loader(file: Path, index: int) -> np.ndarray:
        cloud = read_xyz_normal_txt(file)
        if num_points is None:
            return cloud
        return select_points(cloud, num_points, subsample, item_seed(seed, file.stem), str(file))

    out = {}
    for split in SPLITS:
        listing = path / f"{prefix}_{split}.txt"
        if not listing.exists():
            raise DataFormatError(listing, "is missing (it lists the shapes of the split)")
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        labels, files = [], []
        for name in names:
            cls = name.rsplit("_", 1)[0]
            if cls not in classes:
                raise DataFormatError(listing, f"names {name!r}, whose class {cls!r} is not in the shape names")
            labels.append(classes.index(cls))
            files.append(path / cls / f"{name}.txt")
        probe = _first_readable(files, on_error)
        out[split] = LazyPointClouds(files, np.array(labels), classes, names, split, str(path), loader,
                                     num_points or len(probe), has_normals=probe.shape[1] == 6, up_axis="y",
                                     on_error=on_error)
    return out


def _first_readable(files: list[Path], on_error: OnError, tries: int = 20) -> np.ndarray:
    """The first file that parses tells whether the split has normals and how many points."""
    first_error = None
    for f in files[:tries]:
        try:
            return read_xyz_normal_txt(f)
        except DataFormatError as err:
            if on_error == "raise":
                raise
            first_error = first_error or err
    if files and first_error is not None and len(files) <= tries:
        raise first_error  # nothing in the split is readable
    return np.zeros((0, 6), np.float32)


# --- folders of meshes ------------------------------------------------------------------------


def _mesh_files(path: Path) -> tuple[list[str], list[tuple[Path, str, str | None]]]:
    """Class names and (file, class, split or None) for ``<class>/...`` or ``{train,test}/<class>/...``."""

    def meshes_under(folder: Path) -> list[Path]:
        # every entry named like a mesh file, readable or not (a dangling link, a folder called
        # x.off: reading them names the problem); os.walk does not follow links, so a link loop
        # cannot trap it
        found = []
        for here, folders, files in os.walk(folder):
            found.extend(Path(here, name) for name in (*files, *folders) if name.lower().endswith(MESH_SUFFIXES))
            folders[:] = [d for d in folders if not d.startswith(".") and not d.lower().endswith(MESH_SUFFIXES)]
        return sorted(found, key=lambda f: str(f.relative_to(folder)))

    top = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    found: list[tuple[Path, str, str | None]] = []
    if top and all(d.name in SPLITS for d in top):  # split folders first
        classes = sorted({c.name for d in top for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")})
        for d in top:
            for cls in classes:
                if (d / cls).is_dir():
                    found.extend((f, cls, d.name) for f in meshes_under(d / cls))
        return classes, found
    classes = [d.name for d in top]
    for cls in classes:
        for f in meshes_under(path / cls):
            parts = f.relative_to(path / cls).parts[:-1]
            found.append((f, cls, next((s for s in SPLITS if s in parts), None)))
    return classes, found


def _readable_file(path: Path) -> bool:
    """A regular file (through links) that is not empty: what the every-fifth-file split counts."""
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:  # a link loop
        return False


def _read_mesh_folder(path: Path, num_points: int, seed: int, on_error: OnError, modelnet_layout: bool,
                      subsample: Subsample = "fps") -> dict[str, PointCloudDataset]:
    """Meshes sampled area-weighted: 4x then cut to N by FPS (evenly spread), or with
    ``subsample="random"`` N uniform random surface samples (no FPS)."""
    classes, found = _mesh_files(path)
    if not found:
        raise DataFormatError(path, f"holds no mesh files ({', '.join(MESH_SUFFIXES)}) in class folders")
    per_split: dict[str, list[tuple[Path, int]]] = {s: [] for s in SPLITS}
    position: dict[str, int] = {}
    for f, cls, split in found:
        if split is None:
            if modelnet_layout:
                continue
            if not _readable_file(f):  # kept so that reading it reports it; it moves no good file to another split
                split = "train"
            else:  # no split in the path: every fifth readable file of a class (in path order) is a test file
                position[cls] = position.get(cls, -1) + 1
                split = "test" if position[cls] % 5 == 4 else "train"
        per_split[split].append((f, classes.index(cls)))
    out = {}
    for split, items in per_split.items():
        files = [f for f, _ in items]
        names = [_mesh_name(path, f) for f in files]
        oversample = 1 if subsample == "random" else 4
        loader = mesh_cloud_loader(num_points, oversample=oversample, seed=seed, normalize=True, load=load_mesh, names=names)
        out[split] = LazyPointClouds(files, np.array([lab for _, lab in items], dtype=np.int64), classes, names,
                                     split, str(path), loader, num_points, has_normals=True,
                                     up_axis="z" if modelnet_layout else None, on_error=on_error)
    return out


def _mesh_name(root: Path, file: Path) -> str:
    """ModelNet files are named by their stem; ShapeNet's are all 'model_normalized', so those
    are named by their folders ('chair/<shapenet id>'), leaving out split and 'models' folders."""
    if file.stem not in ("model_normalized", "model"):
        return file.stem
    folders = [p for p in file.relative_to(root).parts[:-1] if p not in SPLITS and p != "models"]
    return "/".join(folders) or file.stem
