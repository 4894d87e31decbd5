"""ModelNet40 linear SVM with randomly initialised PointNet and DGCNN, with extraction speed.

For each backbone: seeded random init, BatchNorm calibration on training clouds, features of all
12,311 clouds (timed), the matrix-multiply FLOPs the forward executes (counted with
torch.utils.flop_counter on one batch), the achieved GFLOP/s, and a plain fp32 matmul's GFLOP/s
measured in the same run; then the linear SVM (C given, or chosen by CV on train).

Usage: python benchmarks/modelnet40_linear_svm.py [--data ../shared/data/modelnet40_1024.npz]
Writes bench_out/modelnet40_linear_svm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from pretext3d.data import open_splits
from pretext3d.eval import calibrate_batchnorm, extract_features, fit_linear_svm
from pretext3d.eval.protocols import backbone_config
from pretext3d.models import build_backbone

ROOT = Path(__file__).resolve().parents[1]


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def forward_flops(model: torch.nn.Module, points: torch.Tensor) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(points)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/modelnet40_1024.npz"))
    parser.add_argument("--backbones", nargs="+", default=["pointnet", "dgcnn"])
    parser.add_argument("--C", type=float, default=0.1, help="SVM C (the published protocol's 0.1); <= 0 means CV on train")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bn-calibration", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = open_splits(args.data, num_points=1024)
    n_clouds = len(splits["train"]) + len(splits["test"])
    results = {"data": args.data, "clouds": n_clouds, "threads": args.threads, "torch": torch.__version__,
               "matmul_gflops_before": matmul_gflops(), "backbones": {}}
    for name in args.backbones:
        torch.manual_seed(args.seed)
        config = backbone_config(name)
        model = build_backbone(name, **config)
        start = time.perf_counter()
        calibrate_batchnorm(model, splits["train"], args.bn_calibration, args.batch_size, args.seed, progress=True)
        calib_s = time.perf_counter() - start
        wall = time.perf_counter()
        feats = {s: extract_features(model, splits[s], args.batch_size, progress=True, desc=f"{name} {s}") for s in ("train", "test")}
        wall = time.perf_counter() - wall
        model_s = feats["train"].seconds + feats["test"].seconds
        batch = torch.from_numpy(np.stack([splits["train"][i]["points"] for i in range(args.batch_size)]))
        flops_per_cloud = forward_flops(model, batch) / args.batch_size
        gflops = flops_per_cloud * n_clouds / model_s / 1e9
        svm = fit_linear_svm(feats["train"].features, feats["train"].labels, feats["test"].features, feats["test"].labels,
                             C=args.C if args.C > 0 else None, seed=args.seed)
        results["backbones"][name] = {
            "config": config, "accuracy": svm.accuracy, "class_mean_accuracy": svm.class_mean_accuracy, "C": svm.C,
            "cv_accuracy": svm.cv_accuracy, "feature_dim": svm.feature_dim, "bn_calibration_seconds": calib_s,
            "extract_wall_seconds": wall, "extract_model_seconds": model_s, "clouds_per_second": n_clouds / model_s,
            "matmul_gflop_per_cloud": flops_per_cloud / 1e9, "achieved_gflops": gflops, "svm_fit_seconds": svm.fit_seconds,
        }
        print(json.dumps({name: results["backbones"][name]}, indent=1), flush=True)
    results["matmul_gflops_after"] = matmul_gflops()
    out = ROOT / "bench_out" / "modelnet40_linear_svm.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    mm = (results["matmul_gflops_before"] + results["matmul_gflops_after"]) / 2
    print(f"\nModelNet40 ({n_clouds} clouds, 1024 points), random init + BN calibration, {args.threads} threads")
    print(f"plain fp32 matmul (2048^3): {mm:.1f} GFLOP/s")
    print(f"{'backbone':10s}{'acc':>8s}{'cls acc':>9s}{'C':>7s}{'extract s':>11s}{'clouds/s':>10s}{'GFLOP/cloud':>13s}{'GFLOP/s':>9s}{'% matmul':>10s}")
    for name, r in results["backbones"].items():
        print(f"{name:10s}{100 * r['accuracy']:7.2f}%{100 * r['class_mean_accuracy']:8.2f}%{r['C']:7g}"
              f"{r['extract_model_seconds']:11.1f}{r['clouds_per_second']:10.1f}{r['matmul_gflop_per_cloud']:13.3f}"
              f"{r['achieved_gflops']:9.1f}{100 * r['achieved_gflops'] / mm:9.0f}%")


if __name__ == "__main__":
    main()
