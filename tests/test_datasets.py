"""Protocols read prepared stores like any dataset, and trial subsets (--classes, --per-class)
cut any source the same seeded way: selections worked by hand, a store's clouds equal to its
stored points, and the point and store protocols end to end on a selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pretext3d.cli import main
from pretext3d.data.datasets import open_point_splits, point_format
from pretext3d.data.errors import DataFormatError
from pretext3d.data.prepare import prepare
from pretext3d.data.selection import Selection, select_rows
from pretext3d.data.store import StoreSettings, read_index, read_object

SMALL = StoreSettings(points=256, views=2, image_size=32, faces=64)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets") / "store"
    summary = prepare("builtin:train=4,test=2", root, SMALL, workers=1, progress=False)
    assert summary.done == 14 * 6 and not summary.failed
    return root


def test_a_selection_keeps_the_named_classes_in_order_and_n_per_class():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 0])
    rows, kept, relabelled = select_rows(labels, ["a", "b", "c"], Selection(classes=("c", "a")), "data")
    assert kept == ["c", "a"] and rows.tolist() == [0, 1, 2, 5, 6, 7]
    assert relabelled.tolist() == [1, 1, 1, 0, 0, 1]  # c -> 0, a -> 1
    two, _, _ = select_rows(labels, ["a", "b", "c"], Selection(per_class=2, seed=5), "data")
    one, _, _ = select_rows(labels, ["a", "b", "c"], Selection(per_class=1, seed=5), "data")
    assert len(two) == 6 and np.bincount(labels[two]).tolist() == [2, 2, 2]
    assert set(one) <= set(two) and np.bincount(labels[one]).tolist() == [1, 1, 1]  # nested across N
    # the draw of a class does not depend on which other classes are kept
    only_a, _, _ = select_rows(labels, ["a", "b", "c"], Selection(classes=("a",), per_class=2, seed=5), "data")
    assert set(only_a) == {r for r in two if labels[r] == 0}
    with pytest.raises(DataFormatError, match="data: has no class 'z'; its classes: a, b, c"):
        select_rows(labels, ["a", "b", "c"], Selection(classes=("z",)), "data")


def test_a_store_reads_as_point_splits_with_its_stored_points(store):
    assert point_format(store) == "store"
    splits = open_point_splits(store, num_points=128)
    index = read_index(store)
    assert {s: len(d) for s, d in splits.items()} == {"train": 56, "test": 28}
    first = next(e for e in index["objects"] if e["split"] == "test")
    item = splits["test"][0]
    stored = read_object(store / first["file"], ("points", "normals"))
    np.testing.assert_array_equal(item["points"], stored["points"][:128])  # the first N, farthest-point order
    np.testing.assert_array_equal(item["normals"], stored["normals"][:128])
    assert item["label"] == first["label"] and splits["test"].names[0] == first["name"]
    with pytest.raises(DataFormatError, match="stores 256 points per object, fewer than the 512"):
        open_point_splits(store, num_points=512)
    with pytest.raises(DataFormatError, match="--subset modelnet10 reads ModelNet40 files"):
        open_point_splits(store, subset="modelnet10")


def test_a_damaged_object_file_is_skipped_and_named(store, tmp_path):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    entry = next(e for e in read_index(copy)["objects"] if e["split"] == "train")
    (copy / entry["file"]).write_bytes(b"not a zip")
    item = open_point_splits(copy, num_points=64, on_error="skip")["train"][0]
    assert "error" in item and entry["file"].split("/")[-1] in item["error"] and "cannot be read" in item["error"]


def test_linear_svm_on_a_selection_of_a_store(store, tmp_path, capsys):
    out = tmp_path / "svm.json"
    assert main(["evaluate", "linear-svm", "--data", str(store), "--random-init", "--backbone", "pointnet",
                 "--emb-dims", "32", "--points", "64", "--classes", "mug", "chair", "lamp", "--per-class", "3",
                 "--C", "1", "--no-cache", "--quiet", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "data subset     classes mug, chair, lamp; at most 3 objects per class and split (seed 0)" in printed
    report = json.loads(out.read_text())
    assert report["dataset_format"] == "store" and report["num_classes"] == 3
    assert report["train_size"] == 9 and report["test_size"] == 6  # 3 per class in train, the 2 there are in test
    assert report["sampling"].startswith("first N stored points")
    # the same selection of a point dataset: the built-in shapes
    assert main(["evaluate", "linear-svm", "--data", "builtin:train=4,test=2", "--random-init", "--backbone", "pointnet",
                 "--emb-dims", "32", "--points", "64", "--per-class", "2", "--C", "1", "--no-cache", "--quiet",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["train_size"] == 28 and report["test_size"] == 28 and report["num_classes"] == 14


def test_store_retrieval_on_a_selection_renumbers_and_counts_queries_alike(store, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--recipe", "crosspoint_cpu", "--out", str(run), f"data={store}", "steps=1",
                 "batch_size=8", "data_options.points=64", "data_options.image_size=32",
                 "model.backbone_config={emb_dims: 32, widths: [16]}", "model.hidden_dim=16",
                 "model.projection_dim=8"]) == 0
    out = tmp_path / "retrieval.json"
    assert main(["evaluate", "retrieval", "--data", str(store), "--checkpoint", str(run), "--modalities", "points",
                 "image", "--points", "64", "--classes", "mug", "vase", "--per-class", "1", "--no-cache", "--quiet",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["num_classes"] == 2 and report["test_size"] == 2
    # one object per class: within a modality no query has a relevant item; across, each has its counterpart
    within = report["results"]["points->points"]
    assert within["queries"] == 0 and within["queries_without_relevant"] == 2
    across = report["results"]["points->image"]
    assert across["queries"] == 2 and across["queries_without_relevant"] == 0
    assert "points->points: 2 without a relevant item left out of every metric" in printed
