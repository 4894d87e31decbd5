"""Readers for every supported format, on fixtures the tests write, plus the built-in data."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import trimesh

from conftest import shared_data
from pretext3d.data import (
    BUILTIN_CLASSES,
    MODELNET10_CLASSES,
    DataFormatError,
    builtin_meshes,
    builtin_splits,
    detect_format,
    export_builtin_meshes,
    load_mesh,
    make_shape,
    open_splits,
)
from pretext3d.data.builtin import PART_NAMES, parse_builtin_spec, part_offset
from pretext3d.data.readers import read_xyz_normal_txt

MODELNET40 = sorted(MODELNET10_CLASSES + ["airplane", "bench", "bookshelf", "bottle", "bowl", "car", "cone", "cup",
                                          "curtain", "door", "flower_pot", "glass_box", "guitar", "keyboard", "lamp",
                                          "laptop", "mantel", "person", "piano", "plant", "radio", "range_hood", "sink",
                                          "stairs", "stool", "tent", "tv_stand", "vase", "wardrobe", "xbox"])


def random_clouds(n_clouds: int, n_points: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n_clouds, n_points, 3)).astype(np.float32)


def write_npz(path: Path, classes=("a", "b", "c"), n_points: int = 32, **overrides) -> Path:
    arrays = {
        "train_x": random_clouds(6, n_points, 1), "train_y": np.array([0, 1, 2, 0, 1, 2], np.uint8),
        "test_x": random_clouds(3, n_points, 2), "test_y": np.array([2, 1, 0], np.uint8),
        "classes": None if classes is None else np.array(classes), "train_names": np.array([f"tr{i}" for i in range(6)]),
        "test_names": np.array([f"te{i}" for i in range(3)]),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


# --- npz ----------------------------------------------------------------------------------------


def test_npz_reader_and_point_subsampling(tmp_path):
    path = write_npz(tmp_path / "mini.npz")
    assert detect_format(path) == "npz"
    splits = open_splits(path, num_points=32)
    train, test = splits["train"], splits["test"]
    assert (len(train), len(test)) == (6, 3) and train.classes == ["a", "b", "c"]
    assert train.names[4] == "tr4" and test.labels.tolist() == [2, 1, 0]
    item = train[1]
    assert item["points"].shape == (32, 3) and item["label"] == 1 and item["index"] == 1
    first = open_splits(path, num_points=10)["train"][1]["points"]
    assert np.array_equal(first, random_clouds(6, 32, 1)[1, :10])
    rand_a = open_splits(path, num_points=10, subsample="random", seed=3)["train"][1]["points"]
    rand_b = open_splits(path, num_points=10, subsample="random", seed=3)["train"][1]["points"]
    rand_c = open_splits(path, num_points=10, subsample="random", seed=4)["train"][1]["points"]
    assert np.array_equal(rand_a, rand_b) and not np.array_equal(rand_a, rand_c)
    fps = open_splits(path, num_points=10, subsample="fps")["train"]
    assert fps[0]["points"].shape == (10, 3)
    points, labels = open_splits(path, num_points=10)["test"].load_all()
    assert points.shape == (3, 10, 3) and labels.tolist() == [2, 1, 0]


def test_npz_with_bytes_names(tmp_path):
    path = write_npz(tmp_path / "b.npz", classes=np.array([b"a", b"b", b"c"]), test_names=np.array([b"x", b"y", b"z"]))
    splits = open_splits(path, num_points=32)
    assert splits["train"].classes == ["a", "b", "c"] and splits["test"].names == ["x", "y", "z"]


def test_npz_without_optional_keys_gets_default_names(tmp_path):
    path = write_npz(tmp_path / "bare.npz", classes=None, train_names=None, test_names=None)
    train = open_splits(path, num_points=32)["train"]
    assert train.classes == ["class_0", "class_1", "class_2"] and train.names[0] == "train_00000"


@pytest.mark.parametrize(
    "problem, make, message",
    [
        ("empty", lambda p: p.write_bytes(b""), "is empty"),
        ("truncated", lambda p: p.write_bytes(write_npz(p).read_bytes()[:700]), "npz"),
        ("missing key", lambda p: write_npz(p, test_y=None), "test_y"),
        ("nan", lambda p: write_npz(p, train_x=np.where(np.arange(32)[None, :, None] == 5, np.nan, random_clouds(6, 32))), "'tr0'"),
        ("bad label", lambda p: write_npz(p, test_y=np.array([0, 1, 7])), "labels must lie"),
        ("pickled", lambda p: write_npz(p, classes=np.array(["a", None, 3], dtype=object)), "pickled"),
        ("text points", lambda p: write_npz(p, train_x=np.full((6, 32, 3), "x")), "numeric"),
        ("nan labels", lambda p: write_npz(p, test_y=np.array([0.0, np.nan, 1.0])), "whole class indices"),
        ("scalar classes", lambda p: write_npz(p, classes=np.array("abc")), "1-D array of names"),
        ("too few points", lambda p: write_npz(p, n_points=8), "fewer than the 32"),
    ],
)
def test_npz_errors_name_the_file_and_problem(tmp_path, problem, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises(DataFormatError, match=message) as err:
        open_splits(path, num_points=32)
    assert str(path) in str(err.value)


# --- modelnet40_ply_hdf5_2048 ---------------------------------------------------------------------


def write_h5_folder(folder: Path, with_normals: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shape_names.txt").write_text("airplane\nbathtub\nbed\n")
    layout = {"ply_data_train0.h5": 4, "ply_data_train1.h5": 3, "ply_data_test0.h5": 2}
    offset = 0
    for name, count in layout.items():
        with h5py.File(folder / name, "w") as h5:
            h5["data"] = random_clouds(count, 64, offset)
            h5["label"] = (np.arange(count) % 3).reshape(-1, 1).astype(np.uint8)
            if with_normals:
                h5["normal"] = random_clouds(count, 64, offset + 100)
        offset += 1
    stem = "ply_data_train_0_id2file.json"
    (folder / stem).write_text(json.dumps([f"airplane/airplane_{i:04d}.ply" for i in range(4)]))
    return folder


def test_ply_hdf5_reader(tmp_path):
    folder = write_h5_folder(tmp_path / "modelnet40_ply_hdf5_2048")
    assert detect_format(folder) == "ply_hdf5"
    splits = open_splits(folder, num_points=48)
    train = splits["train"]
    assert len(train) == 7 and len(splits["test"]) == 2 and train.classes == ["airplane", "bathtub", "bed"]
    assert train.names[:2] == ["airplane_0000", "airplane_0001"] and train.names[4] == "ply_data_train1_0"
    assert np.array_equal(train[4]["points"], random_clouds(3, 64, 1)[0, :48])
    assert train.labels.tolist() == [0, 1, 2, 0, 0, 1, 2] and train.up_axis == "y"
    with_normals = open_splits(write_h5_folder(tmp_path / "n", with_normals=True), num_points=16)["test"]
    assert with_normals[0]["normals"].shape == (16, 3)


def test_ply_hdf5_errors(tmp_path):
    folder = write_h5_folder(tmp_path / "h5")
    (folder / "shape_names.txt").unlink()
    with pytest.raises(DataFormatError, match="shape_names.txt.*missing"):
        open_splits(folder)
    folder = write_h5_folder(tmp_path / "h5b")
    with h5py.File(folder / "ply_data_test0.h5", "w") as h5:
        h5["data"] = random_clouds(2, 64)
    with pytest.raises(DataFormatError, match="ply_data_test0.h5.*'label'"):
        open_splits(folder, num_points=32)
    (folder / "ply_data_test0.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataFormatError, match="ply_data_test0.h5.*HDF5"):
        open_splits(folder, num_points=32)


# --- modelnet40_normal_resampled ------------------------------------------------------------------


def write_txt_cloud(path: Path, n: int, seed: int) -> np.ndarray:
    cloud = np.random.default_rng(seed).uniform(-1, 1, (n, 6)).round(6)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(",".join(f"{v:.6f}" for v in row) for row in cloud) + "\n")
    return cloud.astype(np.float32)


def write_resampled_folder(root: Path) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "modelnet40_shape_names.txt").write_text("chair\nnight_stand\n")
    clouds = {}
    for split, names in (("train", ["chair_0001", "night_stand_0001", "chair_0002"]), ("test", ["night_stand_0002"])):
        (root / f"modelnet40_{split}.txt").write_text("\n".join(names) + "\n")
        for i, name in enumerate(names):
            clouds[name] = write_txt_cloud(root / name.rsplit("_", 1)[0] / f"{name}.txt", 40, i + len(split))
    return clouds


def test_normal_resampled_reader(tmp_path):
    root = tmp_path / "modelnet40_normal_resampled"
    clouds = write_resampled_folder(root)
    assert detect_format(root) == "normal_resampled"
    splits = open_splits(root, num_points=32)
    train = splits["train"]
    assert train.labels.tolist() == [0, 1, 0] and train.names[1] == "night_stand_0001"
    item = train[1]
    np.testing.assert_allclose(item["points"], clouds["night_stand_0001"][:32, :3], atol=1e-6)
    np.testing.assert_allclose(item["normals"], clouds["night_stand_0001"][:32, 3:], atol=1e-6)
    assert splits["test"][0]["label"] == 1


@pytest.mark.parametrize(
    "content, message",
    [("", "is empty"), ("1,2,3,4\n", "4 columns"), ("1,2,3,4,5,6\n1,2,3,4,5\n", "truncated or ragged"),
     ("1,2,3,4,5,6\nnan,2,3,4,5,6\n", "NaN")],
)
def test_normal_resampled_malformed_files(tmp_path, content, message):
    path = tmp_path / "x.txt"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=message) as err:
        read_xyz_normal_txt(path)
    assert str(path) in str(err.value)


def test_folder_reader_skips_bad_files_when_asked(tmp_path):
    root = tmp_path / "resampled"
    write_resampled_folder(root)
    (root / "chair" / "chair_0002.txt").write_text("1,2,3,4,5,6\n1,2\n")
    with pytest.raises(DataFormatError, match="chair_0002.txt"):
        open_splits(root, num_points=32)["train"][2]
    train = open_splits(root, num_points=32, on_error="skip")["train"]
    assert "chair_0002.txt" in train[2]["error"] and "points" in train[0]
    points, labels = train.load_all()
    assert points.shape == (2, 32, 3) and labels.tolist() == [0, 1]


# --- meshes ---------------------------------------------------------------------------------------


TRI = "3 0.0 0.0 0.0\n"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.off", "", "is empty"),
        ("header.off", "PLY\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n", "wrong header"),
        ("truncated.off", "OFF\n4 2 0\n0 0 0\n1 0 0\n0 1 0\n", "truncated"),
        ("nofaces.off", "OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n", "no faces"),
        ("nan.off", "OFF\n3 1 0\n0 0 0\nnan 0 0\n0 1 0\n3 0 1 2\n", "NaN"),
        ("index.off", "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n", "face index"),
        ("flat.off", "OFF\n3 1 0\n0 0 0\n0 0 0\n0 0 0\n3 0 1 2\n", "positive area"),
        ("noface.obj", "v 0 0 0\nv 1 0 0\n", "no "),
        ("empty.stl", "solid x\nendsolid x\n", "no "),
    ],
)
def test_malformed_meshes_raise_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataFormatError, match=message) as err:
        load_mesh(path)
    assert str(err.value).startswith(str(path))


def test_modelnet_off_header_glued_to_counts_is_read(tmp_path):
    path = tmp_path / "glued.off"
    path.write_text("OFF3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    mesh = load_mesh(path)
    assert mesh.vertices.shape == (3, 3) and mesh.faces.tolist() == [[0, 1, 2]]


def test_modelnet_mesh_folder_reader(tmp_path):
    root = export_builtin_meshes(tmp_path / "ModelNet", seed=0, train=2, test=1)
    assert detect_format(root) == "modelnet_meshes"
    splits = open_splits(root, num_points=128)
    train, test = splits["train"], splits["test"]
    n = len(BUILTIN_CLASSES)
    assert (len(train), len(test)) == (2 * n, n) and train.classes == BUILTIN_CLASSES
    item = test[3]
    assert item["points"].shape == (128, 3) and item["normals"].shape == (128, 3)
    assert np.isclose(np.linalg.norm(item["points"], axis=1).max(), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(item["normals"], axis=1), 1.0, atol=1e-4)
    assert np.array_equal(item["points"], open_splits(root, num_points=128)["test"][3]["points"])  # deterministic
    assert test.names[3] == f"{BUILTIN_CLASSES[3]}_0002" and test.up_axis == "z"


def test_generic_mesh_folder_with_mixed_formats(tmp_path):
    root = tmp_path / "meshes"
    formats = ["off", "obj", "ply", "stl", "obj"]
    for cls, maker in (("boxes", lambda i: trimesh.creation.box([1, 1 + i, 1])), ("balls", lambda i: trimesh.creation.icosphere(1))):
        for i, ext in enumerate(formats):
            folder = root / cls / f"item{i}" / "models"
            folder.mkdir(parents=True)
            maker(i).export(folder / f"model.{ext}")
    assert detect_format(root) == "mesh_folder"
    splits = open_splits(root, num_points=64)
    assert len(splits["train"]) == 8 and len(splits["test"]) == 2  # every fifth file of each class
    assert splits["train"].classes == ["balls", "boxes"]
    for ds in splits.values():
        for i in range(len(ds)):
            assert ds[i]["points"].shape == (64, 3)


def test_shapenet_mini_folder_reads_real_meshes():
    root = shared_data("shapenet_mini")
    splits = open_splits(root, num_points=256)
    assert len(splits["train"]) + len(splits["test"]) == 93
    assert len(splits["train"].classes) == 10
    item = splits["test"][0]
    assert item["points"].shape == (256, 3) and np.isfinite(item["points"]).all()
    assert "/" in splits["test"].names[0]  # class/shapenet-id


def test_modelnet10_view_of_a_modelnet40_source(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(40).repeat(2)
    path = write_npz(tmp_path / "mn40.npz", classes=np.array(MODELNET40), n_points=16,
                     train_x=random_clouds(80, 16), train_y=labels, train_names=np.array([f"s{i}" for i in range(80)]),
                     test_x=random_clouds(40, 16), test_y=rng.permutation(40), test_names=np.array([f"t{i}" for i in range(40)]))
    splits = open_splits(path, num_points=16, subset="modelnet10")
    train = splits["train"]
    assert train.classes == MODELNET10_CLASSES and len(train) == 20 and len(splits["test"]) == 10
    chair40 = MODELNET40.index("chair")
    chair_rows = [i for i in range(len(train)) if train.classes[train.labels[i]] == "chair"]
    assert [train.names[i] for i in chair_rows] == [f"s{2 * chair40}", f"s{2 * chair40 + 1}"]
    assert np.array_equal(train[chair_rows[0]]["points"], random_clouds(80, 16)[2 * chair40])
    points, labels10 = train.load_all()
    assert points.shape == (20, 16, 3) and sorted(set(labels10.tolist())) == list(range(10))
    with pytest.raises(DataFormatError, match="has no class .bathtub."):
        open_splits(write_npz(tmp_path / "abc.npz"), num_points=32, subset="modelnet10")


def test_shared_modelnet40_npz():
    path = shared_data("modelnet40_1024.npz")
    splits = open_splits(path)
    assert (len(splits["train"]), len(splits["test"])) == (9843, 2468)
    assert len(splits["train"].classes) == 40 and splits["train"].names[0] == "airplane_0001"
    assert len(open_splits(path, subset="modelnet10")["test"]) == 908


def test_detect_format_errors(tmp_path):
    with pytest.raises(DataFormatError, match="does not exist"):
        detect_format(tmp_path / "nope")
    (tmp_path / "x.csv").write_text("1")
    with pytest.raises(DataFormatError, match="not a supported dataset file"):
        detect_format(tmp_path / "x.csv")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataFormatError, match="holds no supported dataset"):
        detect_format(tmp_path / "empty")


# --- built-in data --------------------------------------------------------------------------------


def test_builtin_dataset_is_deterministic_and_varied():
    a = builtin_splits(num_points=256, seed=0, train=3, test=1)
    b = builtin_splits(num_points=256, seed=0, train=3, test=1)
    c = builtin_splits(num_points=256, seed=1, train=3, test=1)
    assert np.array_equal(a["train"].load_all()[0], b["train"].load_all()[0])
    assert not np.array_equal(a["train"].load_all()[0], c["train"].load_all()[0])
    n = len(BUILTIN_CLASSES)
    assert n >= 10 and len(a["train"]) == 3 * n and len(a["test"]) == n
    meshes = builtin_meshes(seed=0, per_class=6)
    for label, cls in enumerate(BUILTIN_CLASSES):
        extents = np.array([np.ptp(m.vertices, axis=0) for m, lab, _ in meshes if lab == label])
        assert (extents.std(axis=0) / extents.mean(axis=0)).max() > 0.05, f"{cls} does not vary"


def test_builtin_part_labels():
    for cls in BUILTIN_CLASSES:
        mesh = make_shape(cls, 0)
        lo, hi = part_offset(cls), part_offset(cls) + len(PART_NAMES[cls])
        assert mesh.face_labels.shape == (len(mesh.faces),)
        assert lo <= mesh.face_labels.min() and mesh.face_labels.max() < hi
    ds = builtin_splits(num_points=128, seed=0, train=1, test=0)["train"]
    item = ds[BUILTIN_CLASSES.index("chair")]
    chair_parts = set(item["part_labels"].tolist())
    assert {part_offset("chair"), part_offset("chair") + 1, part_offset("chair") + 2} <= chair_parts


def test_builtin_spec_parsing():
    assert parse_builtin_spec("builtin") == {"seed": 0, "train": 40, "test": 10}
    assert parse_builtin_spec("builtin:seed=3,train=5", seed=9) == {"seed": 3, "train": 5, "test": 10}
    with pytest.raises(ValueError, match="bad builtin option"):
        parse_builtin_spec("builtin:colour=red")
    assert detect_format("builtin:test=2") == "builtin"
    splits = open_splits("builtin:train=1,test=1", num_points=64)
    assert len(splits["train"]) == len(BUILTIN_CLASSES) and splits["train"][0]["points"].shape == (64, 3)


def test_mesh_folder_with_split_folders_first(tmp_path):
    """root/{train,test}/<class>/...: classes come from the second level, splits from the first."""
    root = tmp_path / "split_first"
    for split, count in (("train", 3), ("test", 2)):
        for cls, maker in (("boxes", lambda i: trimesh.creation.box([1, 1 + i, 1])), ("balls", lambda i: trimesh.creation.icosphere(1))):
            for i in range(count):
                folder = root / split / cls / f"obj{i}" / "models"
                folder.mkdir(parents=True)
                maker(i).export(folder / "model_normalized.obj")
    splits = open_splits(root, num_points=32)
    assert splits["train"].classes == ["balls", "boxes"]
    assert (len(splits["train"]), len(splits["test"])) == (6, 4)
    assert sorted(splits["test"].names) == ["balls/obj0", "balls/obj1", "boxes/obj0", "boxes/obj1"]
    assert splits["test"].labels.tolist().count(1) == 2
