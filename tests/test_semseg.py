"""The S3DIS semantic-segmentation protocol (eval/semseg.py) on a tiny S3DIS-layout folder the
tests write: voting by hand, every test point scored once, an end-to-end run through the
command-line options, and clear errors for inputs that do not fit."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from pretext3d.data.s3dis import S3DIS_CLASSES, open_semseg
from pretext3d.models.checkpoint import save_backbone
from pretext3d.cli_evaluate import add_semseg_arguments, semseg_config
from pretext3d.eval.semseg import (
    SemsegConfig,
    _resolve_inputs,
    format_semseg,
    hold_out_rooms,
    run_semseg,
    score_rooms,
    vote,
)
from pretext3d.models import PointNet, PointNetPointwise
from pretext3d.utils.io import atomic_write_json

FLOOR, TABLE, CEILING = (S3DIS_CLASSES.index(c) for c in ("floor", "table", "ceiling"))
# (area, room) of the tiny data set; Area_3 is the test area of these tests
ROOMS = [(1, "office_1"), (1, "office_2"), (2, "hallway_1"), (2, "office_1"), (3, "office_1"), (3, "office_2")]


def tiny_room(seed: int) -> np.ndarray:
    """(P, 7) x y z r g b label: a 2 m x 2 m floor (z ~ 0), a 0.8 m table top at z ~ 0.75 somewhere
    on it, a sparse ceiling at z ~ 2.5; a few hundred points, jittered per room."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(0, 2.01, 0.1), np.arange(0, 2.01, 0.1)), -1).reshape(-1, 2)
    floor = np.c_[grid, np.zeros(len(grid))]
    corner = rng.uniform(0.1, 1.1, 2)
    top = np.stack(np.meshgrid(np.arange(0, 0.81, 0.1), np.arange(0, 0.81, 0.1)), -1).reshape(-1, 2) + corner
    table = np.c_[top, np.full(len(top), 0.75)]
    sparse = grid[::3]
    ceiling = np.c_[sparse, np.full(len(sparse), 2.5)]
    xyz = np.concatenate([floor, table, ceiling]) + rng.normal(0, 0.01, (len(floor) + len(table) + len(ceiling), 3))
    labels = np.repeat([FLOOR, TABLE, CEILING], [len(floor), len(table), len(ceiling)])
    rgb = rng.integers(0, 256, (len(xyz), 3))
    data = np.c_[xyz, rgb, labels].astype(np.float64)
    data[:, :3] -= data[:, :3].min(axis=0)
    return data


def write_tiny_s3dis(root: Path, rooms=ROOMS) -> dict[str, np.ndarray]:
    """The npy export layout (Area_N_<room>.npy); returns room name -> rows written."""
    root.mkdir(parents=True)
    written = {}
    for i, (area, room) in enumerate(rooms):
        data = tiny_room(i)
        np.save(root / f"Area_{area}_{room}.npy", data)
        written[f"Area_{area}_{room}"] = data
    return written


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pretext3d evaluate semseg")
    add_semseg_arguments(parser)
    return parser.parse_args(list(argv))


# --- voting -----------------------------------------------------------------------------------


def test_vote_sums_the_scores_of_the_blocks_holding_a_point():
    # point 1 lies in both blocks: A says class 0 (0.7), B says class 1 (0.55); the summed scores
    # (1.15, 0.85) pick class 0. Point 2 appears twice in block B (a fill-up copy): its copies
    # count once, with their mean (0.4, 0.6).
    blocks = [(np.array([0, 1]), np.array([[0.9, 0.1], [0.7, 0.3]])),
              (np.array([1, 2, 2]), np.array([[0.45, 0.55], [0.2, 0.8], [0.6, 0.4]]))]
    totals, votes = vote(4, blocks, 2)
    np.testing.assert_allclose(totals, [[0.9, 0.1], [1.15, 0.85], [0.4, 0.6], [0, 0]])
    assert votes.tolist() == [1, 2, 1, 0]  # point 3 is in no block
    assert totals[:3].argmax(1).tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        vote(3, [(np.array([0, 1]), np.ones((2, 3)))], 2)


