"""Evaluation: the linear-SVM protocol, feature extraction, BN calibration, caching, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretext3d.data import ArrayPointClouds, open_splits
from pretext3d.models.checkpoint import save_backbone
from pretext3d.runs import CheckpointError, load_backbone
from pretext3d.eval import LinearSVMConfig, calibrate_batchnorm, extract_features, fit_linear_svm, run_linear_svm
from pretext3d.eval.cache import FeatureCache
from pretext3d.eval.linear_svm import accuracy_scores
from pretext3d.models import DGCNN, PointNet, build_backbone


def blobs(n_per_class: int, dim: int = 5, seed: int = 0, spread: float = 0.3):
    rng = np.random.default_rng(seed)
    centres = np.eye(3, dim) * 3
    x = np.concatenate([c + spread * rng.standard_normal((n_per_class, dim)) for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(3), n_per_class)


def test_accuracy_scores_known_answer():
    y_true = np.array([0, 0, 0, 0, 1, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 0])
    overall, class_mean = accuracy_scores(y_true, y_pred)
    assert overall == pytest.approx(4 / 6)
    assert class_mean == pytest.approx((3 / 4 + 1 + 0) / 3)


def test_linear_svm_on_separable_features():
    tx, ty = blobs(20)
    vx, vy = blobs(10, seed=1)
    result = fit_linear_svm(tx, ty, vx, vy, C=1.0)
    assert result.accuracy == 1.0 and result.C == 1.0 and result.cv_accuracy is None
    assert (result.train_size, result.test_size, result.feature_dim) == (60, 30, 5)


def test_C_is_chosen_on_train_only(monkeypatch):
    """The CV sees only training rows; the test rows reach exactly one predict call."""
    tx, ty = blobs(12, spread=1.2)
    vx, vy = blobs(6, seed=1, spread=1.2)
    seen_fit, seen_predict = [], []
    import sklearn.svm

    class Spy(sklearn.svm.SVC):
        def fit(self, X, y, sample_weight=None):
            seen_fit.append(X.copy())
            return super().fit(X, y, sample_weight)

        def predict(self, X):
            seen_predict.append(X.copy())
            return super().predict(X)

    monkeypatch.setattr("pretext3d.eval.linear_svm.SVC", Spy)
    result = fit_linear_svm(tx, ty, vx, vy, C=None, C_grid=(0.01, 1.0), folds=3)
    train_rows = {r.tobytes() for r in tx}
    assert all(r.tobytes() in train_rows for X in seen_fit for r in X)
    test_predicts = [X for X in seen_predict if X.shape == vx.shape and np.array_equal(X, vx)]
    assert len(test_predicts) == 1
    assert set(result.cv_accuracy) == {"0.01", "1.0"} and result.C in (0.01, 1.0) and result.cv_folds == 3


def test_cv_needs_two_samples_per_class():
    tx, ty = blobs(1)
    with pytest.raises(ValueError, match="pass C"):
        fit_linear_svm(tx, ty, tx, ty, C=None)


def tiny_dataset(n: int = 24, points: int = 64, seed: int = 0) -> ArrayPointClouds:
    from tests_helpers import tiny_clouds

    return tiny_clouds(n, points, seed)


def test_extract_features_batches_and_order():
    ds = tiny_dataset(10)
    model = PointNet(emb_dims=32).eval()
    feats = extract_features(model, ds, batch_size=4, progress=False)
    assert feats.features.shape == (10, 64) and feats.indices.tolist() == list(range(10))
    with torch.no_grad():
        direct = model(torch.from_numpy(ds.load_all()[0])).global_.numpy()
    np.testing.assert_allclose(feats.features, direct, rtol=1e-5, atol=1e-5)


def test_extract_features_skips_and_reports_unreadable_items(tmp_path):
    from tests_helpers import write_resampled_with_bad_file

    root = write_resampled_with_bad_file(tmp_path)
    train = open_splits(root, num_points=32, on_error="skip")["train"]
    feats = extract_features(PointNet(emb_dims=16), train, batch_size=2, progress=False)
    assert len(feats.features) == len(train) - 1 and len(feats.skipped) == 1 and "box_0002.txt" in feats.skipped[0]


def test_batchnorm_calibration_sets_statistics_to_the_data():
    """After calibration the first layer's running mean equals the mean of its pre-BN outputs."""
    ds = tiny_dataset(16)
    torch.manual_seed(0)
    model = PointNet(emb_dims=32)
    used = calibrate_batchnorm(model, ds, num_clouds=16, batch_size=16, progress=False)
    assert used == 16 and not model.training
    first = model.layers[0]
    points = torch.from_numpy(ds.load_all()[0])
    with torch.no_grad():
        pre = first.linear(points).reshape(-1, first.linear.out_features)
    torch.testing.assert_close(first.bn.running_mean, pre.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first.bn.running_var, pre.var(0), rtol=1e-3, atol=1e-5)


