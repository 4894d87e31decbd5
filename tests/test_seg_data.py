"""Segmentation readers (ShapeNetPart, built-in parts, S3DIS raw + npy) and ScanObjectNN, on tiny
synthetic folders the tests write, with answers worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from pretext3d.data import (
    S3DIS_CLASSES,
    SCANOBJECTNN_CLASSES,
    SHAPENETPART_CATEGORY_PARTS,
    SHAPENETPART_CLASSES,
    DataFormatError,
    SemSegBlocks,
    block_features,
    builtin_splits,
    detect_format,
    open_partseg,
    open_semseg,
    open_splits,
    room_blocks,
)
from pretext3d.data.builtin import CLASSES as BUILTIN_CLASSES
from pretext3d.data.builtin import PART_NAMES, part_offset
from pretext3d.data.splits import carve_validation, resample_indices

# --- ShapeNetPart ---------------------------------------------------------------------------------

SYNSETS = {"Airplane": "02691156", "Mug": "03797390", "Table": "04379243"}
# split -> [(category, shape id, number of points, part ids cycled over the points)]
SHAPES = {
    "train": [("Airplane", "a1", 10, [0, 1, 2, 3]), ("Mug", "m1", 6, [36, 37]), ("Table", "t1", 9, [47, 48, 49])],
    "val": [("Airplane", "a2", 8, [3, 1])],
    "test": [("Mug", "m2", 3, [37]), ("Table", "t2", 12, [49, 47])],
}


def write_shapenetpart(root: Path) -> dict[str, np.ndarray]:
    """The normal-resampled ShapeNetPart layout; returns name -> (M, 7) rows as written."""
    (root / "train_test_split").mkdir(parents=True)
    (root / "synsetoffset2category.txt").write_text("".join(f"{c}\t{s}\n" for c, s in SYNSETS.items()))
    rows = {}
    for i, (split, shapes) in enumerate(SHAPES.items()):
        listing = []
        for j, (category, shape, n, parts) in enumerate(shapes):
            rng = np.random.default_rng([i, j])
            xyz = rng.uniform(-0.8, 0.8, (n, 3))
            normals = rng.normal(size=(n, 3))
            normals /= np.linalg.norm(normals, axis=1, keepdims=True)
            table = np.concatenate([xyz, normals, np.resize(parts, n)[:, None]], axis=1).round(6)
            folder = root / SYNSETS[category]
            folder.mkdir(exist_ok=True)
            (folder / f"{shape}.txt").write_text("".join(" ".join(f"{v:.6f}" for v in r) + "\n" for r in table))
            listing.append(f"shape_data/{SYNSETS[category]}/{shape}")
            rows[f"{SYNSETS[category]}/{shape}"] = table
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(listing))
    return rows


def unit_sphere(xyz: np.ndarray) -> np.ndarray:
    centred = xyz - xyz.mean(axis=0)
    return centred / np.linalg.norm(centred, axis=1).max()


def test_shapenetpart_reader_reads_every_point_and_the_standard_part_map(tmp_path):
    root = tmp_path / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    rows = write_shapenetpart(root)
    splits = open_partseg(tmp_path, num_points=None)  # the folder holding it is found too
    assert {k: len(v) for k, v in splits.items()} == {"train": 3, "val": 1, "test": 2}
    train = splits["train"]
    assert train.classes == SHAPENETPART_CLASSES and len(train.classes) == 16
    assert train.names == ["02691156/a1", "03797390/m1", "04379243/t1"]
    assert train.labels.tolist() == [0, 11, 15] and splits["test"].labels.tolist() == [11, 15]
    # the 50 global part ids: Airplane 0-3, Mug 36-37, Table 47-49, Motorbike 30-35
    assert train.num_parts == 50 and train.category_parts[0] == [0, 1, 2, 3]
    assert train.category_parts[11] == [36, 37] and train.category_parts[15] == [47, 48, 49]
    assert train.category_parts[10] == [30, 31, 32, 33, 34, 35] and train.category_parts == SHAPENETPART_CATEGORY_PARTS
    assert sorted(p for parts in train.category_parts.values() for p in parts) == list(range(50))
    assert train.part_category[36] == 11 and train.part_category[49] == 15
    item = train[1]
    table = rows["03797390/m1"]
    assert set(item) == {"points", "normals", "label", "part_labels", "index", "name"}
    assert item["points"].shape == (6, 3) and item["points"].dtype == np.float32
    assert item["part_labels"].tolist() == [36, 37, 36, 37, 36, 37] and item["part_labels"].dtype == np.int64
    np.testing.assert_allclose(item["points"], unit_sphere(table[:, :3]), atol=1e-6)
    np.testing.assert_allclose(item["normals"], table[:, 3:6], atol=1e-6)
    assert item["label"] == 11 and item["name"] == "03797390/m1" and item["index"] == 1


def test_shapenetpart_resampling_is_seeded_and_keeps_labels_with_points(tmp_path):
    rows = write_shapenetpart(tmp_path / "snp")
    full = open_partseg(tmp_path / "snp", num_points=None)["train"][0]
    a = open_partseg(tmp_path / "snp", num_points=8, seed=1)["train"][0]
    b = open_partseg(tmp_path / "snp", num_points=8, seed=1)["train"][0]
    c = open_partseg(tmp_path / "snp", num_points=8, seed=2)["train"][0]
    assert a["points"].shape == (8, 3) and np.array_equal(a["points"], b["points"])
    assert not np.array_equal(a["points"], c["points"])
    # 8 of the 10 points, no repeats, each with its own part label
    match = [int(np.flatnonzero((full["points"] == p).all(axis=1))[0]) for p in a["points"]]
    assert len(set(match)) == 8 and a["part_labels"].tolist() == full["part_labels"][match].tolist()
    # a 3-point mug asked for 8: every point at least once, the rest repeats
    few = open_partseg(tmp_path / "snp", num_points=8)["test"][0]
    mug = unit_sphere(rows["03797390/m2"][:, :3]).astype(np.float32)
    assert few["points"].shape == (8, 3) and (few["part_labels"] == 37).all()
    assert all(any(np.allclose(p, q, atol=1e-6) for q in few["points"]) for p in mug)


def test_shapenetpart_malformed_file_named_or_skipped(tmp_path):
    root = tmp_path / "snp"
    write_shapenetpart(root)
    bad = root / SYNSETS["Table"] / "t1.txt"
    bad.write_text("0 0 0 0 0 1 47\n0 0 0 0 1\n")
    with pytest.raises(DataFormatError, match="t1.txt.*ragged"):
        open_partseg(root)["train"][2]
    train = open_partseg(root, on_error="skip")["train"]
    assert str(bad) in train[2]["error"] and train[2]["name"] == "04379243/t1"
    assert train[0]["points"].shape == (2048, 3)  # the others still load
    # a part id of another category (a mug handle in an airplane) is named too
    (root / SYNSETS["Airplane"] / "a2.txt").write_text("0 0 0 0 0 1 36\n1 0 0 0 0 1 0\n")
    with pytest.raises(DataFormatError, match=r"a2.txt.*\[36\] outside"):
        open_partseg(root)["val"][0]
    (root / "train_test_split" / "shuffled_val_file_list.json").unlink()
    with pytest.raises(DataFormatError, match="shuffled_val_file_list.json.*missing"):
        open_partseg(root)
    with pytest.raises(DataFormatError, match="not a ShapeNetPart folder"):
        open_partseg(tmp_path)


def test_carve_validation_by_hand():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    train, val = carve_validation(labels, 0.2, seed=4)
    assert np.bincount(labels[val], minlength=4).tolist() == [2, 1, 0, 1]  # round(0.2 n), >= 1, never all
    assert np.intersect1d(train, val).size == 0 and sorted(np.concatenate([train, val])) == list(range(18))
    again_train, again_val = carve_validation(labels, 0.2, seed=4)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)


def test_builtin_part_splits_carve_val_from_train(tmp_path):
    splits = open_partseg("builtin:seed=3,train=5,test=2", num_points=128)
    train, val, test = splits["train"], splits["val"], splits["test"]
    n = len(BUILTIN_CLASSES)
    assert (len(train), len(val), len(test)) == (4 * n, n, 2 * n)  # 20% of 5 per class = 1
    assert np.bincount(val.labels).tolist() == [1] * n
    names = {s: set(d.names) for s, d in splits.items()}
    assert not names["train"] & names["val"] and not names["val"] & names["test"] and not names["train"] & names["test"]
    base = builtin_splits(num_points=128, seed=3, train=5, test=2)
    assert names["train"] | names["val"] == set(base["train"].names) and names["test"] == set(base["test"].names)
    assert open_partseg("builtin:seed=3,train=5,test=2", num_points=128)["val"].names == val.names
    # category -> its parts, as the generator numbers them
    chair = BUILTIN_CLASSES.index("chair")
    assert val.category_parts[chair] == list(range(part_offset("chair"), part_offset("chair") + 4))
    assert val.num_parts == sum(len(p) for p in PART_NAMES.values())
    for dataset in (train, val, test):
        item = dataset[len(dataset) - 1]
        assert item["points"].shape == (128, 3) and item["normals"].shape == (128, 3)
        assert set(item["part_labels"].tolist()) <= set(dataset.category_parts[item["label"]])
    row = base["train"].names.index(val.names[0])
    assert np.array_equal(val[0]["part_labels"], base["train"][row]["part_labels"])
    assert np.allclose(np.linalg.norm(val[0]["points"], axis=1).max(), 1.0, atol=1e-5)


def test_resample_indices():
    rng = np.random.default_rng(0)
    assert np.array_equal(resample_indices(5, 5, rng), np.arange(5))
    few = resample_indices(3, 7, rng)
    assert few.tolist()[:3] == [0, 1, 2] and few.max() < 3 and len(few) == 7
    many = resample_indices(100, 10, rng)
    assert len(set(many.tolist())) == 10 and (np.diff(many) > 0).all()


# --- S3DIS ------------------------------------------------------------------------------------------

# (area, room) -> [(annotation file stem, number of points)]
ROOMS = {
    (1, "office_1"): [("ceiling_1", 5), ("chair_1", 4), ("stairs_1", 3)],
    (2, "hallway_1"): [("floor_1", 6), ("wall_2", 2)],
    (5, "conferenceRoom_1"): [("board_1", 3), ("table_1", 4)],
}


def room_rows(area: int, stem: str, n: int) -> np.ndarray:
    rng = np.random.default_rng([area, n, len(stem)])
    xyz = rng.uniform(0, 3, (n, 3)).round(3) + [10.0, -4.0, 1.0]  # not at the origin, as in the raw data
    rgb = rng.integers(0, 256, (n, 3)).astype(float)
    return np.concatenate([xyz, rgb], axis=1)


def write_s3dis_raw(root: Path) -> None:
    for (area, room), stems in ROOMS.items():
        folder = root / f"Area_{area}" / room / "Annotations"
        folder.mkdir(parents=True)
        whole = []
        for stem, n in stems:
            rows = room_rows(area, stem, n)
            whole.append(rows)
            lines = [" ".join([f"{v:.3f}" for v in r[:3]] + [str(int(v)) for v in r[3:]]) for r in rows]
            (folder / f"{stem}.txt").write_text("\n".join(lines) + "\n")
        np.savetxt(folder.parent / f"{room}.txt", np.concatenate(whole), fmt="%.3f")
    (root / "Area_1" / "Area_1_alignmentAngle.txt").write_text("office_1 0\n")  # a file, not a room


def write_s3dis_npy(root: Path) -> None:
    """The export of PointNet's collect_indoor3d_data: (P, 7) x y z r g b label, min xyz at 0."""
    root.mkdir(parents=True)
    for (area, room), stems in ROOMS.items():
        parts = []
        for stem, n in stems:
            name = stem.split("_")[0]
            label = S3DIS_CLASSES.index("clutter" if name == "stairs" else name)
            parts.append(np.concatenate([room_rows(area, stem, n), np.full((n, 1), label)], axis=1))
        data = np.concatenate(parts)
        data[:, :3] -= data[:, :3].min(axis=0)
        np.save(root / f"Area_{area}_{room}.npy", data)


