"""The evaluation suite: retrieval and segmentation metrics worked by hand, few-shot episodes
checked for leakage, few-shot and retrieval end to end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pretext3d.eval.fewshot import FewShotConfig, run_episode, run_fewshot, sample_episodes
from pretext3d.eval.metrics import (
    pairwise_distances, part_segmentation_miou, retrieval_scores, semantic_segmentation_scores, shape_part_iou,
)
from pretext3d.eval.retrieval import RetrievalConfig, run_retrieval, within_split_scores


# --- retrieval metrics ------------------------------------------------------------------------


def test_retrieval_scores_on_a_hand_built_ranking():
    gallery = np.array([[1.0], [2.0], [3.0], [4.0]])
    gallery_labels = np.array([0, 1, 0, 1])
    # query 0 at 0 (class 0): ranking g0 (rel) g1 g2 (rel) g3 -> AP = (1/1 + 2/3) / 2
    # query 1 at 2.6 (class 1): distances 1.6 0.6 0.4 1.4 -> ranking g2 g1 (rel) g3 (rel) g0 -> AP = (1/2 + 2/3) / 2
    query = np.array([[0.0], [2.6]])
    scores = retrieval_scores(query, np.array([0, 1]), gallery, gallery_labels, "euclidean", ks=(1, 2, 4))
    np.testing.assert_allclose(scores.per_query_ap, [(1 + 2 / 3) / 2, (1 / 2 + 2 / 3) / 2])
    assert scores.mAP == pytest.approx(((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    assert scores.top_k == {1: 0.5, 2: 1.0, 4: 1.0}
    assert scores.precision_at_k[1] == 0.5 and scores.precision_at_k[2] == 0.5 and scores.precision_at_k[4] == 0.5
    assert scores.queries == 2 and scores.no_relevant == 0


def test_the_query_is_excluded_from_its_own_ranking():
    features = np.array([[0.0], [3.0], [1.0]])
    labels = np.array([0, 0, 1])
    scores = within_split_scores(features, labels, "euclidean", ks=(1,))
    # item 0: others ranked [1.0] (class 1) then [3.0] (class 0) -> AP 1/2, top-1 miss;
    # item 1: [1.0] then [0.0] -> relevant at rank 2 -> AP 1/2; item 2: no other of class 1
    np.testing.assert_allclose(scores.per_query_ap[:2], [0.5, 0.5])
    assert np.isnan(scores.per_query_ap[2]) and scores.no_relevant == 1 and scores.queries == 2
    assert scores.top_k[1] == 0.0 and scores.mAP == pytest.approx(0.5)
    # without the exclusion every item would find itself first
    naive = retrieval_scores(features, labels, features, labels, "euclidean", ks=(1,))
    assert naive.top_k[1] == 1.0


def test_a_query_without_relevant_items_is_left_out_of_every_metric_alike():
    # query 0 (class 0) finds g0 first; query 1 (class 2) has no class-2 item in the gallery
    gallery, gallery_labels = np.array([[0.0], [5.0]]), np.array([0, 1])
    scores = retrieval_scores(np.array([[0.1], [4.9]]), np.array([0, 2]), gallery, gallery_labels, "euclidean", ks=(1, 2))
    assert scores.queries == 1 and scores.no_relevant == 1
    assert scores.top_k == {1: 1.0, 2: 1.0} and scores.mAP == 1.0  # not 0.5 in top-k and 1.0 in mAP
    assert scores.precision_at_k == {1: 1.0, 2: 0.5}
    none = retrieval_scores(np.array([[4.9]]), np.array([2]), gallery, gallery_labels, "euclidean", ks=(1,))
    assert none.queries == 0 and np.isnan(none.top_k[1]) and np.isnan(none.mAP)


def test_ties_rank_the_lower_gallery_index_first_and_cosine_distance():
    gallery = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # first two at cosine distance 0
    scores = retrieval_scores(np.array([[3.0, 0.0]]), np.array([1]), gallery, np.array([0, 1, 1]), "cosine", ks=(1, 2))
    assert scores.top_k[1] == 0.0 and scores.top_k[2] == 1.0
    assert scores.per_query_ap[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    np.testing.assert_allclose(pairwise_distances(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0], [1.0, 1.0]])),
                               [[1.0, 1 - 1 / np.sqrt(2)]])


# --- segmentation metrics ---------------------------------------------------------------------


def test_part_iou_counts_a_part_absent_from_both_as_one():
    assert shape_part_iou(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]), [0, 1, 2]) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)


def test_part_segmentation_class_and_instance_miou():
    parts = {0: [0, 1, 2], 1: [3, 4]}
    preds = [np.array([0, 1, 1, 1]), np.array([3, 3, 4, 4]), np.array([2, 2, 2, 2])]
    truths = [np.array([0, 0, 1, 1]), np.array([3, 3, 4, 4]), np.array([2, 2, 2, 2])]
    scores = part_segmentation_miou(preds, truths, [0, 1, 0], parts)
    first = (1 / 2 + 2 / 3 + 1) / 3
    assert scores["instance_miou"] == pytest.approx((first + 1 + 1) / 3)
    assert scores["per_category"] == pytest.approx({0: (first + 1) / 2, 1: 1.0})
    assert scores["class_miou"] == pytest.approx(((first + 1) / 2 + 1) / 2)


def test_semantic_segmentation_scores_by_hand():
    scores = semantic_segmentation_scores(np.array([0, 1, 1, 1, 0]), np.array([0, 0, 1, 1, 2]), 4)
    # class 0: TP 1, FP 1, FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 0, FN 1 -> 0; class 3 absent
    assert scores["per_class_iou"] == pytest.approx([1 / 3, 2 / 3, 0.0, None])
    assert scores["miou"] == pytest.approx(1 / 3)
    assert scores["overall_accuracy"] == pytest.approx(3 / 5)
    assert scores["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    # rooms scored one by one: their confusion matrices add up to the split's scores
    from pretext3d.eval.metrics import confusion_matrix, scores_from_confusion

    parts = confusion_matrix(np.array([0, 1]), np.array([0, 0]), 4) + confusion_matrix(np.array([1, 1, 0]), np.array([1, 1, 2]), 4)
    assert scores_from_confusion(parts) == scores


# --- few-shot ---------------------------------------------------------------------------------


def test_fewshot_episodes_never_leak_and_are_reproducible():
    from pretext3d.data.builtin import builtin_splits

    splits = builtin_splits(num_points=16, seed=0, train=12, test=6)
    train, test = splits["train"], splits["test"]
    episodes = sample_episodes(train.labels, test.labels, ways=5, shots=10, queries=5, runs=10, seed=3)
    train_names, test_names = set(train.names), set(test.names)
    assert not train_names & test_names
    for ep in episodes:
        assert len(set(ep.classes.tolist())) == 5
        assert len(set(ep.support.tolist())) == 50 and len(set(ep.query.tolist())) == 25
        support_names = {train.names[i] for i in ep.support}
        query_names = {test.names[i] for i in ep.query}
        assert support_names <= train_names and query_names <= test_names and not support_names & query_names
        np.testing.assert_array_equal(train.labels[ep.support], np.repeat(ep.classes, 10))
        np.testing.assert_array_equal(test.labels[ep.query], np.repeat(ep.classes, 5))
    again = sample_episodes(train.labels, test.labels, 5, 10, 5, 3, seed=3)  # run r does not depend on runs
    for a, b in zip(episodes, again):
        np.testing.assert_array_equal(a.support, b.support)
        np.testing.assert_array_equal(a.query, b.query)
    assert len({tuple(ep.classes) for ep in episodes}) > 1
    other = sample_episodes(train.labels, test.labels, 5, 10, 5, 1, seed=4)[0]
    assert not np.array_equal(other.support, episodes[0].support)


def test_fewshot_refuses_classes_too_small_for_the_setting():
    labels = np.repeat(np.arange(3), 4)
    with pytest.raises(ValueError, match="needs 5 classes"):
        sample_episodes(labels, labels, ways=5, shots=2, queries=2, runs=1, seed=0)
    with pytest.raises(ValueError, match="this data has 0"):
        sample_episodes(labels, labels, ways=2, shots=5, queries=2, runs=1, seed=0)


def test_fewshot_episode_on_separable_features_is_perfect():
    rng = np.random.default_rng(0)
    train_y, test_y = np.repeat(np.arange(6), 12), np.repeat(np.arange(6), 8)
    train_x = np.eye(6)[train_y] * 5 + 0.1 * rng.standard_normal((72, 6))
    test_x = np.eye(6)[test_y] * 5 + 0.1 * rng.standard_normal((48, 6))
    for ep in sample_episodes(train_y, test_y, 5, 10, 8, 4, seed=0):
        assert run_episode(ep, train_x, train_y, test_x, test_y, None, (0.01, 0.1, 1.0), 3, 0)["accuracy"] == 1.0


def test_fewshot_queries_from_train_are_disjoint_from_the_support():
    """CrossPoint's released script: queries are other train objects of the episode's classes."""
    train_y, test_y = np.repeat(np.arange(6), 12), np.repeat(np.arange(6), 3)
    for ep in sample_episodes(train_y, test_y, 5, 5, 7, 6, seed=1, query_split="train"):
        assert ep.query_split == "train" and not set(ep.support.tolist()) & set(ep.query.tolist())
        np.testing.assert_array_equal(train_y[ep.query], np.repeat(ep.classes, 7))
    with pytest.raises(ValueError, match="at least 13 train objects"):  # 5 + 8 > 12
        sample_episodes(train_y, test_y, 5, 5, 8, 1, seed=1, query_split="train")
    with pytest.raises(ValueError, match="query_split must be one of"):
        sample_episodes(train_y, test_y, 5, 5, 2, 1, seed=1, query_split="val")
    # worked case for standardisation with the support's statistics: one feature is a huge constant
    # offset plus the class signal at a tiny scale; raw, a small-C SVM cannot separate, scaled it can
    rng = np.random.default_rng(0)
    signal = 1e-3 * np.repeat(np.arange(6), 12) + 1e-5 * rng.standard_normal(72)
    x = np.stack([1e3 + signal, 1e3 - 2 * signal], 1)
    ep = sample_episodes(train_y, test_y, 5, 5, 7, 1, seed=2, query_split="train")[0]
    raw = run_episode(ep, x, train_y, x[:18], test_y, 0.01, (), 2, 0)["accuracy"]
    scaled = run_episode(ep, x, train_y, x[:18], test_y, 1.0, (), 2, 0, standardize=True)["accuracy"]
    assert scaled == 1.0 and raw < 0.5


def test_presets_set_the_published_settings_and_refuse_contradictions():
    from pretext3d.eval.presets import PRESETS, apply_preset, preset_record
    from pretext3d.eval.protocols import LinearSVMConfig

    base = LinearSVMConfig(data="x.npz", checkpoint="run")
    cfg = apply_preset(base, "linear-svm", "crosspoint")
    assert (cfg.C, cfg.num_points, cfg.subsample, cfg.svm, cfg.standardize, cfg.preset) == (0.1, 1024, "first", "svc",
                                                                                              False, "crosspoint")
    assert apply_preset(base, "linear-svm", None) is base
    with pytest.raises(ValueError, match=r"--preset crosspoint sets C=1.0 \(the preset: 0.1\)"):
        apply_preset(LinearSVMConfig(data="x.npz", checkpoint="run", C=1.0), "linear-svm", "crosspoint")
    assert apply_preset(LinearSVMConfig(data="x.npz", checkpoint="run", C=0.1), "linear-svm", "crosspoint").C == 0.1
    with pytest.raises(ValueError, match="unknown preset 'nope' for linear-svm; known: crosspoint, crosspoint-scanobjectnn"):
        apply_preset(base, "linear-svm", "nope")
    few = apply_preset(FewShotConfig(data="x.npz", checkpoint="run"), "fewshot", "crosspoint")
    assert (few.query_split, few.standardize, few.C, few.runs, few.num_points) == ("train", True, 1.0, 50, 2048)
    record = preset_record("fewshot", "crosspoint")
    assert record["not_reproduced"][0].startswith("nothing is selected on the test split")
    from pretext3d.eval.finetune import FinetuneConfig
    from pretext3d.eval.semseg import SemsegConfig

    configs = {"linear-svm": LinearSVMConfig, "fewshot": FewShotConfig, "partseg": FinetuneConfig, "semseg": SemsegConfig}
    for (protocol, name), preset in PRESETS.items():  # every preset names fields its protocol's config has
        config = configs[protocol]
        assert set(preset.settings) <= set(config.__dataclass_fields__), (protocol, name)


def test_fewshot_and_retrieval_end_to_end_on_builtin(tmp_path):
    common = dict(data="builtin:seed=0,train=12,test=6", backbone="pointnet", random_init=True, num_points=128,
                  random_config={"emb_dims": 32}, bn_calibration_clouds=64, batch_size=16,
                  cache_dir=str(tmp_path / "cache"), progress=False)
    report = run_fewshot(FewShotConfig(**common, queries=5, runs=3, settings=[(5, 5), (10, 5)]), log=lambda m: None)
    assert set(report["results"]) == {"5-way 5-shot", "10-way 5-shot"}
    for name, res in report["results"].items():
        assert res["episodes"] == 3 and 0.0 <= res["accuracy"] <= 1.0
        assert res["accuracy"] > 1 / int(name.split("-")[0])  # well above chance even at random init
    assert report["support_split"] == "train" and report["query_split"] == "test" and report["feature_dim"] == 64
    retrieval = run_retrieval(RetrievalConfig(**common, ks=(1, 5)), log=lambda m: None)
    assert retrieval["per_seed"][0]["queries"] == 14 * 6
    assert 1 / 14 < retrieval["results"]["mAP"]["mean"] <= 1.0
    assert retrieval["results"]["top_1"]["mean"] <= retrieval["results"]["top_5"]["mean"]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # retrieval reused the few-shot run's features


def test_evaluate_fewshot_and_retrieval_cli_write_their_settings(tmp_path, capsys):
    import json

    from pretext3d.cli import main

    common = ["--data", "builtin:seed=0,train=12,test=6", "--random-init", "--backbone", "pointnet", "--points", "64",
              "--emb-dims", "16", "--bn-calibration", "32", "--batch-size", "16", "--cache-dir", str(tmp_path / "c"), "--quiet"]
    assert main(["evaluate", "fewshot", *common, "--settings", "5x5", "--queries", "4", "--runs", "2",
                 "--json", str(tmp_path / "fs.json")]) == 0
    out = capsys.readouterr().out
    assert "5-way 5-shot" in out and "support from train, 4 queries per class from test" in out
    fs = json.loads((tmp_path / "fs.json").read_text())
    assert fs["protocol"] == "fewshot" and fs["results"]["5-way 5-shot"]["episodes"] == 2
    assert fs["config"]["queries"] == 4 and fs["C_selection"].startswith("per episode")
    assert main(["evaluate", "retrieval", *common, "--metric", "euclidean", "--top-k", "1", "3",
                 "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["protocol"] == "retrieval" and set(r["results"]) == {"mAP", "top_1", "top_3", "precision_at_1", "precision_at_3"}
    assert "excluded" in r["gallery"] and r["config"]["metric"] == "euclidean"
    assert main(["evaluate", "fewshot", *common, "--settings", "5x5", "--queries", "4", "--runs", "2",
                 "--preset", "crosspoint"]) == 2
    assert "--preset crosspoint sets queries=4 (the preset: 20), runs=2 (the preset: 50), num_points=64" in \
        capsys.readouterr().err
    at_1024 = [a for a in common if a not in ("--points", "64")]  # the preset's 1024 points
    assert main(["evaluate", "linear-svm", *at_1024, "--preset", "crosspoint", "--json", str(tmp_path / "svm.json")]) == 0
    out = capsys.readouterr().out
    assert "preset          crosspoint" in out and "not reproduced: nothing is selected on the test split" in out
    svm = json.loads((tmp_path / "svm.json").read_text())
    assert svm["C"] == 0.1 and svm["C_selection"] == "given" and svm["preset"]["settings"]["C"] == 0.1
    assert svm["config"]["preset"] == "crosspoint"
    assert main(["evaluate", "linear-svm", *at_1024, "--preset", "crosspoint", "--C", "1"]) == 2
    assert "--preset crosspoint sets C=1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "fewshot", *common, "--settings", "5by5"])
    assert "expected WAYSxSHOTS" in capsys.readouterr().err


# --- fine-tuning ------------------------------------------------------------------------------


def test_finetune_schedules_by_hand():
    """cosine to --min-lr, or x gamma every step_epochs epochs (in steps: 100 items, batch 10 ->
    10 steps per epoch)."""
    from pretext3d.engine.trainer import learning_rate
    from pretext3d.eval.finetune import FinetuneConfig, finetune_schedule

    base = dict(task="partseg", data="x", checkpoint="run", epochs=50, batch_size=10, lr=0.1)
    step = finetune_schedule(FinetuneConfig(**base, schedule="step", step_epochs=20, gamma=0.1), 100)
    rates = [learning_rate(s, step.optimizer, step.schedule, step.steps) for s in (0, 199, 200, 399, 400)]
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    cosine = finetune_schedule(FinetuneConfig(**base, optimizer="sgd", momentum=0.5, min_lr=1e-3), 100)
    assert cosine.optimizer.momentum == 0.5 and cosine.schedule.min_lr_ratio == pytest.approx(0.01)
    assert learning_rate(cosine.steps, cosine.optimizer, cosine.schedule, cosine.steps) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="min_lr must lie in"):
        finetune_schedule(FinetuneConfig(**base, min_lr=0.5), 100)


def test_the_stages_head_reads_every_edgeconv_block():
    """Jing et al.'s head: [EdgeConv outputs (8 + 8 + 16 + 16) ; global (2 x 32)] -> 4 layers."""
    import torch

    from pretext3d.eval.finetune import PartSegmenter
    from pretext3d.models import build_backbone

    config = {"k": 4, "emb_dims": 32, "widths": [8, 8, 16, 16]}
    backbone = build_backbone("dgcnn", **config)
    model = PartSegmenter(backbone, "dgcnn", config, 6, {0: [0, 1, 2], 1: [3, 4, 5]}, head="stages").eval()
    layers = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 4 and layers[0].in_features == 48 + 64 and layers[-1].out_features == 6
    batch = {"points": torch.rand(2, 40, 3), "label": torch.tensor([0, 1])}
    with torch.no_grad():
        out = backbone(batch["points"])
        assert out.stages.shape == (2, 40, 48)
        logits = model.logits(batch)
    assert logits.shape == (2, 40, 6) and torch.isinf(logits[0, :, 3:]).all() and torch.isfinite(logits[0, :, :3]).all()
    with pytest.raises(ValueError, match="needs a dgcnn backbone, not pointnet"):
        PartSegmenter(build_backbone("pointnet", emb_dims=16), "pointnet", {}, 6, {0: [0]}, head="stages")