def test_checkpoint_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    model = build_backbone("dgcnn", k=8, emb_dims=32).eval()
    path = save_backbone(tmp_path / "ckpt.safetensors", model, "dgcnn", {"k": 8, "emb_dims": 32}, {"method": "test"})
    loaded = load_backbone(path, expected="dgcnn")
    x = torch.rand(2, 64, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x).global_, model(x).global_)
    assert loaded.extra == {"method": "test"} and loaded.source == "pretext3d"
    with pytest.raises(CheckpointError, match="not a pointnet"):
        load_backbone(path, expected="pointnet")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_backbone(tmp_path / "junk.safetensors")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="known reference"):
        load_backbone(tmp_path / "other.pth")


def test_reference_weights_load_as_checkpoint(tmp_path):
    """A CrossPoint-style .pth (state dict, possibly DataParallel-prefixed) evaluates directly."""
    from conftest import golden_case, golden_state_dict

    sd = {f"module.{k}": torch.from_numpy(v) for k, v in golden_state_dict(golden_case("crosspoint_dgcnn_small")).items()}
    torch.save(sd, tmp_path / "best_model.pth")
    loaded = load_backbone(tmp_path / "best_model.pth", expected="dgcnn", k=8)
    assert loaded.source == "crosspoint-dgcnn"
    assert loaded.model(torch.rand(2, 32, 3)).global_.shape == (2, 128)


def test_run_linear_svm_end_to_end_with_cache(tmp_path):
    from tests_helpers import write_two_class_npz

    data = write_two_class_npz(tmp_path / "two.npz")
    cfg = LinearSVMConfig(data=str(data), backbone="pointnet", random_init=True, num_points=64, seeds=[0, 1],
                          C=1.0, emb_dims=32, bn_calibration_clouds=32, batch_size=8,
                          cache_dir=str(tmp_path / "cache"), progress=False)
    report = run_linear_svm(cfg, log=lambda m: None)
    assert report["accuracy"] >= 0.9 and report["feature_dim"] == 64 and report["num_points"] == 64
    assert report["C"] == 1.0 and len(report["per_seed"]) == 2 and report["bn_calibration"]
    assert not any(r["cached"] for r in report["per_seed"])
    again = run_linear_svm(cfg, log=lambda m: None)
    assert all(r["cached"] for r in again["per_seed"]) and again["accuracy"] == report["accuracy"]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 4  # 2 seeds x 2 splits


def test_cached_features_still_check_the_checkpoint_backbone(tmp_path):
    from tests_helpers import write_two_class_npz

    data = write_two_class_npz(tmp_path / "two.npz")
    ckpt = save_backbone(tmp_path / "pn.safetensors", PointNet(emb_dims=16).eval(), "pointnet", {"emb_dims": 16})
    cfg = LinearSVMConfig(data=str(data), backbone="pointnet", checkpoint=str(ckpt), num_points=32, C=1.0,
                          cache_dir=str(tmp_path / "cache"), progress=False)
    first = run_linear_svm(cfg, log=lambda m: None)
    again = run_linear_svm(cfg, log=lambda m: None)
    assert again["per_seed"][0]["cached"] and again["backbone_config"] == first["backbone_config"] == {"emb_dims": 16}
    with pytest.raises(CheckpointError, match="not a dgcnn"):
        run_linear_svm(LinearSVMConfig(**{**cfg.__dict__, "backbone": "dgcnn"}), log=lambda m: None)


