"""The command line, end to end on tiny data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pretext3d.cli import main
from tests_helpers import write_two_class_npz


def test_evaluate_linear_svm_writes_the_contract_json(tmp_path, capsys):
    data = write_two_class_npz(tmp_path / "two.npz")
    out = tmp_path / "report.json"
    rc = main(["evaluate", "linear-svm", "--data", str(data), "--backbone", "dgcnn", "--random-init",
               "--points", "64", "--k", "8", "--emb-dims", "32", "--bn-calibration", "16", "--batch-size", "8",
               "--json", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert rc == 0
    report = json.loads(out.read_text())
    for key in ("protocol", "dataset", "backbone", "accuracy", "C", "feature_dim", "num_points"):
        assert key in report
    assert report["protocol"] == "linear-svm" and report["backbone"] == "dgcnn" and report["num_points"] == 64
    assert report["feature_dim"] == 64 and 0.0 <= report["accuracy"] <= 1.0
    assert report["C_selection"].startswith("3-fold CV on train")
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "BN statistics" in printed


def test_random_init_floor_like_a_checkpoint_takes_its_architecture(tmp_path, capsys):
    from pretext3d.models.checkpoint import save_backbone
    from pretext3d.models import build_backbone

    data = write_two_class_npz(tmp_path / "two.npz")
    config = {"k": 8, "widths": [8, 8, 8, 16], "emb_dims": 24, "pooling": "max"}  # CMCV's DGCNN shape, smaller
    checkpoint = save_backbone(tmp_path / "pretrained.safetensors", build_backbone("dgcnn", **config), "dgcnn", config)
    out = tmp_path / "floor.json"
    rc = main(["evaluate", "linear-svm", "--data", str(data), "--random-init", "--like", str(checkpoint), "--points", "64",
               "--bn-calibration", "16", "--batch-size", "8", "--json", str(out), "--no-cache", "--quiet"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["backbone"] == "dgcnn" and report["backbone_config"] == config and report["feature_dim"] == 24
    capsys.readouterr()
    assert main(["evaluate", "linear-svm", "--data", str(data), "--checkpoint", str(checkpoint), "--like", str(checkpoint)])
    assert "--like goes with --random-init" in capsys.readouterr().err
    assert main(["evaluate", "linear-svm", "--data", str(data), "--random-init", "--like", str(checkpoint),
                 "--backbone", "pointnet"])
    assert "holds a dgcnn backbone, not a pointnet" in capsys.readouterr().err


def test_evaluate_with_checkpoint(tmp_path):
    import torch

    from pretext3d.models.checkpoint import save_backbone
    from pretext3d.models import PointNet

    data = write_two_class_npz(tmp_path / "two.npz")
    ckpt = save_backbone(tmp_path / "pn.safetensors", PointNet(emb_dims=16).eval(), "pointnet", {"emb_dims": 16})
    rc = main(["evaluate", "linear-svm", "--data", str(data), "--backbone", "pointnet", "--checkpoint", str(ckpt),
               "--points", "32", "--C", "0.5", "--json", str(tmp_path / "r.json"), "--no-cache", "--quiet"])
    report = json.loads((tmp_path / "r.json").read_text())
    assert rc == 0 and report["weights"] == str(ckpt) and report["C"] == 0.5 and report["bn_calibration"] is None
    assert report["feature_dim"] == 32
    del torch


def test_checkpoint_taking_normals(tmp_path, capsys):
    from pretext3d.models.checkpoint import save_backbone
    from pretext3d.models import PointNet

    ckpt = save_backbone(tmp_path / "pn6.safetensors", PointNet(in_channels=6, emb_dims=16).eval(), "pointnet",
                         {"in_channels": 6, "emb_dims": 16})
    args = ["evaluate", "linear-svm", "--backbone", "pointnet", "--checkpoint", str(ckpt), "--points", "64",
            "--C", "1", "--no-cache", "--quiet"]
    assert main(args + ["--data", "builtin:train=2,test=1"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(args + ["--data", str(write_two_class_npz(tmp_path / "two.npz"))]) == 2
    assert "normals" in capsys.readouterr().err


def test_bad_inputs_give_one_clear_error(tmp_path, capsys):
    missing = tmp_path / "nothing.npz"
    rc = main(["evaluate", "linear-svm", "--data", str(missing), "--backbone", "pointnet", "--random-init", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and str(missing) in err and "does not exist" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["evaluate", "linear-svm", "--data", "builtin", "--backbone", "pointnet", "--random-init",
              "--checkpoint", "x.safetensors"])
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    rc = main(["evaluate", "linear-svm", "--data", str(broken), "--backbone", "pointnet", "--random-init", "--quiet"])
    assert rc == 2 and str(broken) in capsys.readouterr().err


def test_data_info_and_builtin_export(tmp_path, capsys):
    assert main(["data", "info", str(write_two_class_npz(tmp_path / "two.npz"))]) == 0
    out = capsys.readouterr().out
    assert "format npz" in out and "train: 24 clouds" in out and "flat (12/6)" in out
    assert main(["data", "builtin", "--out", str(tmp_path / "meshes"), "--train", "1", "--test", "1"]) == 0
    assert len(list((tmp_path / "meshes").rglob("*.off"))) == 28
    assert main(["data", "info", str(tmp_path / "meshes"), "--check"]) == 0
    assert "format modelnet_meshes" in capsys.readouterr().out


def test_mesh_folder_with_worker_processes(tmp_path, capsys):
    """Meshes sampled in DataLoader workers forked after the parent ran parallel kernels."""
    assert main(["data", "builtin", "--out", str(tmp_path / "m"), "--train", "2", "--test", "1"]) == 0
    rc = main(["evaluate", "linear-svm", "--data", str(tmp_path / "m"), "--backbone", "dgcnn", "--random-init",
               "--points", "128", "--k", "8", "--emb-dims", "32", "--workers", "2", "--C", "1", "--batch-size", "8",
               "--bn-calibration", "28", "--no-cache", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "area-weighted" in out and "28 train / 14 test" in out


def test_demo_pretrains_and_compares_with_random_init(tmp_path, capsys):
    args = ["demo", "--train", "3", "--test", "1", "--points", "128", "--steps", "2", "--episodes", "2",
            "--out", str(tmp_path / "demo"), "--quiet", "--threads", "1", "batch_size=8", "--image-size", "16",
            "data_options.builtin_store={views: 2, image_size: 32, faces: 64}"]
    rc = main(args)
    out = capsys.readouterr().out
    assert rc == 0 and "random init (parae arch.)" in out and "parae 2 steps" in out and "crosspoint 2 steps" in out
    assert "few-shot 14-way 1-shot" in out and "retrieval" in out
    for method, backbone in (("parae", "pointnet-pointwise"), ("crosspoint", "pointnet")):
        run = tmp_path / "demo" / f"pretrain_{method}"
        for protocol in ("linear_svm", "fewshot", "retrieval"):
            trained = json.loads((run / "eval" / f"{protocol}.json").read_text())
            floor = json.loads((run / "eval" / f"{protocol}_random_init.json").read_text())
            assert trained["backbone"] == floor["backbone"] == backbone  # the floor has the run's architecture
            assert floor["weights"] == "random-init" and trained["dataset"] == floor["dataset"]
            assert trained["num_points"] == floor["num_points"] == 128
        assert (run / "report.html").is_file()
    # a second demo reuses the finished runs and leaves them as they were
    config = (tmp_path / "demo" / "pretrain_parae" / "config.json").read_bytes()
    assert main([*args, "--methods", "parae", "--no-report"]) == 0
    with pytest.raises(SystemExit):
        main([*args, "--methods", "simclr"])
    assert (tmp_path / "demo" / "pretrain_parae" / "config.json").read_bytes() == config


def test_threads_take_the_free_cores_and_may_follow_the_command(monkeypatch):
    from pretext3d.cli import _threads_first
    from pretext3d.utils.threads import free_cores

    assert free_cores(load=0.1, cores=2) == 2 and free_cores(load=1.2, cores=2) == 1 and free_cores(load=7, cores=2) == 1
    assert free_cores(load=2.6, cores=8) == 5
    assert _threads_first(["demo", "--threads", "1", "--quiet"]) == ["--threads", "1", "demo", "--quiet"]
    assert _threads_first(["evaluate", "x", "--threads=auto"]) == ["--threads=auto", "evaluate", "x"]
    with pytest.raises(SystemExit):
        main(["--threads", "0", "recipes"])


def test_console_script_is_installed():
    from pathlib import Path

    script = Path(sys.executable).parent / "pretext3d"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip().startswith("pretext3d ")


def test_kernels_in_forked_data_loader_workers():
    """Workers forked after the parent started the kernels' thread pool fall back to serial
    kernels / torch code instead of aborting (numba's OpenMP pool is not fork-safe)."""
    code = """
import torch
from torch.utils.data import DataLoader, Dataset
from pretext3d.geometry import knn, farthest_point_sample
class D(Dataset):
    def __len__(self): return 4
    def __getitem__(self, i):
        x = torch.rand(2, 200, 3)
        return knn(x, 5).sum() + farthest_point_sample(x, 10).sum() + farthest_point_sample(x[0], 10).sum()
knn(torch.rand(4, 300, 3), 8)
print(len([v for v in DataLoader(D(), batch_size=2, num_workers=2)]))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "2", result.stderr[-2000:]
