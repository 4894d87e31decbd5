"""Two CPU processes under torchrun (gloo): sharded feature extraction gathers to the same
features as one process, and NT-Xent with gathered negatives equals the single-process loss."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from pretext3d.eval import extract_features
from pretext3d.models import PointNet
from pretext3d.pretext import NTXentLoss
from tests_helpers import free_port, tiny_clouds

HERE = Path(__file__).resolve().parent


def test_two_processes_match_one(tmp_path):
    out = tmp_path / "dist"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(HERE / "dist_worker.py"), str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [np.load(f"{out}_rank{r}.npz") for r in range(2)]

    torch.manual_seed(0)
    model = PointNet(emb_dims=16).eval()
    single = extract_features(model, tiny_clouds(11), batch_size=3, progress=False)
    for r in ranks:
        assert r["indices"].tolist() == list(range(11))
        np.testing.assert_allclose(r["features"], single.features, rtol=1e-5, atol=1e-6)

    g = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    z0.requires_grad_()
    full = NTXentLoss(0.2)(z0, z1)
    full.backward()
    assert abs(np.mean([float(r["loss"]) for r in ranks]) - full.item()) < 1e-5
    # DDP averages gradients over processes: local gradient / world == slice of the global one
    grads = np.concatenate([r["grad"] for r in ranks]) / 2
    np.testing.assert_allclose(grads, z0.grad.numpy(), rtol=1e-4, atol=1e-6)