def test_data_fingerprint_of_a_folder_named_like_builtin_follows_its_files(tmp_path):
    from pretext3d.eval.cache import data_fingerprint

    folder = tmp_path / "builtin_meshes"
    folder.mkdir()
    (folder / "a.off").write_text("OFF\n")
    before = data_fingerprint(folder, "mesh_folder")
    (folder / "b.off").write_text("OFF\n")
    assert data_fingerprint(folder, "mesh_folder") != before
    assert data_fingerprint("builtin:seed=1", "builtin") != data_fingerprint("builtin:seed=2", "builtin")


def test_bn_calibration_needs_real_batches():
    with pytest.raises(ValueError, match="at least 2"):
        calibrate_batchnorm(PointNet(emb_dims=8), tiny_dataset(4), batch_size=1, progress=False)


def test_reference_pointnet_weights_load_as_checkpoint(tmp_path):
    """CrossPoint's PointNet state dict (conv1..5 + bn1..5 + inv_head) with the DGCNN-only k given."""
    g = torch.Generator().manual_seed(0)
    widths = [(3, 64), (64, 64), (64, 64), (64, 128), (128, 32)]
    sd = {}
    for i, (c_in, c_out) in enumerate(widths, start=1):
        sd[f"conv{i}.weight"] = torch.randn(c_out, c_in, 1, generator=g)
        sd.update({f"bn{i}.weight": torch.rand(c_out, generator=g) + 0.5, f"bn{i}.bias": torch.randn(c_out, generator=g),
                   f"bn{i}.running_mean": torch.randn(c_out, generator=g), f"bn{i}.running_var": torch.rand(c_out, generator=g) + 0.5,
                   f"bn{i}.num_batches_tracked": torch.tensor(3)})
    sd.update({"inv_head.0.weight": torch.randn(32, 32, generator=g), "inv_head.0.bias": torch.zeros(32),
               "inv_head.1.weight": torch.ones(32), "inv_head.1.bias": torch.zeros(32),
               "inv_head.1.running_mean": torch.zeros(32), "inv_head.1.running_var": torch.ones(32),
               "inv_head.1.num_batches_tracked": torch.tensor(0),
               "inv_head.3.weight": torch.randn(256, 32, generator=g), "inv_head.3.bias": torch.zeros(256)})
    torch.save(sd, tmp_path / "pointnet.pth")
    loaded = load_backbone(tmp_path / "pointnet.pth", expected="pointnet", k=20)
    assert loaded.source == "crosspoint-pointnet" and loaded.config == {}
    x = torch.rand(2, 50, 3)
    h = x
    for i in range(1, 6):
        h = torch.nn.functional.conv1d(h.transpose(1, 2), sd[f"conv{i}.weight"]).transpose(1, 2)
        h = (h - sd[f"bn{i}.running_mean"]) / torch.sqrt(sd[f"bn{i}.running_var"] + 1e-5) * sd[f"bn{i}.weight"] + sd[f"bn{i}.bias"]
        h = torch.relu(h)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x).global_, h.amax(dim=1), rtol=1e-4, atol=1e-4)


def test_run_linear_svm_needs_exactly_one_weight_source(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        run_linear_svm(LinearSVMConfig(data="builtin", backbone="pointnet"))


def test_feature_cache_keys_differ_by_every_part(tmp_path):
    base = dict(weights={"a": 1}, data="d", split="train", points=1024)
    keys = {FeatureCache.key(**base), FeatureCache.key(**dict(base, split="test")),
            FeatureCache.key(**dict(base, points=512)), FeatureCache.key(**dict(base, weights={"a": 2}))}
    assert len(keys) == 4


def test_dgcnn_random_init_separates_simple_shapes():
    """Sanity of the whole path: calibrated random DGCNN features separate spheres from squares."""
    train, test = tiny_dataset(24), tiny_dataset(12, seed=1)
    torch.manual_seed(0)
    model = DGCNN(k=8, emb_dims=64)
    calibrate_batchnorm(model, train, 24, 8, progress=False)
    a = extract_features(model, train, progress=False)
    b = extract_features(model, test, progress=False)
    assert fit_linear_svm(a.features, a.labels, b.features, b.labels, C=1.0).accuracy == 1.0