@pytest.mark.parametrize("layout", ["raw", "npy"])
def test_s3dis_rooms_labels_from_annotation_names(tmp_path, layout):
    root = tmp_path / layout
    (write_s3dis_raw if layout == "raw" else write_s3dis_npy)(root)
    splits = open_semseg(root, test_area=5)
    train, test = splits["train"], splits["test"]
    assert train.names == ["Area_1_office_1", "Area_2_hallway_1"] and test.names == ["Area_5_conferenceRoom_1"]
    assert train.areas.tolist() == [1, 2] and train.classes == S3DIS_CLASSES and len(S3DIS_CLASSES) == 13
    office = train[0]
    # annotation files in name order: ceiling (0) x5, chair (8) x4, stairs -> clutter (12) x3
    assert office["labels"].tolist() == [0] * 5 + [8] * 4 + [12] * 3
    assert test[0]["labels"].tolist() == [11] * 3 + [7] * 4  # board, table
    raw = np.concatenate([room_rows(1, s, n) for s, n in ROOMS[(1, "office_1")]])
    np.testing.assert_allclose(office["points"], raw[:, :3] - raw[:, :3].min(axis=0), atol=1e-4)
    np.testing.assert_array_equal(office["colors"], raw[:, 3:6])
    assert office["points"].min(axis=0).tolist() == [0.0, 0.0, 0.0] and office["area"] == 1
    assert [r["name"] for r in open_semseg(root, test_area=2)["test"]] == ["Area_2_hallway_1"]
    with pytest.raises(DataFormatError, match="no Area_4"):
        open_semseg(root, test_area=4)


