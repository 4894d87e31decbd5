"""Every paper recipe runs one step at its full size on the CPU: its real backbone, points and
image size, with a batch of 2 on a few built-in objects, so that no shipped recipe can rot."""

from __future__ import annotations

import json
import math

import pytest

from pretext3d.config import load_recipe
from pretext3d.fidelity import load_table
from pretext3d.pretraining import pretrain
from pretext3d.shipped import fidelity_tables

PAPER_RECIPES = sorted(name for method in fidelity_tables() for name in load_table(method)["paper_recipes"])
ONE_STEP = ["steps=1", "batch_size=2", "num_workers=0", "log_every=1", "device=cpu", "checkpoint_every=1000",
            "data_options.builtin={train: 1, test: 1, seed: 0}"]


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_each_paper_recipe_takes_one_full_size_step(name, tmp_path):
    summary = pretrain(name, tmp_path / "run", ONE_STEP, log=lambda line: None)
    assert summary["steps"] == 1 and math.isfinite(summary["final"]["loss"])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["steps"] == 1 and config["train"]["batch_size"] == 2
    shipped = load_recipe(name)
    assert config["recipe"]["model"] == shipped["model"]  # the real networks, not a reduction
    assert config["recipe"]["data_options"]["points"] == shipped["data_options"]["points"]
    assert config["recipe"]["data_options"]["image_size"] == shipped["data_options"]["image_size"]
    assert (tmp_path / "run" / "backbone.safetensors").is_file()