def test_partseg_presets_and_the_crosspoint_training_set(tmp_path):

    from pretext3d.eval.finetune import FinetuneConfig, run_finetune
    from pretext3d.eval.presets import apply_preset

    common = dict(task="partseg", data="builtin:seed=0,train=5,test=2", backbone="pointnet", random_init=True,
                  random_config={"emb_dims": 16}, num_points=2048, force=True)
    cfg = apply_preset(FinetuneConfig(**common), "partseg", "crosspoint")
    assert (cfg.train_splits, cfg.selection, cfg.optimizer, cfg.lr, cfg.min_lr, cfg.epochs, cfg.batch_size,
            cfg.augment) == ("train+val", "last", "sgd", 0.1, 1e-3, 300.0, 8, False)
    jing = apply_preset(FinetuneConfig(**common), "partseg", "jing")
    assert (jing.optimizer, jing.lr, jing.schedule, jing.step_epochs, jing.head) == ("adam", 0.003, "step", 20.0, "stages")
    with pytest.raises(ValueError, match="leaves no validation split to select on"):
        run_finetune(FinetuneConfig(**common, train_splits="train+val"), log=lambda m: None)
    small = dataclasses.replace(cfg, epochs=1, num_points=64, batch_size=8, lr=0.01, min_lr=1e-4, fractions=[1.0])
    report = run_finetune(small, log=lambda m: None)
    run = report["runs"][0]
    assert run["labelled"] == 56 + 14 and run["selected"]["rule"] == "the final weights"  # train + val objects
    assert report["augmentation"] == "none" and report["schedule"].startswith("sgd lr 0.01 momentum 0.9")
    assert report["preset"]["name"] == "crosspoint" and "final weights" in report["validation"]