def test_s3dis_malformed_files_named_or_skipped(tmp_path):
    write_s3dis_raw(tmp_path / "raw")
    bad = tmp_path / "raw" / "Area_2" / "hallway_1" / "Annotations" / "wall_2.txt"
    bad.write_text("1 2 3 4 5 6\n1 2 3 4 5 6a\n")  # a stray character, as one real S3DIS file has
    rooms = open_semseg(tmp_path / "raw")["train"]
    with pytest.raises(DataFormatError, match="wall_2.txt"):
        rooms[1]
    skipping = open_semseg(tmp_path / "raw", on_error="skip")["train"]
    assert str(bad) in skipping[1]["error"] and "labels" in skipping[0]
    blocks = SemSegBlocks(skipping, num_points=16)
    assert len(blocks.rooms) == 1 and "wall_2.txt" in blocks.skipped[0]
    (bad.parent / "sculpture_1.txt").write_text("1 2 3 4 5 6\n")
    bad.unlink()
    with pytest.raises(DataFormatError, match="sculpture_1.txt.*'sculpture'"):
        rooms.load(1)
    write_s3dis_npy(tmp_path / "npy")
    np.save(tmp_path / "npy" / "Area_1_office_1.npy", np.zeros((4, 3)))
    with pytest.raises(DataFormatError, match=r"Area_1_office_1.npy.*\(P, 7\)"):
        open_semseg(tmp_path / "npy")["train"].load(0)
    with pytest.raises(DataFormatError, match="holds no S3DIS rooms"):
        open_semseg(tmp_path / "npy" / "..")


