"""Every paper recipe runs one step at its full size on the CPU: its real backbone, points and
image size, with a batch of 2 on a few built-in objects, so that no shipped recipe can rot."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pretext3d.config import load_recipe
from pretext3d.fidelity import load_table
from pretext3d.models import resnet18
from pretext3d.pretraining import pretrain
from pretext3d.shipped import fidelity_tables

PAPER_RECIPES = sorted(name for method in fidelity_tables() for name in load_table(method)["paper_recipes"])
ONE_STEP = ["steps=1", "batch_size=2", "num_workers=0", "log_every=1", "device=cpu", "checkpoint_every=1000",
            "data_options.builtin={train: 1, test: 1, seed: 0}"]


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    """A torchvision-layout ResNet-18 weights file (random values: the layout is what is read)."""
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(resnet18(num_classes=1000).state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_each_paper_recipe_takes_one_full_size_step(name, tmp_path, resnet18_weights):
    extra = [f"model.image_weights={resnet18_weights}"] if load_recipe(name)["method"] == "picpoint" else []
    summary = pretrain(name, tmp_path / "run", [*ONE_STEP, *extra], log=lambda line: None)
    assert summary["steps"] == 1 and math.isfinite(summary["final"]["loss"])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["steps"] == 1 and config["train"]["batch_size"] == 2
    shipped = load_recipe(name)
    assert config["paper_setting"] is True
    assert {k: v for k, v in config["recipe"]["model"].items() if k != "image_weights"} == \
        {k: v for k, v in shipped["model"].items() if k != "image_weights"}  # the real networks, not a reduction
    assert config["recipe"]["data_options"]["points"] == shipped["data_options"]["points"]
    assert config["recipe"]["data_options"]["image_size"] == shipped["data_options"]["image_size"]
    assert (tmp_path / "run" / "backbone.safetensors").is_file()


def test_picpoint_paper_recipe_needs_its_frozen_image_encoder(tmp_path):
    from pretext3d.config import RecipeError, apply_overrides

    for name in ("picpoint_dgcnn", "picpoint_pointnext"):
        with pytest.raises(RecipeError, match="give model.image_weights=PATH .* paper_setting=false"):
            pretrain(name, tmp_path / name, ONE_STEP, log=lambda line: None)
        assert not (tmp_path / name / "recipe.json").exists()  # refused before any work
    variant = apply_overrides(load_recipe("picpoint_dgcnn"), ["paper_setting=false"])
    assert variant["paper_setting"] is False and variant["model"].get("image_weights") is None


def test_evaluations_of_a_variant_say_it_is_not_the_paper_setting(tmp_path):
    from pretext3d.cli import main

    run = tmp_path / "variant"
    pretrain("picpoint_dgcnn", run, [*ONE_STEP, "paper_setting=false", "model.backbone_config={k: 8, emb_dims: 64}",
                                     "data_options.points=256", "data_options.image_size=64",
                                     "data_options.builtin_store={views: 2, image_size: 64, faces: 64}"],
             log=lambda line: None)
    assert json.loads((run / "config.json").read_text())["paper_setting"] is False
    out = tmp_path / "svm.json"
    assert main(["evaluate", "linear-svm", "--data", "builtin:seed=0,train=2,test=1", "--checkpoint", str(run),
                 "--points", "256", "--C", "1", "--no-cache", "--quiet", "--json", str(out)]) == 0
    weights_run = json.loads(out.read_text())["config"]["weights_run"]
    assert weights_run["run"] == str(run) and weights_run["paper_setting"] is False and weights_run["method"] == "picpoint"


def test_the_gpu_benchmark_summary_by_hand(tmp_path):
    """benchmarks/paper_recipes_gpu.py: the rate leaves out the first logged interval, the
    projection is the full run's steps over that rate (worked by hand)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "paper_recipes_gpu", Path(__file__).resolve().parents[1] / "benchmarks" / "paper_recipes_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert set(bench.PAPER_RECIPES) == set(PAPER_RECIPES)  # every paper recipe is benchmarked
    lines = [{"step": 10, "loss": 1.0, "seconds": 9.0, "data_wait": 0.5, "peak_memory_mib": 100.0},
             {"step": 50, "loss": 0.5, "seconds": 29.0, "data_wait": 0.25, "peak_memory_mib": 300.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    # 40 steps in 20 s: 2 steps/s; cmcv's 120,000 steps: 60,000 s
    row = bench.summarize(tmp_path, "cmcv", {"batch_size": 32, "paper_steps": 120000, "paper_epochs": None})
    assert row["steps_per_second"] == pytest.approx(2.0) and row["samples_per_second"] == pytest.approx(64.0)
    assert row["projected_hours"] == pytest.approx(60000 / 3600) and row["data_wait"] == 0.25
    # crosspoint: 100 epochs of 43,783 objects in batches of 20 -> 100 * 2189 steps
    row = bench.summarize(tmp_path, "crosspoint_dgcnn", {"batch_size": 20, "paper_steps": None, "paper_epochs": 100})
    assert row["full_steps"] == 218_900 and row["projected_hours"] == pytest.approx(218_900 / 2 / 3600)
    assert all(name in bench.PAPER_TRAIN_OBJECTS or load_recipe(name)["steps"] for name in bench.PAPER_RECIPES)