def test_holdout_and_label_fractions_are_stratified_disjoint_and_nested():
    from pretext3d.data.splits import carve_validation
    from pretext3d.eval.finetune import label_fraction

    labels = np.repeat([0, 1, 2], [10, 20, 1])
    kept, held = carve_validation(labels, 0.1, seed=0)
    assert not set(kept) & set(held) and len(kept) + len(held) == 31
    assert np.bincount(labels[held], minlength=3).tolist() == [1, 2, 0]  # a lone object is never held out
    small = label_fraction(kept, labels, 0.2, seed=0)
    large = label_fraction(kept, labels, 0.5, seed=0)
    assert set(small) <= set(large) <= set(kept)
    assert np.bincount(labels[small], minlength=3).tolist() == [2, 4, 1]  # ceil(0.2 n), at least one
    assert np.bincount(labels[large], minlength=3).tolist() == [5, 9, 1]
    np.testing.assert_array_equal(label_fraction(kept, labels, 1.0, seed=0), kept)
    with pytest.raises(ValueError, match="label fraction"):
        label_fraction(kept, labels, 0.0, seed=0)


def test_finetune_frozen_keeps_the_backbone_and_selects_on_validation(tmp_path):
    import json

    import torch
    from safetensors.torch import load_file

    from pretext3d.models.checkpoint import save_backbone
    from pretext3d.eval.finetune import FinetuneConfig, run_finetune
    from pretext3d.models import PointNet

    torch.manual_seed(0)
    backbone = PointNet(emb_dims=32).eval()
    ckpt = save_backbone(tmp_path / "pn.safetensors", backbone, "pointnet", {"emb_dims": 32})
    cfg = FinetuneConfig(task="classification", data="builtin:seed=0,train=10,test=3", checkpoint=str(ckpt),
                         modes=["frozen", "unfrozen"], epochs=3, batch_size=16, num_points=128, validations=4,
                         out=str(tmp_path / "ft"))
    # 3 epochs of 126 objects in batches of 16 are 24 steps: refused before anything trains ...
    with pytest.raises(ValueError, match=r"100% of the labels: 24 steps \(126 items\); fewer than 100 steps"):
        run_finetune(cfg, log=lambda m: None)
    assert not (tmp_path / "ft").exists()
    # ... run with force, with a warning, and flagged in the report
    lines: list[str] = []
    report = run_finetune(dataclasses.replace(cfg, force=True), log=lines.append)
    assert lines[0].startswith("warning: 100% of the labels: 24 steps")
    assert all(run["steps"] == 24 and run["too_few_steps"] for run in report["runs"])
    original = load_file(str(ckpt))
    frozen = load_file(str(tmp_path / "ft" / "classification_frozen_1" / "backbone.safetensors"))
    unfrozen = load_file(str(tmp_path / "ft" / "classification_unfrozen_1" / "backbone.safetensors"))
    for key, value in original.items():  # weights and BatchNorm statistics
        torch.testing.assert_close(frozen[key], value, rtol=0, atol=0)
    assert any(not torch.equal(unfrozen[k], v) for k, v in original.items() if k.endswith("weight"))
    for run in report["runs"]:
        folder = tmp_path / "ft" / f"classification_{run['mode']}_1"
        val = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if "val_accuracy" in line]
        assert len(val) == 4 and val[-1]["step"] == run["steps"]
        best = max(val, key=lambda r: (r["val_accuracy"], -r["step"]))  # the first best is kept
        assert run["selected"]["step"] == best["step"] and run["selected"]["accuracy"] == best["val_accuracy"]
        assert 0 <= run["test"]["accuracy"] <= 1 and run["labelled"] == 14 * 9
    assert report["val_size"] == 14 and report["test_size"] == 42


