"""Protocols on a prepared store's modalities: multi-view recognition, retrieval within and across
modalities, pretext metrics; and the pieces they are made of (view subsets, pooling, balanced
pairs, thresholds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pretext3d.cli import main
from pretext3d.data.multimodal import MultimodalDataset
from pretext3d.eval.metrics import retrieval_scores
from pretext3d.eval.modalities import embed_store, load_run_encoders, pool_views, view_subset
from pretext3d.eval.pretext_metrics import balanced_pairs, best_threshold, pair_distances

ROOT = Path(__file__).resolve().parents[1]
TINY = ["steps=2", "batch_size=4", "num_workers=0", "model.backbone=pointnet", "model.backbone_config={emb_dims: 32}",
        "data_options.points=128", "data_options.image_size=32", "data_options.builtin={train: 2, test: 2}",
        "data_options.builtin_store={views: 3, image_size: 32, faces: 64}"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny MIMS run (images, points, meshes; a shared space) on the built-in shapes, and a tiny
    CMCV run (a pair classifier, no shared space) on the same store."""
    root = tmp_path_factory.mktemp("modal")
    mims, cmcv = root / "mims", root / "cmcv"
    assert main(["pretrain", "--recipe", str(ROOT / "configs" / "mims_cpu.yaml"), "--out", str(mims), *TINY,
                 "model.hidden_dim=16", "model.projection_dim=8", "model.mesh_config={emb_dims: 32}"]) == 0
    store = mims / "builtin-store"
    assert main(["pretrain", "--recipe", str(ROOT / "configs" / "cmcv_cpu.yaml"), "--out", str(cmcv), *TINY,
                 f"data={store}", "model.fusion_hidden=8"]) == 0
    return {"mims": mims, "cmcv": cmcv, "store": store, "cache": root / "cache", "root": root}


# --- pieces -----------------------------------------------------------------------------------