def test_block_features_formula_on_a_hand_made_room():
    points = np.array([[0, 0, 0, 255, 0, 0], [2, 1, 3, 0, 255, 51], [4, 2, 1, 0, 0, 0]], dtype=np.float32)
    features = block_features(points, np.array([1.5, 0.5]), points[:, :3].max(axis=0))
    expected = np.array([
        [-1.5, -0.5, 0, 1, 0, 0, 0, 0, 0],
        [0.5, 0.5, 3, 0, 1, 0.2, 0.5, 0.5, 1],
        [2.5, 1.5, 1, 0, 0, 0, 1, 1, 1 / 3],
    ])
    assert features.shape == (3, 9) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected, atol=1e-6)


def grid_room(size: float = 3.0, step: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Points on a grid over [0, size]^2 at z = x + y, coloured by position; label = floor(x)."""
    ticks = np.arange(0, size + 1e-9, step)
    x, y = np.meshgrid(ticks, ticks, indexing="ij")
    xyz = np.stack([x.ravel(), y.ravel(), (x + y).ravel() / 2], axis=1)
    rgb = np.stack([x.ravel() * 80, y.ravel() * 80, np.full(x.size, 7.0)], axis=1)
    return np.concatenate([xyz, rgb], axis=1).astype(np.float32), np.minimum(x.ravel(), 2.99).astype(np.int64)


def test_semseg_blocks_are_seeded_blocks_of_the_room():
    points, labels = grid_room()
    blocks = SemSegBlocks([(points, labels)], block_size=1.0, num_points=64, seed=7, min_block_points=50)
    assert len(blocks) == math.ceil(len(points) / 64)
    item = blocks[3]
    features = item["features"]
    assert features.shape == (64, 9) and item["labels"].shape == (64,) and item["labels"].dtype == np.int64
    assert (np.abs(features[:, :2]) <= 0.5 + 1e-6).all()  # centred on the block
    room_max = points[:, :3].max(axis=0)
    xyz = features[:, 6:9] * room_max  # back to room coordinates
    rows = [int(np.argmin(np.abs(points[:, :3] - p).sum(axis=1))) for p in xyz]
    np.testing.assert_allclose(points[rows, :3], xyz, atol=1e-5)
    assert item["labels"].tolist() == labels[rows].tolist()
    np.testing.assert_allclose(features[:, 3:6], points[rows, 3:6] / 255, atol=1e-6)
    np.testing.assert_allclose(features[:, 2], points[rows, 2], atol=1e-6)  # z is not centred
    centre = points[rows, :2] - features[:, :2]
    assert np.allclose(centre, centre[0], atol=1e-5)  # one centre: a point of the room
    assert np.abs(points[:, :2] - centre[0]).sum(axis=1).min() < 1e-5
    assert np.array_equal(blocks[3]["features"], features)
    blocks.set_epoch(1)
    assert not np.array_equal(blocks[3]["features"], features)
    # a block with fewer points than asked for: every point, then repeats
    small = SemSegBlocks([(points[:10], labels[:10])], num_points=32)
    assert len(small) == 1 and len({tuple(r) for r in small[0]["features"][:, 6:9].round(5)}) == 10


def test_room_blocks_cover_every_point():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, [3.3, 2.7, 2.5], (3000, 3))
    xyz[:4, :2] = [[3.3, 2.7], [0, 2.7], [3.3, 0], [0, 0]]  # the room's corners
    points = np.concatenate([xyz, rng.integers(0, 256, (3000, 3))], axis=1).astype(np.float32)
    blocks = room_blocks(points, block_size=1.0, stride=0.5, num_points=256)
    covered = np.zeros(len(points), dtype=int)
    room_max = points[:, :3].max(axis=0)
    for features, indices in blocks:
        assert features.shape == (256, 9) and indices.shape == (256,) and indices.dtype == np.int64
        np.testing.assert_allclose(features[:, 6:9], points[indices, :3] / room_max, atol=1e-6)
        centre = points[indices, :2] - features[:, :2]
        assert np.allclose(centre, centre[0], atol=1e-5) and (np.abs(features[:, :2]) <= 0.5 + 1e-5).all()
        covered[np.unique(indices)] += 1
    assert (covered >= 1).all()  # every point has at least one vote
    # blocks start at x = 0, .5, 1, 1.5, 2, 2.3 and y = 0, .5, 1, 1.5, 1.7 (the last ones end at the walls)
    starts_x, starts_y = [0, 0.5, 1, 1.5, 2, 2.3], [0, 0.5, 1, 1.5, 1.7]
    centres = {tuple(round(float(v), 3) for v in points[idx[0], :2] - f[0, :2]) for f, idx in blocks}
    assert centres == {(round(x + 0.5, 3), round(y + 0.5, 3)) for x in starts_x for y in starts_y}
    assert len(room_blocks(points[:50] * [0.1, 0.1, 1, 1, 1, 1], num_points=64)) == 1  # smaller than a block
    with pytest.raises(ValueError, match="stride"):
        room_blocks(points, block_size=1.0, stride=1.5)


def test_room_blocks_on_a_loaded_room(tmp_path):
    write_s3dis_npy(tmp_path / "npy")
    rooms = open_semseg(tmp_path / "npy")["train"]
    points, _ = rooms.load(0)
    indices = np.concatenate([idx for _, idx in room_blocks(points, num_points=8)])
    assert set(indices.tolist()) == set(range(len(points)))
    blocks = SemSegBlocks(rooms, num_points=8)
    assert len(blocks) == math.ceil(12 / 8) + math.ceil(8 / 8) and blocks[2]["room"] == 1


# --- ScanObjectNN -----------------------------------------------------------------------------------


def write_scanobjectnn(root: Path) -> dict[tuple[str, str], np.ndarray]:
    """h5_files/main_split{,_nobg}/{training,test}_objectdataset[_augmentedrot_scale75].h5."""
    written = {}
    files = {"obj_bg": ("main_split", ""), "pb_t50_rs": ("main_split", "_augmentedrot_scale75"),
             "obj_only": ("main_split_nobg", "")}
    for k, (variant, (folder, suffix)) in enumerate(files.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for j, split in enumerate(("training", "test")):
            n = 5 + k + j
            data = np.random.default_rng([k, j]).uniform(-1, 1, (n, 2048, 3)).astype(np.float32)
            with h5py.File(root / folder / f"{split}_objectdataset{suffix}.h5", "w") as h5:
                h5["data"] = data
                h5["label"] = (np.arange(n) * 4 % 15).astype(np.int64)
                h5["mask"] = np.zeros((n, 2048), dtype=np.int64)
            written[(variant, "train" if split == "training" else "test")] = data
    return written


def test_scanobjectnn_variants(tmp_path):
    root = tmp_path / "h5_files"
    data = write_scanobjectnn(root)
    assert SCANOBJECTNN_CLASSES[:3] == ["bag", "bin", "box"] and SCANOBJECTNN_CLASSES[-1] == "toilet"
    assert len(SCANOBJECTNN_CLASSES) == 15
    for spec in (root, root / "main_split", root / "main_split_nobg", f"{root}:pb_t50_rs",
                 root / "main_split" / "test_objectdataset_augmentedrot_scale75.h5"):
        assert detect_format(spec) == "scanobjectnn"
    expected = {str(root): "obj_bg", str(root / "main_split"): "obj_bg", f"{root}:obj_only": "obj_only",
                str(root / "main_split_nobg"): "obj_only", f"{root}:pb_t50_rs": "pb_t50_rs",
                f"{root / 'main_split'}:pb_t50_rs": "pb_t50_rs",
                str(root / "main_split" / "training_objectdataset_augmentedrot_scale75.h5"): "pb_t50_rs"}
    for spec, variant in expected.items():
        splits = open_splits(spec, num_points=1024)
        train, test = splits["train"], splits["test"]
        assert train.classes == SCANOBJECTNN_CLASSES and train.source.endswith(f":{variant}") and train.up_axis == "y"
        assert np.array_equal(train[1]["points"], data[(variant, "train")][1, :1024]), spec
        assert len(test) == len(data[(variant, "test")]) and test.names[0] == f"{variant}_test_00000"
        assert train.labels.tolist() == (np.arange(len(train)) * 4 % 15).tolist()
    assert open_splits(root, num_points=None)["train"][0]["points"].shape == (2048, 3)



def test_scanobjectnn_variants_have_their_own_feature_cache_fingerprint(tmp_path):
    from pretext3d.eval.cache import data_fingerprint

    root = tmp_path / "h5_files"
    write_scanobjectnn(root)
    prints = {spec: data_fingerprint(spec, "scanobjectnn") for spec in (str(root), f"{root}:obj_only", f"{root}:pb_t50_rs")}
    assert len(set(prints.values())) == 3
    assert data_fingerprint(str(root / "main_split"), "scanobjectnn") == prints[str(root)]  # both name obj_bg

def test_scanobjectnn_errors(tmp_path):
    root = tmp_path / "h5_files"
    write_scanobjectnn(root)
    with pytest.raises(DataFormatError, match="lacks the pb_t50_rs variant.*available here: obj_only"):
        open_splits(f"{root / 'main_split_nobg'}:pb_t50_rs")
    (root / "main_split" / "test_objectdataset.h5").unlink()
    # obj_bg is incomplete; two other variants remain, so the choice is left to the user
    with pytest.raises(DataFormatError, match="variants obj_only, pb_t50_rs but not the default obj_bg"):
        open_splits(root)
    (tmp_path / "partial" / "main_split").mkdir(parents=True)
    (tmp_path / "partial" / "main_split" / "training_objectdataset.h5").write_bytes(b"")
    with pytest.raises(DataFormatError, match="no ScanObjectNN variant.*test_objectdataset.h5"):
        open_splits(tmp_path / "partial")
    assert open_splits(root / "main_split")["train"].source.endswith(":pb_t50_rs")  # the only one there
    with h5py.File(root / "main_split_nobg" / "test_objectdataset.h5", "w") as h5:
        h5["data"] = np.zeros((2, 2048, 3), np.float32)
        h5["label"] = np.array([3, 15])
    with pytest.raises(DataFormatError, match=r"labels must lie in \[0, 15\)"):
        open_splits(f"{root}:obj_only")
    (root / "main_split_nobg" / "training_objectdataset.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataFormatError, match="training_objectdataset.h5.*HDF5"):
        open_splits(f"{root}:obj_only")
