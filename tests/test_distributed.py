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
from dist_worker import dgcnn_step
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

    # DGCNN's EdgeConv statistics span both processes (fast and plain EdgeConv; one-layer blocks
    # and the point-wise network's two-layer ones): the same features, gradients and running
    # statistics as one process on the whole batch (parameter gradients: the sum of the processes')
    for impl, segmentation in (("fast", False), ("plain", False), ("fast", True), ("plain", True)):
        single = dgcnn_step(slice(0, 8), impl, segmentation)
        tag = f"{impl}_seg" if segmentation else impl
        for key in (f"{tag}_dgcnn_features", f"{tag}_dgcnn_input_grad"):
            np.testing.assert_allclose(np.concatenate([r[key] for r in ranks]), single[key], rtol=1e-4, atol=1e-5,
                                       err_msg=key)
        for key in (k for k in single if k.startswith(f"{tag}_param_")):
            scale = float(np.abs(single[key]).max())  # float32 sums in another order: relative to the largest entry
            np.testing.assert_allclose(ranks[0][key] + ranks[1][key], single[key], rtol=1e-4, atol=1e-5 * scale,
                                       err_msg=key)
        for key in (k for k in single if k.startswith(f"{tag}_buffer_")):
            np.testing.assert_allclose(ranks[0][key], single[key], rtol=1e-4, atol=1e-6, err_msg=key)