def test_view_subsets_spread_evenly_over_the_camera_order():
    assert view_subset(20, 1).tolist() == [0]
    assert view_subset(20, 12).tolist() == [0, 1, 3, 5, 6, 8, 10, 11, 13, 15, 16, 18]  # floor(i * 20 / 12)
    assert view_subset(4, 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        view_subset(4, 5)


def test_view_pooling_by_hand():
    per_view = np.array([[[1.0, 5.0], [3.0, 1.0], [2.0, 9.0]]])  # 1 object, 3 views, 2-d
    assert pool_views(per_view, np.array([0, 1]), "max").tolist() == [[3.0, 5.0]]
    assert pool_views(per_view, np.array([0, 2]), "mean").tolist() == [[1.5, 7.0]]


def test_balanced_pairs_are_half_positive_and_never_mislabelled():
    pairs = balanced_pairs(7, 5, 1000, np.random.default_rng(3))
    assert pairs.same.sum() == 500
    assert np.array_equal(pairs.same, pairs.first == pairs.second)  # negatives are always other objects
    assert (pairs.first_view != pairs.second_view).all()
    assert set(pairs.second[~pairs.same]) == set(range(7))  # any other object can be the negative
    again = balanced_pairs(7, 5, 1000, np.random.default_rng(3))
    assert np.array_equal(pairs.second, again.second) and np.array_equal(pairs.second_view, again.second_view)


def test_best_threshold_and_pair_distances_by_hand():
    assert best_threshold(np.array([0.1, 0.2, 0.5, 0.6]), np.array([True, True, False, False])) == pytest.approx(0.35)
    # one positive pair far away: still the best is to cut between 0.2 and 0.5 (3 of 4 right)
    # one positive pair far away: cutting at 0.35 or at 0.9 both get 3 of 4 right; the smaller is kept
    assert best_threshold(np.array([0.1, 0.2, 0.5, 0.9]), np.array([True, True, False, True])) == pytest.approx(0.35)
    # equal distances are never split; all negative: below every distance
    assert best_threshold(np.array([0.3, 0.3, 0.3, 0.7]), np.array([True, True, False, False])) == pytest.approx(0.5)
    assert best_threshold(np.array([0.3, 0.4]), np.array([False, False])) == pytest.approx(-0.7)
    a = np.array([[2.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 5.0], [3.0, 3.0]])
    assert pair_distances(a, b) == pytest.approx([np.sqrt(2.0), 0.0])  # scale-free
    assert pair_distances(a, b, normalize=False) == pytest.approx([np.sqrt(29.0), np.sqrt(8.0)])  # raw (Jing Table 2)


# --- embeddings -------------------------------------------------------------------------------


def test_store_embeddings_match_a_direct_pass_and_come_back_from_the_cache(runs):
    encoders, _ = load_run_encoders(runs["mims"], "shared")
    first = embed_store(encoders, runs["store"], "test", image_size=32, num_points=128, cache_dir=runs["cache"], progress=False)
    assert set(first.features) == {"points", "image", "mesh"} and not any(first.cached.values())
    assert first.features["image"].shape[:2] == (len(first.labels), 3)  # every stored view
    # view 2 of object 1, embedded alone through the encoder and the shared head
    item = MultimodalDataset(runs["store"], "test", 128, views_per_sample=3, image_size=32, point_augment=None,
                             image_augment=None, modalities=("images",))[1]
    with torch.no_grad():
        direct = encoders.heads["image"](encoders.modules["image"](item["images"][2:3]).global_)[0].numpy()
    np.testing.assert_allclose(first.features["image"][1, 2], direct, rtol=1e-4, atol=1e-5)
    again = embed_store(encoders, runs["store"], "test", image_size=32, num_points=128, cache_dir=runs["cache"], progress=False)
    assert all(again.cached.values())
    for m in first.features:
        np.testing.assert_array_equal(first.features[m], again.features[m])
    # a setting that changes the features misses the cache: image size (images only), points (points only), space
    resized = embed_store(encoders, runs["store"], "test", image_size=24, num_points=128, cache_dir=runs["cache"], progress=False)
    assert resized.cached == {"points": True, "image": False, "mesh": True}
    fewer = embed_store(encoders, runs["store"], "test", ("points",), num_points=64, image_size=32, cache_dir=runs["cache"],
                        progress=False)
    assert fewer.cached == {"points": False}
    encoder_space, _ = load_run_encoders(runs["mims"], "encoder")
    plain = embed_store(encoder_space, runs["store"], "test", ("mesh",), image_size=32, cache_dir=runs["cache"], progress=False)
    assert plain.cached == {"mesh": False} and plain.features["mesh"].shape[1] == 32  # MeshNet's width, no head


def test_cmcv_has_no_shared_space(runs):
    with pytest.raises(ValueError, match="no space shared"):
        load_run_encoders(runs["cmcv"], "shared")


# --- protocols through the CLI ----------------------------------------------------------------


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_retrieval_across_modalities(runs, capsys):
    out = runs["root"] / "retrieval.json"
    assert main(["evaluate", "retrieval", "--data", str(runs["store"]), "--checkpoint", str(runs["mims"]), "--modalities",
                 "points", "image", "mesh", "--points", "128", "--views", "2", "--cache-dir", str(runs["cache"]),
                 "--quiet", "--json", str(out)]) == 0
    assert "image->mesh" in capsys.readouterr().out
    report = _json(out)
    assert set(report["results"]) == {f"{q}->{g}" for q in ("points", "image", "mesh") for g in ("points", "image", "mesh")}
    assert report["views"]["indices"] == [0, 1] and report["views"]["pool"] == "max" and report["image_size"] == 32
    # recompute one cross-modal pair from the embeddings: the gallery holds every test object
    encoders, _ = load_run_encoders(runs["mims"], "shared")
    emb = embed_store(encoders, runs["store"], "test", image_size=32, num_points=128, cache_dir=runs["cache"], progress=False)
    image = emb.features["image"][:, :2].max(axis=1)
    expected = retrieval_scores(image, emb.labels, emb.features["mesh"], emb.labels, "cosine", (1, 5, 10))
    assert report["results"]["image->mesh"]["mAP"] == pytest.approx(expected.mAP)
    assert report["results"]["image->mesh"]["top_k"]["5"] == pytest.approx(expected.top_k[5])
    assert "instance" in report["results"]["image->mesh"] and "instance" not in report["results"]["mesh->mesh"]
    assert report["results"]["mesh->mesh"]["queries"] == len(emb.labels)


def test_encoder_space_retrieval_is_within_modal_only(runs):
    out = runs["root"] / "retrieval_enc.json"
    assert main(["evaluate", "retrieval", "--data", str(runs["store"]), "--checkpoint", str(runs["cmcv"]), "--modalities",
                 "points", "image", "--space", "encoder", "--points", "128", "--cache-dir", str(runs["cache"]), "--quiet",
                 "--json", str(out)]) == 0
    assert set(_json(out)["results"]) == {"points->points", "image->image"}


def test_multiview_svm_for_a_run_and_a_random_image_encoder(runs, capsys):
    out = runs["root"] / "multiview.json"
    assert main(["evaluate", "multiview", "--data", str(runs["store"]), "--checkpoint", str(runs["mims"]), "--views", "1",
                 "2", "36", "--C", "1", "--cache-dir", str(runs["cache"]), "--quiet", "--json", str(out)]) == 0
    report = _json(out)
    assert [r["views"] for r in report["results"]] == [1, 2, 3]  # 36 > the store's 3 views: skipped; 3 added
    assert report["view_counts_skipped"] == [36] and report["results"][1]["view_indices"] == [0, 1]
    assert all(0 <= r["accuracy"] <= 1 for r in report["results"]) and report["bn_calibration"] is None
    assert main(["evaluate", "multiview", "--data", str(runs["store"]), "--random-init", "--backbone", "resnet18",
                 "--image-size", "32", "--views", "3", "--C", "1", "--no-cache", "--quiet", "--json", str(out)]) == 0
    report = _json(out)
    assert "random init" in report["weights"] and f"over {report['train_size']} seeded" in report["bn_calibration"]
    assert capsys.readouterr().out.count("view(s)") >= 2


def test_pretext_metrics_use_each_method_s_own_judge(runs):
    out = runs["root"] / "pretext.json"
    assert main(["evaluate", "pretext", "--data", str(runs["store"]), "--checkpoint", str(runs["cmcv"]), "--points", "128",
                 "--cache-dir", str(runs["cache"]), "--quiet", "--json", str(out)]) == 0
    report = _json(out)
    test_size = report["test_size"]
    assert report["pairs"]["count"] == 10 * test_size and report["pairs"]["positive"] == 5 * test_size
    assert set(report["results"]) == {"cross_view", "cross_modal_classifier"}  # CMCV: F_f, no shared space
    view = report["results"]["cross_view"]
    assert 0 <= view["accuracy"] <= 1 and view["positive_distance"]["std"] >= 0 and "train" in report["threshold_fit"]
    assert view["space"] == "image encoder, L2-normalised" and view["negative_distance"]["mean"] <= 2
    assert main(["evaluate", "pretext", "--data", str(runs["store"]), "--checkpoint", str(runs["cmcv"]), "--points", "128",
                 "--cache-dir", str(runs["cache"]), "--quiet", "--raw-distances", "--json", str(out)]) == 0
    raw = _json(out)["results"]["cross_view"]  # the same features (cached), not normalised: ResNet outputs are long
    assert raw["space"] == "image encoder, raw features" and raw["negative_distance"]["mean"] > 2
    assert main(["evaluate", "pretext", "--data", str(runs["store"]), "--random-init", "--like", str(runs["mims"]),
                 "--points", "128", "--no-cache", "--quiet", "--json", str(out)]) == 0
    report = _json(out)
    assert set(report["results"]) == {"cross_view", "cross_modal"} and "random init" in report["weights"]


def test_random_init_calibration_sets_batchnorm_statistics_from_training_objects(runs):
    from pretext3d.eval.modalities import calibrate_encoders

    encoders, _ = load_run_encoders(runs["mims"], "shared", random_init=True, seed=3)
    norm = encoders.modules["mesh"].embed  # MeshNet's feature head: BatchNorm after a max over faces
    before = [m.running_mean.clone() for m in norm.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    used = calibrate_encoders(encoders, runs["store"], ("mesh", "points"), 128, 32, 6, 4, 3, torch.device("cpu"),
                              progress=False)
    assert used == 6 and encoders.weights_id["bn_objects"] == 6
    after = [m.running_mean for m in norm.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert before and all(not torch.equal(a, b) for a, b in zip(before, after))
    assert all(not m.training for m in encoders.modules["mesh"].modules())  # back in eval mode


def test_store_protocols_name_what_is_wrong(runs, tmp_path, capsys):
    assert main(["evaluate", "pretext", "--data", str(tmp_path), "--checkpoint", str(runs["cmcv"]), "--quiet"]) == 2
    assert "not a prepared store" in capsys.readouterr().err
    assert main(["evaluate", "pretext", "--data", str(runs["store"]), "--random-init", "--quiet"]) == 2
    assert "--like RUN" in capsys.readouterr().err
    assert main(["evaluate", "retrieval", "--data", str(runs["store"]), "--checkpoint", str(runs["mims"] / "backbone.safetensors"),
                 "--modalities", "image", "--quiet"]) == 2
    assert "run folder" in capsys.readouterr().err


def test_the_report_lists_the_store_protocols(runs):
    """The evaluations above, placed in the run's eval folder, appear as result rows."""
    evaluations = runs["mims"] / "eval"
    evaluations.mkdir(exist_ok=True)
    common = ["--data", str(runs["store"]), "--checkpoint", str(runs["mims"]), "--cache-dir", str(runs["cache"]), "--quiet"]
    assert main(["evaluate", "retrieval", *common, "--modalities", "points", "image", "--points", "128",
                 "--json", str(evaluations / "retrieval.json")]) == 0
    assert main(["evaluate", "multiview", *common, "--views", "1", "3", "--C", "1", "--json", str(evaluations / "mv.json")]) == 0
    assert main(["evaluate", "pretext", *common, "--points", "128", "--json", str(evaluations / "pretext.json")]) == 0
    page = runs["root"] / "page.html"
    assert main(["report", str(runs["mims"]), "--out", str(page), "--data", "builtin:train=2,test=1", "--points", "128",
                 "--queries", "2", "--top-k", "3", "--cache-dir", str(runs["cache"]), "--quiet"]) == 0
    html = page.read_text()
    for row in ("image-&gt;points", "instance top-1", "3 view(s), max-pooled", "cross_modal", "distance positive"):
        assert row in html, row


def test_options_of_other_protocols_are_refused(runs, capsys):
    store, run = str(runs["store"]), str(runs["mims"])
    assert main(["evaluate", "retrieval", "--data", store, "--checkpoint", run, "--modalities", "image", "--seeds", "0", "1",
                 "--quiet"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["evaluate", "retrieval", "--data", store, "--checkpoint", str(runs["mims"] / "backbone.safetensors"),
                 "--space", "encoder", "--quiet"]) == 2
    assert "--space go with --modalities" in capsys.readouterr().err
    assert main(["evaluate", "pretext", "--data", store, "--checkpoint", run, "--bn-calibration", "8", "--quiet"]) == 2
    assert "goes with --random-init" in capsys.readouterr().err
    assert main(["evaluate", "retrieval", "--data", store, "--checkpoint", run, "--modalities", "image", "--views", "9",
                 "--quiet"]) == 2
    assert "holds 3 views per object" in capsys.readouterr().err


def test_the_shared_space_is_the_encoder_space_through_the_heads(runs):
    from pretext3d.eval.modalities import through_heads

    shared, _ = load_run_encoders(runs["mims"], "shared")
    encoder, _ = load_run_encoders(runs["mims"], "encoder")
    kwargs = dict(image_size=32, num_points=128, use_cache=False, progress=False)
    direct = embed_store(shared, runs["store"], "test", **kwargs).features
    derived = through_heads(shared, embed_store(encoder, runs["store"], "test", **kwargs).features)
    for m in direct:
        np.testing.assert_allclose(derived[m], direct[m], rtol=1e-4, atol=1e-5)


# --- linear SVM per modality and fused (MIMS's protocol) ------------------------------------------


def test_modality_combinations_singles_first():
    from pretext3d.eval.modality_svm import modality_combinations

    assert modality_combinations(("mesh", "points", "image")) == [
        ("points",), ("image",), ("mesh",), ("points", "image"), ("points", "mesh"), ("image", "mesh"),
        ("points", "image", "mesh")]


def test_linear_svm_on_each_modality_and_their_concatenation(runs, tmp_path, capsys):
    from pretext3d.eval.linear_svm import fit_linear_svm

    store, run = str(runs["store"]), str(runs["mims"])
    out = tmp_path / "svm.json"
    assert main(["evaluate", "linear-svm", "--data", store, "--checkpoint", run, "--modalities", "points", "image", "mesh",
                 "--views", "2", "--C", "1", "--points", "128", "--cache-dir", str(runs["cache"]), "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["results"]]
    assert names == ["points", "image", "mesh", "points+image", "points+mesh", "image+mesh", "points+image+mesh"]
    dims = {r["name"]: r["feature_dim"] for r in report["results"]}
    assert dims["points+image+mesh"] == dims["points"] + dims["image"] + dims["mesh"]
    assert report["views"]["count"] == 2 and report["views"]["pool"] == "mean"
    # the fused score is a linear SVM on the concatenated encoder features, the image ones averaged over the 2 views
    encoders, _ = load_run_encoders(run)
    train, test = (embed_store(encoders, store, split, ("points", "image"), 128, report["image_size"], use_cache=False,
                               progress=False)
                   for split in ("train", "test"))
    views = view_subset(train.features["image"].shape[1], 2)
    fused = [np.concatenate([e.features["points"], pool_views(e.features["image"], views, "mean")], 1) for e in (train, test)]
    expected = fit_linear_svm(fused[0], train.labels, fused[1], test.labels, C=1.0)
    assert report["results"][3]["accuracy"] == pytest.approx(expected.accuracy)
    assert "points+image+mesh" in capsys.readouterr().out
    # the floor: the same method with random weights, calibrated on training objects
    floor = tmp_path / "floor.json"
    assert main(["evaluate", "linear-svm", "--data", store, "--random-init", "--like", run, "--modalities", "mesh",
                 "--points", "128", "--bn-calibration", "8", "--C", "1", "--no-cache", "--json", str(floor), "--quiet"]) == 0
    assert json.loads(floor.read_text())["bn_calibration"].startswith("random init")
    assert main(["evaluate", "linear-svm", "--data", store, "--checkpoint", run, "--modalities", "image",
                 "--seeds", "0", "1", "--quiet"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["evaluate", "linear-svm", "--data", store, "--checkpoint", str(runs["cmcv"]), "--modalities", "mesh",
                 "--quiet"]) == 2
    assert "has no mesh encoder" in capsys.readouterr().err
