"""The training engine: schedules, data order, resume bit for bit, export."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretext3d.data.builtin import builtin_splits
import pretext3d
from pretext3d.runs import CheckpointError, load_backbone
from pretext3d.engine.trainer import OptimConfig, ScheduleConfig, TrainConfig, Trainer, batch_indices, learning_rate
from pretext3d.pretext.parae import ParAE
from tests.tests_helpers import Interrupt, dies_at_call, free_port

TINY = {"encoder_widths": (16, 32), "decoder_widths": (32,)}


@pytest.fixture(scope="module")
def clouds():
    return builtin_splits(num_points=128, train=2, test=0)["train"]  # 28 clouds


def parae() -> ParAE:
    torch.manual_seed(0)
    return ParAE(partitions=8, backbone_config=TINY)


def config(**overrides) -> TrainConfig:
    base = dict(steps=6, batch_size=4, seed=3, optimizer=OptimConfig("adam", 1e-2), log_every=1, checkpoint_every=2)
    return TrainConfig(**{**base, **overrides})


def test_learning_rate_known_answers():
    optim = OptimConfig(lr=1.0)
    warm = ScheduleConfig("cosine", warmup_steps=2)
    assert learning_rate(0, optim, warm, 12) == 0.5 and learning_rate(1, optim, warm, 12) == 1.0
    assert learning_rate(2, optim, warm, 12) == 1.0  # cosine starts at the top ...
    assert learning_rate(7, optim, warm, 12) == pytest.approx(0.5)  # ... is half-way at the middle ...
    assert learning_rate(12, optim, warm, 12) == pytest.approx(0.0, abs=1e-12)  # ... and ends at min
    step = ScheduleConfig("step", step_size=3, gamma=0.1)
    assert [learning_rate(s, optim, step, 10) for s in (0, 2, 3, 6)] == pytest.approx([1, 1, 0.1, 0.01])
    assert learning_rate(5, optim, ScheduleConfig("cosine", min_lr_ratio=0.1), 10) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 2)) / 2)


def test_batches_do_not_depend_on_the_number_of_processes():
    for step in range(12):
        _, whole = batch_indices(step, 26, 8, seed=1)
        halves = [batch_indices(step, 26, 8, seed=1, rank=r, world=2)[1] for r in range(2)]
        assert halves[0] + halves[1] == whole
    epoch0 = sum((batch_indices(s, 26, 8, 1)[1] for s in range(3)), [])
    assert len(set(epoch0)) == 24 and batch_indices(3, 26, 8, 1)[0] == 1  # 3 full batches per epoch
    assert batch_indices(5, 26, 8, 1) == batch_indices(5, 26, 8, 1)


def test_parae_trains_and_exports_a_loadable_backbone(clouds, tmp_path):
    method = parae()
    settings = config(steps=40, optimizer=OptimConfig("adam", 3e-3), checkpoint_every=20)
    summary = Trainer(method, clouds, settings, tmp_path / "run", log=lambda m: None).fit()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 41))
    assert all(0 <= line["data_wait"] <= 1 and line["peak_memory_mib"] > 0 for line in lines)  # measured every log
    first, last = (sum(line["loss"] for line in part) / 7 for part in (lines[:7], lines[-7:]))
    assert last < first - 0.1  # the likelihood of the points improves
    assert summary["steps"] == 40
    loaded = load_backbone(tmp_path / "run" / "backbone.safetensors", expected="pointnet-pointwise")
    x = torch.randn(2, 64, 3)
    method.eval()
    torch.testing.assert_close(loaded.model(x).global_, method.backbone(x).global_)
    from_folder = pretext3d.load_backbone(tmp_path / "run")  # the public entry point takes the run folder
    assert from_folder.backbone == "pointnet-pointwise"
    torch.testing.assert_close(from_folder.model.eval()(x).global_, method.backbone(x).global_)
    with pytest.raises(CheckpointError, match="without backbone.safetensors"):
        pretext3d.load_backbone(tmp_path / "run" / "checkpoints")
    config_json = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config_json["backbone"] == "pointnet-pointwise" and config_json["train"]["steps"] == 40
    assert [p.name for p in sorted((tmp_path / "run" / "checkpoints").iterdir())] == ["step-0000020", "step-0000040"]


def test_interrupted_run_resumes_to_identical_weights(clouds, tmp_path):
    Trainer(parae(), clouds, config(), tmp_path / "whole", log=lambda m: None).fit()
    whole = load_file(str(tmp_path / "whole" / "checkpoints" / "step-0000006" / "model.safetensors"))

    broken = dies_at_call(parae(), 5)  # as if killed after the checkpoint of step 4
    with pytest.raises(Interrupt):
        Trainer(broken, clouds, config(), tmp_path / "cut", log=lambda m: None).fit()
    assert (tmp_path / "cut" / "checkpoints" / "step-0000004").exists()
    torch.manual_seed(123)  # a different state: everything must come from the checkpoint
    summary = Trainer(parae(), clouds, config(), tmp_path / "cut", log=lambda m: None).fit(resume=True)
    assert summary["resumed_from"] == 4
    resumed = load_file(str(tmp_path / "cut" / "checkpoints" / "step-0000006" / "model.safetensors"))
    for key, value in whole.items():
        assert torch.equal(resumed[key], value), key
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_bad_settings_are_clear_errors(clouds, tmp_path):
    with pytest.raises(ValueError, match="unknown optimizer"):
        Trainer(parae(), clouds, config(optimizer=OptimConfig("lbfgs")), tmp_path / "x", log=lambda m: None).fit()
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(parae(), clouds, config(batch_size=64), tmp_path / "y", log=lambda m: None).fit()


def test_two_gloo_processes_train_like_one_on_the_global_batch(clouds, tmp_path):
    here = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here.parent), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(here / "train_dist_worker.py"), str(tmp_path / "ddp")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.manual_seed(0)
    single = ParAE(partitions=8, backbone_config=TINY)
    settings = TrainConfig(steps=4, batch_size=4, seed=3, optimizer=OptimConfig("sgd", 0.05), log_every=1,
                           checkpoint_every=100)
    Trainer(single, clouds, settings, tmp_path / "one", log=lambda m: None).fit()
    ddp = load_file(str(tmp_path / "ddp" / "final.safetensors"))
    for key, value in single.state_dict().items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-5, msg=key)
    losses_ddp = [json.loads(line)["loss"] for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    losses_one = [json.loads(line)["loss"] for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert losses_ddp == pytest.approx(losses_one, rel=1e-5)
