"""Nearest-neighbour search for `pretext3d index`: exact (FAISS IndexFlatIP) against the
approximate indexes, on random unit vectors of a run's dimension, in one run.

For every collection size: one-query-at-a-time latency p50/p99 of exact search (what decides
the size above which `pretext3d index` builds an approximate index). At the largest size: HNSW
(build time, then latency and recall@10 against exact search per efSearch) and IVF-Flat (per
nprobe). Random unit vectors are the hard case for approximate search (no cluster structure);
learned embeddings are easier, and `pretext3d index` reports the recall it measures on its own
vectors. Usage:

    python benchmarks/bench_search.py [--dim 256] [--sizes 10000 100000 1000000] [--queries 1000]
    python benchmarks/bench_search.py --data clustered --sizes 1000000 --skip-ivf   # a space with structure
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def unit_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    """count random directions (count, dim), float32, made in blocks to bound the memory."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):
        block = rng.standard_normal((min(100_000, count - start), dim), dtype=np.float32)
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def clustered_vectors(count: int, dim: int, seed: int, clusters: int, spread: float = 0.75) -> np.ndarray:
    """count unit vectors around ``clusters`` random directions (the same for every seed): each
    a centre plus Gaussian noise of norm about ``spread`` (cosine to its centre about
    1 / sqrt(1 + spread^2) = 0.8 at 0.75), the shape of a learned space where objects of a kind
    gather."""
    centres = unit_vectors(clusters, dim, seed=12345)
    rng = np.random.default_rng(seed)
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        block = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
        out[start:start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def latencies(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query seconds (one query per call, as the server asks) and the ids found (Q, k)."""
    seconds, found = [], []
    for q in queries:
        start = time.perf_counter()
        _, ids = index.search(q[None], k)
        seconds.append(time.perf_counter() - start)
        found.append(ids[0])
    return np.array(seconds), np.stack(found)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact k nearest that the approximate search returned."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def summary(seconds: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(seconds, 50) * 1e3), "p99_ms": float(np.percentile(seconds, 99) * 1e3)}


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--data", choices=("random", "clustered"), default="random",
                        help="random unit vectors (no structure: the hard case), or clustered ones (--clusters "
                        "directions, each vector about cosine 0.8 to its own)")
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--skip-ivf", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "bench_out" / "search.json"))
    args = parser.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, dim {args.dim}, k {args.k}")
    def make(count: int, seed: int) -> np.ndarray:
        return unit_vectors(count, args.dim, seed) if args.data == "random" else \
            clustered_vectors(count, args.dim, seed, args.clusters)

    queries = make(args.queries, seed=1)
    results: dict = {"dim": args.dim, "k": args.k, "queries": args.queries, "threads": faiss.omp_get_max_threads(),
                     "data": args.data, "clusters": args.clusters if args.data == "clustered" else None,
                     "exact": {}, "hnsw": {}, "ivf": {}}
    for size in args.sizes:
        vectors = make(size, seed=0)
        exact = faiss.IndexFlatIP(args.dim)
        exact.add(vectors)
        seconds, truth = latencies(exact, queries, args.k)
        results["exact"][size] = summary(seconds)
        print(f"exact  N={size:>9,d}  p50 {results['exact'][size]['p50_ms']:8.2f} ms  p99 {results['exact'][size]['p99_ms']:8.2f} ms",
              flush=True)
    largest = args.sizes[-1]
    results["largest"] = largest
    start = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(args.dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 64
    hnsw.add(vectors)
    results["hnsw_build_s"] = time.perf_counter() - start
    results["hnsw_m"] = args.hnsw_m
    print(f"hnsw   M={args.hnsw_m} efConstruction 64: built {largest:,d} in {results['hnsw_build_s']:.0f} s", flush=True)
    for ef in (16, 32, 64, 128, 256):
        hnsw.hnsw.efSearch = ef
        seconds, found = latencies(hnsw, queries, args.k)
        results["hnsw"][ef] = {**summary(seconds), "recall_at_k": recall_at(found, truth)}
        print(f"hnsw   efSearch {ef:4d}  p50 {results['hnsw'][ef]['p50_ms']:7.2f} ms  p99 {results['hnsw'][ef]['p99_ms']:7.2f} ms"
              f"  recall@{args.k} {results['hnsw'][ef]['recall_at_k']:.3f}", flush=True)
    del hnsw
    if args.skip_ivf:
        return _write(results, args.out)
    nlist = int(4 * np.sqrt(largest))
    start = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(args.dim), args.dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors[np.random.default_rng(2).choice(largest, min(largest, 64 * nlist), replace=False)])
    ivf.add(vectors)
    results["ivf_build_s"], results["ivf_nlist"] = time.perf_counter() - start, nlist
    print(f"ivf    nlist {nlist}: built in {results['ivf_build_s']:.0f} s", flush=True)
    for nprobe in (8, 32, 128, 512):
        ivf.nprobe = nprobe
        seconds, found = latencies(ivf, queries, args.k)
        results["ivf"][nprobe] = {**summary(seconds), "recall_at_k": recall_at(found, truth)}
        print(f"ivf    nprobe {nprobe:4d}  p50 {results['ivf'][nprobe]['p50_ms']:7.2f} ms  p99 {results['ivf'][nprobe]['p99_ms']:7.2f} ms"
              f"  recall@{args.k} {results['ivf'][nprobe]['recall_at_k']:.3f}", flush=True)
    _write(results, args.out)


def _write(results: dict, path: str) -> None:
    out = Path(path)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