class HeightOracle(nn.Module):
    """A stand-in model that knows the tiny rooms: floor below 0.3 m, table below 1.5 m, ceiling above."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def logits(self, features: Tensor) -> Tensor:
        z = features[..., 2]
        label = torch.where(z < 0.3, FLOOR, torch.where(z < 1.5, TABLE, CEILING))
        return 10 * nn.functional.one_hot(label, len(S3DIS_CLASSES)).float() + 0 * self.anchor


def test_every_test_point_is_scored_exactly_once(tmp_path):
    written = write_tiny_s3dis(tmp_path / "s3dis")
    test = open_semseg(tmp_path / "s3dis", test_area=3)["test"]
    rooms = [(test.names[i], *test.load(i)) for i in range(len(test))]
    scores = score_rooms(HeightOracle(), rooms, S3DIS_CLASSES, block_size=1.0, stride=0.5, num_points=64,
                         batch_size=8, progress=False)
    sizes = {name: len(written[name]) for name in test.names}
    assert scores["rooms"] == 2 and scores["points"] == sum(sizes.values())
    assert {r["name"]: r["points"] for r in scores["per_room"]} == sizes
    assert np.asarray(scores["confusion"]).sum() == sum(sizes.values())  # each point once, not once per block
    assert np.asarray(scores["confusion"]).sum(1)[[FLOOR, TABLE, CEILING]].tolist() == [
        sum(int((w[:, 6] == c).sum()) for n, w in written.items() if n.startswith("Area_3")) for c in (FLOOR, TABLE, CEILING)]
    assert scores["overall_accuracy"] == 1.0 and scores["miou"] == 1.0 and scores["mean_class_accuracy"] == 1.0
    assert scores["per_class_iou"]["floor"] == 1.0 and scores["per_class_iou"]["wall"] is None
    assert list(scores["per_class_iou"]) == S3DIS_CLASSES
    assert scores["blocks"] > scores["rooms"]  # overlapping blocks: many votes, one score per point


def test_validation_rooms_are_seeded_whole_rooms():
    train, val = hold_out_rooms(20, 0.1, seed=3)
    assert len(val) == 2 and np.intersect1d(train, val).size == 0 and len(train) + len(val) == 20
    assert np.array_equal(val, hold_out_rooms(20, 0.1, seed=3)[1])
    assert len(hold_out_rooms(3, 0.1, seed=0)[1]) == 1  # at least one room
    with pytest.raises(ValueError, match="at least 2"):
        hold_out_rooms(1, 0.1, seed=0)


# --- end to end -------------------------------------------------------------------------------


def test_semseg_end_to_end_through_the_options(tmp_path):
    written = write_tiny_s3dis(tmp_path / "s3dis")
    args = parse("--data", str(tmp_path / "s3dis"), "--test-area", "3", "--random-init", "--backbone", "pointnet",
                 "--emb-dims", "32", "--features", "all", "--points", "128", "--batch-size", "8", "--epochs", "1",
                 "--min-steps", "40", "--validations", "4", "--val-fraction", "0.25", "--modes", "frozen", "unfrozen",
                 "--lr", "0.01", "--device", "cpu", "--out", str(tmp_path / "runs"),
                 "--json", str(tmp_path / "semseg.json"), "--quiet", "--force")
    cfg = semseg_config(args)
    assert cfg.random_config == {"emb_dims": 32} and not cfg.progress and cfg.test_stride == 0.5
    lines: list[str] = []
    report = run_semseg(cfg, log=lines.append)
    assert lines[0].startswith("warning: 100% of the labels: 40 steps")  # --min-steps 40 < 100, forced
    atomic_write_json(args.json, report)  # what the command does with --json
    saved = json.loads(Path(args.json).read_text())
    assert saved["protocol"] == "semseg" and saved["test_area"] == 3 and saved["train_areas"] == [1, 2]
    for key in ("dataset", "rooms", "room_names", "block_size", "stride", "num_points", "features", "in_channels",
                "voting", "selection", "validation_rooms", "label_fractions", "training_blocks", "backbone",
                "backbone_config", "weights", "config", "classes"):
        assert key in saved, key
    assert saved["rooms"] == {"train": 3, "val": 1, "test": 2} and saved["features"] == "all" and saved["in_channels"] == 9
    assert saved["backbone_config"]["in_channels"] == 9 and saved["weights"] == "random-init"
    assert saved["config"]["num_points"] == 128 and saved["config"]["block_size"] == 1.0
    names = saved["room_names"]
    assert not set(names["val"]) & set(names["train"]) and not any(n.startswith("Area_3_") for n in names["val"])
    assert names["test"] == ["Area_3_office_1", "Area_3_office_2"]
    test_points = sum(len(written[n]) for n in names["test"])
    assert [(r["mode"], r["fraction"]) for r in saved["runs"]] == [("frozen", 1.0), ("unfrozen", 1.0)]
    for run in saved["runs"]:
        assert set(run["labelled_room_names"]) == set(names["train"])  # never a validation or test room
        for split in ("val", "test"):
            scores = run[split]
            assert 0 <= scores["miou"] <= 1 and 0 <= scores["overall_accuracy"] <= 1
            assert set(scores["per_class_iou"]) == set(S3DIS_CLASSES)
        assert run["test"]["points"] == test_points and run["val"]["points"] == len(written[names["val"][0]])
        assert run["val"]["miou"] == run["selected"]["miou"]
        folder = tmp_path / "runs" / f"semseg_{run['mode']}_1"
        val = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if "val_miou" in line]
        assert len(val) == 4 and val[-1]["step"] == run["steps"] == 40
        best = max(val, key=lambda r: (r["val_miou"], -r["step"]))  # the first best is kept
        assert run["selected"]["step"] == best["step"] and (folder / "best.safetensors").exists()
    # floor, table and ceiling are told apart by height: the trained model learns the test rooms
    unfrozen = saved["runs"][1]["test"]
    assert unfrozen["overall_accuracy"] > 0.9 and unfrozen["miou"] > 0.8, unfrozen
    text = format_semseg(report)
    assert "test Area_3 (2 rooms)" in text and "unfrozen" in text and "floor" in text
    assert any("Area_3_office_2" in line for line in lines)  # a line per test room


def test_checkpoint_default_features_and_frozen_backbone(tmp_path):
    from safetensors.torch import load_file

    write_tiny_s3dis(tmp_path / "s3dis")
    torch.manual_seed(0)
    config = {"encoder_widths": [16, 32], "decoder_widths": [32], "skip_layer": 0, "num_outputs": 8}
    ckpt = save_backbone(tmp_path / "pw.safetensors", PointNetPointwise(**config).eval(), "pointnet-pointwise", config)
    args = parse("--data", str(tmp_path / "s3dis"), "--test-area", "3", "--checkpoint", str(ckpt), "--points", "128",
                 "--batch-size", "4", "--epochs", "1", "--validations", "1", "--modes", "frozen", "--device", "cpu",
                 "--out", str(tmp_path / "runs"), "--quiet", "--force")
    report = run_semseg(semseg_config(args), log=lambda m: None)
    assert report["features"] == "xyz" and report["in_channels"] == 3 and report["weights"] == str(ckpt)
    run = report["runs"][0]
    assert run["backbone_config"]["num_outputs"] == len(S3DIS_CLASSES) and 0 <= run["test"]["miou"] <= 1
    original = load_file(str(ckpt))
    tuned = load_file(str(tmp_path / "runs" / "semseg_frozen_1" / "backbone.safetensors"))
    for key, value in original.items():  # weights and BatchNorm statistics, except the new last layer
        if not key.startswith("classifier."):
            torch.testing.assert_close(tuned[key], value, rtol=0, atol=0)
    assert tuned["classifier.weight"].shape == (len(S3DIS_CLASSES), 32)


# --- errors -----------------------------------------------------------------------------------


def test_features_that_do_not_fit_the_checkpoint_are_refused(tmp_path):
    write_tiny_s3dis(tmp_path / "s3dis")
    ckpt = save_backbone(tmp_path / "pn.safetensors", PointNet(emb_dims=16).eval(), "pointnet", {"emb_dims": 16})
    args = parse("--data", str(tmp_path / "s3dis"), "--test-area", "3", "--checkpoint", str(ckpt), "--features", "all",
                 "--device", "cpu", "--quiet", "--out", str(tmp_path / "runs"))
    with pytest.raises(ValueError, match=r"takes 3 input channels \(xyz\), but features 'all' give 9"):
        run_semseg(semseg_config(args), log=lambda m: None)
    assert not (tmp_path / "runs").exists()  # refused before any training
    six = save_backbone(tmp_path / "pn6.safetensors", PointNet(in_channels=6, emb_dims=16).eval(), "pointnet",
                        {"in_channels": 6, "emb_dims": 16})
    with pytest.raises(ValueError, match="colours, not normals"):  # 6 channels are usually xyz + normals
        _resolve_inputs(SemsegConfig(data="-", checkpoint=str(six)))
    assert _resolve_inputs(SemsegConfig(data="-", checkpoint=str(six), features="xyzrgb"))[:2] == ("xyzrgb", 6)
    with pytest.raises(ValueError, match="takes 6 input channels"):
        _resolve_inputs(SemsegConfig(data="-", checkpoint=str(six), features="xyz"))
    # random init: any features, if the backbone takes extra channels at all
    assert _resolve_inputs(SemsegConfig(data="-", random_init=True, backbone="dgcnn", features="xyzrgb"))[3]["in_channels"] == 6
    with pytest.raises(ValueError, match="dgcnn-seg backbone takes xyz only"):
        _resolve_inputs(SemsegConfig(data="-", random_init=True, backbone="dgcnn-seg", features="all"))
    assert _resolve_inputs(SemsegConfig(data="-", random_init=True, backbone="dgcnn-seg"))[3] == {"num_categories": 0}


def test_bad_splits_and_options_give_clear_errors(tmp_path):
    write_tiny_s3dis(tmp_path / "s3dis")
    base = ["--data", str(tmp_path / "s3dis"), "--random-init", "--backbone", "pointnet", "--device", "cpu", "--quiet"]
    with pytest.raises(ValueError, match=r"no Area_4 \(areas found: \[1, 2, 3\]\)"):
        run_semseg(semseg_config(parse(*base, "--test-area", "4")), log=lambda m: None)
    write_tiny_s3dis(tmp_path / "only3", rooms=[(3, "office_1")])
    with pytest.raises(ValueError, match="no training rooms"):
        run_semseg(SemsegConfig(data=str(tmp_path / "only3"), test_area=3, random_init=True, backbone="pointnet"))
    write_tiny_s3dis(tmp_path / "one", rooms=[(1, "office_1"), (3, "office_1")])
    with pytest.raises(ValueError, match=r"hold 1 room\(s\); at least 2"):
        run_semseg(SemsegConfig(data=str(tmp_path / "one"), test_area=3, random_init=True, backbone="pointnet"))
    with pytest.raises(ValueError, match="needs --backbone"):
        semseg_config(parse("--data", "x", "--random-init"))
    with pytest.raises(ValueError, match="stride"):
        run_semseg(SemsegConfig(data="x", random_init=True, backbone="pointnet", stride=2.0))
    with pytest.raises(SystemExit):  # --checkpoint and --random-init exclude each other
        parse("--data", "x", "--random-init", "--checkpoint", "c")


def test_train_areas_and_the_parae_preset(tmp_path):
    """--train-areas keeps the training rooms of those areas; --preset parae (a single training
    area, tested on Area 5) needs exactly one of them."""
    from pretext3d.eval.semseg import _open_rooms

    write_tiny_s3dis(tmp_path / "s3dis")
    cfg = semseg_config(parse("--data", str(tmp_path / "s3dis"), "--test-area", "3", "--train-areas", "2",
                              "--random-init", "--backbone", "pointnet"))
    rooms = _open_rooms(cfg)
    assert set(rooms["train"].areas.tolist()) == {2} and rooms["train"].names and set(rooms["test"].areas.tolist()) == {3}
    with pytest.raises(ValueError, match=r"holds no rooms of training area\(s\) \[4\]"):
        _open_rooms(semseg_config(parse("--data", str(tmp_path / "s3dis"), "--test-area", "3", "--train-areas", "4",
                                        "--random-init", "--backbone", "pointnet")))
    with pytest.raises(ValueError, match="cannot also be a training area"):
        _open_rooms(semseg_config(parse("--data", str(tmp_path / "s3dis"), "--test-area", "3", "--train-areas", "3",
                                        "--random-init", "--backbone", "pointnet")))
    preset = semseg_config(parse("--data", "x", "--preset", "parae", "--train-areas", "1", "--random-init",
                                 "--backbone", "pointnet"))
    assert preset.test_area == 5 and preset.train_areas == [1] and preset.preset == "parae"
    with pytest.raises(ValueError, match="--preset parae needs --train-areas K, one area other than 5"):
        semseg_config(parse("--data", "x", "--preset", "parae", "--random-init", "--backbone", "pointnet"))