@pytest.mark.parametrize("backbone,config", [("pointnet-pointwise", {"encoder_widths": [16, 32], "decoder_widths": [32],
                                                                     "skip_layer": 0}),
                                             ("pointnet", {"emb_dims": 32})])
def test_partseg_predicts_only_the_parts_of_the_shape_category(tmp_path, backbone, config):
    import torch

    from pretext3d.data.shapenetpart import open_partseg
    from pretext3d.eval.features import collate_clouds
    from pretext3d.eval.finetune import FinetuneConfig, PartSegmenter, run_finetune
    from pretext3d.models import build_backbone

    splits = open_partseg("builtin:seed=0,train=5,test=2", num_points=64)
    parts = splits["train"].category_parts
    model = PartSegmenter(build_backbone(backbone, **config), backbone, config, splits["train"].num_parts, parts,
                          freeze=True).eval()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(not name.startswith("backbone.") or name.startswith("backbone.classifier") for name in trainable)
    batch = collate_clouds([splits["test"][i] for i in range(len(splits["test"]))])
    with torch.no_grad():
        pred = model.logits(batch).argmax(-1)
    for category, row in zip(batch["label"].tolist(), pred):
        assert set(row.tolist()) <= set(parts[category])
    report = run_finetune(FinetuneConfig(task="partseg", data="builtin:seed=0,train=5,test=2", backbone=backbone,
                                         random_init=True, random_config=config, fractions=[0.5, 1.0], epochs=2,
                                         batch_size=8, num_points=64, validations=2, force=True), log=lambda m: None)
    assert report["protocol"] == "partseg" and report["val_size"] == 14 and report["test_size"] == 28
    assert [r["labelled"] for r in report["runs"]] == [28, 56]  # ceil(0.5 x 4) and 4 per class
    for run in report["runs"]:
        assert 0 < run["test"]["instance_miou"] <= 1 and set(run["test"]["per_category"]) == set(range(14))
