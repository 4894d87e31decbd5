"""Semantic segmentation of rooms: S3DIS (the raw ``Stanford3dDataset_v1.2_Aligned_Version``
layout or its npy export), with the block sampling of the published protocol.

``open_semseg(path, test_area=5)`` returns ``{"train", "test"}`` SemSegRooms (read when asked
for). ``SemSegBlocks`` draws random training blocks from rooms and ``room_blocks`` cuts a room
into overlapping blocks that hold every point at least once, for voting predictions back to all
points at test time. Both give PointNet's 9 input channels per point (see ``block_features``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from torch.utils.data import Dataset

from pretext3d.data.errors import DataFormatError

from pretext3d.data.readers import read_text_table
from pretext3d.data.splits import resample_indices

__all__ = [
    "S3DIS_CLASSES",
    "RoomArrays",
    "SemSegBlocks",
    "SemSegRooms",
    "block_features",
    "open_semseg",
    "read_s3dis_npy",
    "read_s3dis_room",
    "room_blocks",
]

OnError = Literal["raise", "skip"]
# S3DIS's 13 classes, index = label (the order of PointNet's class_names.txt)
S3DIS_CLASSES = ["ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa",
                 "bookcase", "board", "clutter"]
# annotation names outside the 13 that the common preprocessing maps onto one of them
_S3DIS_ALIASES = {"stairs": "clutter"}

def _room_arrays(file: Path, xyz: np.ndarray, rgb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Checked (points (P, 6) float32 with the room's min corner moved to the origin, labels)."""
    if not np.isfinite(xyz).all() or not np.isfinite(rgb).all():
        raise DataFormatError(file, "has NaN or infinite values")
    if (labels != np.round(labels)).any() or labels.min() < 0 or labels.max() >= len(S3DIS_CLASSES):
        raise DataFormatError(file, f"has labels outside the whole numbers 0..{len(S3DIS_CLASSES) - 1}")
    points = np.concatenate([xyz - xyz.min(axis=0), rgb], axis=1).astype(np.float32)
    return points, labels.astype(np.int64)

