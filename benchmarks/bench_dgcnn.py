"""DGCNN: our EdgeConv against the plain form of the paper, same weights and inputs, one run.

Measures, for B=16, N=1024, k=20, emb_dims=1024 (override with flags), the classification
network or (``--network dgcnn-seg``) the point-wise one whose first two EdgeConv blocks have two
layers each (as the composed recipe builds it: no input transform, 32 outputs; the training
loss then also takes the point-wise outputs):
  * eval forward time and a training step (forward + backward + SGD step), medians of repeats
    taken alternately (ours, plain, ours, ...) so that the machine's drift hits both;
  * peak resident memory of each (a fresh child process per variant; RSS above the baseline
    taken right before the measured call, so weights and inputs are not counted);
  * max |ours - plain| of the global features on random inputs;
  * the kNN selection alone: torch.topk on the full distance matrix vs ours;
  * memory at N=8192 (B=1) for ours.
Writes bench_out/dgcnn.json and prints a table. Usage: python benchmarks/bench_dgcnn.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from _common import timed, timed_pair
from pretext3d.geometry import knn
from pretext3d.models import DGCNN
from pretext3d.models.dgcnn import DGCNNSeg, plain_knn
from pretext3d.utils.memory import keep_freed_memory

OUT = Path(__file__).resolve().parents[1] / "bench_out"


def make_model(args: argparse.Namespace, impl: str) -> DGCNN | DGCNNSeg:
    """Same weights for every variant: a seeded init with non-trivial BatchNorm statistics
    (some negative scales, so the max-before-BN path is exercised)."""
    torch.manual_seed(0)
    if args.network == "dgcnn-seg":
        model = DGCNNSeg(num_outputs=32, num_categories=0, k=args.k, emb_dims=args.emb_dims, transform=False, impl=impl)
    else:
        model = DGCNN(k=args.k, emb_dims=args.emb_dims, impl=impl)
    g = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            n = module.num_features
            module.weight.data = torch.rand(n, generator=g) * 1.5 - 0.25
            module.bias.data = 0.1 * torch.randn(n, generator=g)
            module.running_mean.data = 0.1 * torch.randn(n, generator=g)
            module.running_var.data = 0.5 + torch.rand(n, generator=g)
    return model


def make_points(batch: int, n: int, seed: int = 2) -> torch.Tensor:
    return torch.rand(batch, n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def train_step_fn(model: DGCNN | DGCNNSeg, points: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(points)
        loss = out.global_.square().mean()
        if out.point_logits is not None:
            loss = loss + out.point_logits.square().mean()
        loss.backward()
        opt.step()

    return step


def eval_fn(model: DGCNN | DGCNNSeg, points: torch.Tensor):
    model.eval()

    def forward():
        with torch.no_grad():
            return model(points)

    return forward


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args: argparse.Namespace) -> None:
    """Run one variant once after a warm-up and report its peak RSS above the baseline."""
    torch.set_num_threads(args.threads)
    model = make_model(args, args.child_impl)
    points = make_points(args.batch if args.child_n == 0 else 1, args.points if args.child_n == 0 else args.child_n)
    fn = train_step_fn(model, points) if args.child_mode == "train" else eval_fn(model, points)
    fn()
    import gc

    gc.collect()
    # ru_maxrss cannot be reset: measure the peak of a second call by sampling RSS in a thread
    import threading

    peak = [rss_bytes()]
    base = peak[0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.0005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    fn()
    done.set()
    th.join()
    peak[0] = max(peak[0], rss_bytes())
    print(json.dumps({"peak_bytes": peak[0] - base, "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def measure_memory(args: argparse.Namespace, impl: str, mode: str, n: int = 0) -> int:
    cmd = [sys.executable, __file__, "--child-impl", impl, "--child-mode", mode, "--child-n", str(n),
           "--network", args.network,
           "--batch", str(args.batch), "--points", str(args.points), "--k", str(args.k),
           "--emb-dims", str(args.emb_dims), "--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--network", choices=["dgcnn", "dgcnn-seg"], default="dgcnn")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--emb-dims", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats of ours and plain")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="time with freed memory kept for reuse, as the trainer runs (the memory "
                             "children never do: they measure growth)")
    parser.add_argument("--child-impl", default="")
    parser.add_argument("--child-mode", default="eval")
    parser.add_argument("--child-n", type=int, default=0)
    args = parser.parse_args()
    if args.child_impl:
        child(args)
        return
    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        keep_freed_memory()
    fast, plain = make_model(args, "fast"), make_model(args, "plain")
    points = make_points(args.batch, args.points)
    result: dict[str, object] = {
        "config": {"network": args.network, "keep_freed_memory": args.keep_freed_memory, "batch": args.batch, "points": args.points, "k": args.k, "emb_dims": args.emb_dims,
                   "threads": args.threads, "torch": torch.__version__},
    }
    t_fast, t_plain = timed_pair(eval_fn(fast, points), eval_fn(plain, points), args.repeats)
    out_fast, out_plain = eval_fn(fast, points)(), eval_fn(plain, points)()
    max_diff = float((out_fast.global_ - out_plain.global_).abs().max())
    s_fast, s_plain = timed_pair(train_step_fn(fast, points), train_step_fn(plain, points), args.repeats)

    feats = torch.randn(args.batch, args.points, 64, generator=torch.Generator().manual_seed(3))
    t_topk = timed(lambda: plain_knn(feats, args.k), args.repeats)
    t_ours_knn = timed(lambda: knn(feats, args.k), args.repeats)

    mem = {(impl, mode): measure_memory(args, impl, mode) for impl in ("fast", "plain") for mode in ("eval", "train")}
    mem_8192 = measure_memory(args, "fast", "eval", n=8192)
    result.update({
        "eval_s": {"fast": t_fast, "plain": t_plain, "speedup": t_plain / t_fast},
        "train_step_s": {"fast": s_fast, "plain": s_plain, "speedup": s_plain / s_fast},
        "peak_mem_bytes": {f"{i}_{m}": v for (i, m), v in mem.items()},
        "peak_mem_ratio_eval": mem[("fast", "eval")] / mem[("plain", "eval")],
        "peak_mem_ratio_train": mem[("fast", "train")] / mem[("plain", "train")],
        "max_abs_diff_global_random_inputs": max_diff,
        "knn_select_s_C64": {"torch_topk_full_matrix": t_topk, "ours": t_ours_knn, "speedup": t_topk / t_ours_knn},
        "fast_eval_peak_mem_bytes_B1_N8192": mem_8192,
    })
    OUT.mkdir(exist_ok=True)
    (OUT / ("dgcnn.json" if args.network == "dgcnn" else "dgcnn_seg.json")).write_text(json.dumps(result, indent=2))
    mib = 2**20
    print(f"{args.network} B={args.batch} N={args.points} k={args.k} emb={args.emb_dims} threads={args.threads}")
    print(f"{'':22s}{'ours':>10s}{'plain':>10s}{'ratio':>9s}")
    print(f"{'eval forward (s)':22s}{t_fast:10.3f}{t_plain:10.3f}{t_plain / t_fast:8.1f}x")
    print(f"{'train step (s)':22s}{s_fast:10.3f}{s_plain:10.3f}{s_plain / s_fast:8.1f}x")
    for mode in ("eval", "train"):
        a, b = mem[("fast", mode)], mem[("plain", mode)]
        print(f"{'peak mem ' + mode + ' (MiB)':22s}{a / mib:10.1f}{b / mib:10.1f}{a / b:9.3f}")
    print(f"{'kNN C=64 (s)':22s}{t_ours_knn:10.4f}{t_topk:10.4f}{t_topk / t_ours_knn:8.1f}x")
    print(f"max |ours - plain| of global features: {max_diff:.2e}")
    print(f"ours, eval, B=1 N=8192: peak {mem_8192 / mib:.1f} MiB")


if __name__ == "__main__":
    main()