def read_s3dis_room(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """One room of the raw S3DIS layout: every ``Annotations/<class>_<k>.txt`` ('x y z r g b'
    rows), labelled by the class in its name ('stairs' counts as clutter, as in PointNet's
    preprocessing; any other unknown class is an error). The room's own ``<room>.txt`` is not
    read: its annotation files hold its points. Returns (points (P, 6) x y z r g b float32,
    the min corner at the origin as the npy export has it, labels (P,) int64)."""
    annotations = folder / "Annotations"
    if not annotations.is_dir():
        raise DataFormatError(folder, "has no Annotations folder")
    files = sorted(annotations.glob("*.txt"))
    if not files:
        raise DataFormatError(annotations, "holds no <class>_<k>.txt files")
    tables, labels = [], []
    for f in files:
        name = f.name.split("_")[0]
        name = _S3DIS_ALIASES.get(name, name)
        if name not in S3DIS_CLASSES:
            raise DataFormatError(f, f"names class {name!r}, not one of the 13 S3DIS classes "
                                     f"({', '.join(S3DIS_CLASSES)})")
        table = read_text_table(f, (6,), "x y z r g b")
        tables.append(table)
        labels.append(np.full(len(table), S3DIS_CLASSES.index(name), dtype=np.float64))
    data = np.concatenate(tables)
    return _room_arrays(folder, data[:, :3], data[:, 3:6], np.concatenate(labels))

def read_s3dis_npy(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """One room of the npy export (``Area_N_<room>.npy``, (P, 7) x y z r g b label, as written by
    PointNet's collect_indoor3d_data; further columns, such as an instance id, are ignored):
    (points (P, 6) float32 with the min corner at the origin, labels (P,) int64)."""
    try:
        data = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataFormatError(file, f"is not a readable .npy array ({err})") from None
    if data.ndim != 2 or data.shape[1] < 7 or not np.issubdtype(data.dtype, np.number) or len(data) == 0:
        raise DataFormatError(file, f"must hold a numeric (P, 7) x y z r g b label array, "
                                    f"got {data.dtype} {data.shape}")
    return _room_arrays(file, data[:, :3], data[:, 3:6], data[:, 6])

_NPY_ROOM = re.compile(r"Area_(\d+)_(.+)\.npy")
_AREA = re.compile(r"Area_(\d+)")

def _find_rooms(path: Path) -> tuple[str, list[tuple[int, str, Path]]]:
    """('npy' | 'raw', [(area, room name, file or folder)]) in area then name order."""
    if not path.is_dir():
        raise DataFormatError(path, "does not exist or is not a folder")
    rooms = [(int(m.group(1)), m.group(2), f) for f in path.glob("Area_*.npy") if (m := _NPY_ROOM.fullmatch(f.name))]
    layout = "npy"
    if not rooms:
        layout = "raw"
        for area_dir in path.iterdir():
            if area_dir.is_dir() and (m := _AREA.fullmatch(area_dir.name)):
                rooms.extend((int(m.group(1)), d.name, d) for d in area_dir.iterdir()
                             if d.is_dir() and not d.name.startswith("."))
    if not rooms:
        raise DataFormatError(path, "holds no S3DIS rooms (Area_N/<room>/Annotations/*.txt or Area_N_<room>.npy)")
    return layout, sorted(rooms, key=lambda r: (r[0], r[1]))

class SemSegRooms(Dataset):
    """Rooms read one at a time when asked for (``load(i)``).

    Items: ``{"points": (P, 3) float32 (min corner at the origin), "colors": (P, 3) float32 in
    0..255, "labels": (P,) int64 (index into ``classes``), "area", "name", "index"}``; with
    ``on_error="skip"`` a malformed room yields ``{"index", "name", "error"}``. ``names`` are
    'Area_N_<room>', ``areas`` (R,) their area numbers.
    """

    def __init__(self, rooms: Sequence[tuple[int, str, Path]], layout: str, split: str, source: str,
                 on_error: OnError = "raise"):
        self.rooms = list(rooms)
        self.layout, self.split, self.source, self.on_error = layout, split, source, on_error
        self.classes = list(S3DIS_CLASSES)
        self.names = [f"Area_{area}_{name}" for area, name, _ in self.rooms]
        self.areas = np.array([area for area, _, _ in self.rooms], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rooms)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Room i as (points (P, 6) x y z r g b float32, labels (P,) int64); raises DataFormatError."""
        where = self.rooms[i][2]
        return read_s3dis_npy(where) if self.layout == "npy" else read_s3dis_room(where)

    def __getitem__(self, i: int) -> dict:
        try:
            points, labels = self.load(i)
        except DataFormatError as err:
            if self.on_error == "skip":
                return {"index": i, "name": self.names[i], "error": str(err)}
            raise
        return {"points": np.ascontiguousarray(points[:, :3]), "colors": np.ascontiguousarray(points[:, 3:6]),
                "labels": labels, "area": int(self.areas[i]), "name": self.names[i], "index": i}

def open_semseg(path: str | Path, test_area: int = 5, on_error: OnError = "raise") -> dict[str, SemSegRooms]:
    """S3DIS rooms split by area: ``{"train": rooms of every other area, "test": rooms of
    test_area}`` (the usual protocol holds out Area 5).

    path: the raw ``Stanford3dDataset_v1.2_Aligned_Version`` folder (``Area_N/<room>/Annotations/
    <class>_<k>.txt``) or the npy export (``Area_N_<room>.npy``). Rooms are read when asked for.
    """
    path = Path(path)
    layout, rooms = _find_rooms(path)
    areas = sorted({area for area, _, _ in rooms})
    if test_area not in areas:
        raise DataFormatError(path, f"has no Area_{test_area} (areas found: {areas})")
    return {split: SemSegRooms([r for r in rooms if (r[0] == test_area) == (split == "test")], layout, split,
                               str(path), on_error)
            for split in ("train", "test")}

def block_features(points: np.ndarray, center_xy: np.ndarray, room_max: np.ndarray) -> np.ndarray:
    """PointNet's 9 S3DIS input channels: points (n, 6) x y z r g b of a room whose min corner
    is at the origin -> (n, 9) float32 = [x - cx, y - cy, z, r/255, g/255, b/255, x/X, y/Y, z/Z],
    (cx, cy) the block's centre and (X, Y, Z) the room's max coordinates (a zero extent divides
    by 1)."""
    room_max = np.where(np.asarray(room_max, dtype=np.float64) > 0, room_max, 1.0)
    out = np.empty((len(points), 9), dtype=np.float32)
    out[:, 0:3] = points[:, 0:3]
    out[:, 0:2] -= np.asarray(center_xy, dtype=np.float32)
    out[:, 3:6] = points[:, 3:6] / 255.0
    out[:, 6:9] = points[:, 0:3] / room_max
    return out

RoomArrays = tuple[np.ndarray, np.ndarray]  # points (P, 6) x y z r g b, labels (P,)

class SemSegBlocks(Dataset):
    """Random training blocks of rooms, the PointNet / PointNet++ S3DIS training input.

    rooms: SemSegRooms (all read into memory here; with its ``on_error="skip"`` unreadable rooms
    are left out and listed in ``skipped``) or a sequence of (points (P, 6), labels (P,)).
    Room r contributes ceil(P_r / num_points) items (rooms are drawn in proportion to their
    points). Item i of epoch e (``set_epoch``) uses a generator seeded by (seed, e, i): a
    random point of the room is the block's centre, the block holds the points within
    block_size / 2 of it in x and y (any z); up to ``tries`` centres are drawn until a block
    holds more than ``min_block_points`` points (else the fullest is kept). ``num_points`` of
    its points are drawn (``resample_indices``: at random, or all plus repeats when fewer).

    Items: ``{"features": (num_points, 9) float32 (``block_features``), "labels": (num_points,)
    int64, "room": room index, "index": i}``.
    """

    def __init__(
        self,
        rooms: SemSegRooms | Sequence[RoomArrays],
        block_size: float = 1.0,
        num_points: int = 4096,
        seed: int = 0,
        min_block_points: int = 1024,
        tries: int = 10,
    ):
        if block_size <= 0 or num_points < 1 or tries < 1:
            raise ValueError("block_size, num_points and tries must be positive")
        self.block_size, self.num_points, self.seed = float(block_size), num_points, seed
        self.min_block_points, self.tries = min_block_points, tries
        self.skipped: list[str] = []
        self.rooms: list[RoomArrays] = []
        if isinstance(rooms, SemSegRooms):
            for i in range(len(rooms)):
                try:
                    self.rooms.append(rooms.load(i))
                except DataFormatError as err:
                    if rooms.on_error != "skip":
                        raise
                    self.skipped.append(str(err))
        else:
            self.rooms = [(np.asarray(p, dtype=np.float32), np.asarray(lab, dtype=np.int64)) for p, lab in rooms]
        if not self.rooms or any(len(p) == 0 for p, _ in self.rooms):
            raise ValueError("SemSegBlocks needs at least one room, and no empty rooms")
        self.room_max = [p[:, :3].max(axis=0) for p, _ in self.rooms]
        counts = [math.ceil(len(p) / num_points) for p, _ in self.rooms]
        self.room_of_item = np.repeat(np.arange(len(self.rooms)), counts)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.room_of_item)

    def __getitem__(self, i: int) -> dict:
        r = int(self.room_of_item[i])
        points, labels = self.rooms[r]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        xy = points[:, :2]
        best_center, best = xy[0], np.zeros(0, dtype=np.int64)
        for _ in range(self.tries):
            center = xy[rng.integers(len(xy))]
            inside = np.flatnonzero((np.abs(xy - center) <= self.block_size / 2).all(axis=1))
            if len(inside) > len(best):
                best_center, best = center, inside
            if len(inside) > self.min_block_points:
                break
        keep = best[resample_indices(len(best), self.num_points, rng)]
        return {"features": block_features(points[keep], best_center, self.room_max[r]), "labels": labels[keep],
                "room": r, "index": i}

def _block_starts(lo: float, hi: float, block_size: float, stride: float) -> np.ndarray:
    """Starts of blocks along one axis, ``stride`` apart, the last moved back to end at hi, so
    that [start, start + block_size] cover [lo, hi]."""
    count = max(1, math.ceil((hi - lo - block_size) / stride) + 1)
    return np.maximum(np.minimum(lo + stride * np.arange(count), hi - block_size), lo)

def room_blocks(
    room_points: np.ndarray,
    block_size: float = 1.0,
    stride: float = 0.5,
    num_points: int = 4096,
    seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut a room into test blocks that together hold every point at least once.

    room_points: (P, 6) x y z r g b (a room as SemSegRooms loads it, min corner at the origin).
    Blocks of block_size x block_size in x, y (any z) start every ``stride`` (<= block_size)
    along x and y, the last of a row ending at the room's edge. The points of a block are
    shuffled (seeded) and cut into chunks of num_points; the last chunk is filled up with
    random repeats of the block's points. Returns [(features (num_points, 9) float32 as in
    ``block_features`` centred on the block's centre, point_indices (num_points,) int64 rows of
    room_points)], so predictions can be voted back onto every point.
    """
    if not 0 < stride <= block_size:
        raise ValueError(f"stride must be in (0, block_size], got {stride} for block_size {block_size}")
    room_points = np.asarray(room_points, dtype=np.float32)
    if room_points.ndim != 2 or room_points.shape[1] < 6 or len(room_points) == 0:
        raise ValueError(f"room_points must be a non-empty (P, 6) array, got {room_points.shape}")
    rng = np.random.default_rng(seed)
    xyz = room_points[:, :3].astype(np.float64)
    lo, hi = xyz[:, :2].min(axis=0), xyz[:, :2].max(axis=0)
    room_max = room_points[:, :3].max(axis=0)
    eps = 1e-6 * max(1.0, float(np.abs(xyz[:, :2]).max()), block_size)  # points on a block's edge belong to it
    blocks = []
    for sx in _block_starts(lo[0], hi[0], block_size, stride):
        strip = np.flatnonzero((xyz[:, 0] >= sx - eps) & (xyz[:, 0] <= sx + block_size + eps))
        for sy in _block_starts(lo[1], hi[1], block_size, stride):
            y = xyz[strip, 1]
            inside = strip[(y >= sy - eps) & (y <= sy + block_size + eps)]
            if len(inside) == 0:
                continue
            order = rng.permutation(inside)
            center = np.array([sx + block_size / 2, sy + block_size / 2])
            for start in range(0, len(order), num_points):
                chunk = order[start:start + num_points]
                if len(chunk) < num_points:
                    chunk = np.concatenate([chunk, rng.choice(inside, num_points - len(chunk), replace=True)])
                chunk = chunk.astype(np.int64)
                blocks.append((block_features(room_points[chunk], center, room_max), chunk))
    return blocks
