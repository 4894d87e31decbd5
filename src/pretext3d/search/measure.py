"""``pretext3d index evaluate``: what an index gives and costs, measured from the index itself:
retrieval scores per (query, gallery) modality pair (``evaluate retrieval``'s definitions),
one-query-at-a-time latency of exact and approximate (HNSW) search and of whole queries
(embedding a cloud or an image, then searching), and the bytes it takes per object."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pretext3d.search.index import SearchIndex, open_index
from pretext3d.search.vectors import HNSW_EF_SEARCH, exact_index, hnsw_index, recall_against_exact
from pretext3d.utils.io import folder_bytes

__all__ = ["evaluate_index", "format_evaluation"]


def _percentiles(seconds: Sequence[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99)),
            "queries": int(len(values))}


def _timed_searches(index, queries: np.ndarray, k: int) -> dict[str, float]:
    seconds = []
    for vector in queries:
        start = time.perf_counter()
        index.search(vector[None], k)
        seconds.append(time.perf_counter() - start)
    return _percentiles(seconds)


def _search_latency(index: SearchIndex, modality: str, count: int, k: int = 10) -> dict[str, Any]:
    """Latency of the vector search alone, exact and HNSW (built here when the index holds an
    exact one), with the HNSW recall@10 against exact search."""
    vectors = np.ascontiguousarray(index.vectors(modality), np.float32)
    rows = np.random.default_rng(0).choice(len(vectors), size=min(count, len(vectors)), replace=False)
    queries = vectors[rows]
    exact = exact_index(vectors)
    start = time.perf_counter()
    approximate = hnsw_index(vectors)
    built = time.perf_counter() - start
    recall, asked = recall_against_exact(approximate, vectors)
    return {"objects": len(vectors), "exact": _timed_searches(exact, queries, k),
            "hnsw": {**_timed_searches(approximate, queries, k), "build_seconds": built, "efSearch": HNSW_EF_SEARCH,
                     "recall_at_10": recall, "recall_queries": asked},
            "stored": index.info["search"][modality]["kind"]}


def _query_latency(index: SearchIndex, count: int) -> dict[str, Any]:
    """Whole queries as a person makes them: a stored cloud, and a stored view as an image,
    embedded by the run and searched (exact), timed one at a time."""
    from pretext3d.data.store import decode_images, read_object, store_file

    if index.store is None or count == 0:
        return {}
    entries = list(index.store_entries.values())
    rows = np.random.default_rng(1).choice(len(entries), size=min(count, len(entries)), replace=False)
    index.embedder  # load the run before timing
    out: dict[str, Any] = {}
    for kind in [m for m in ("points", "image") if m in index.modalities]:
        seconds = []
        for row in rows:
            arrays = read_object(store_file(index.store, entries[row]["file"]))
            if kind == "points":
                value = arrays["points"]
            else:
                images, _ = decode_images(arrays["images_png"], arrays["image_offsets"], [0])
                value = images[0]
            start = time.perf_counter()
            index.query(value, 10, modality=kind)
            seconds.append(time.perf_counter() - start)
        out[kind] = _percentiles(seconds)
    return out


def _sizes(index: SearchIndex) -> dict[str, Any]:
    """Bytes per indexed object: what search needs (vectors, FAISS, thumbnails, metadata), the
    embedding chunks kept for re-runs, and the prepared store (views for the page)."""
    n = max(1, len(index))
    searchable = folder_bytes(index.path / index.info["generation"])
    chunks = folder_bytes(index.path / "chunks")
    store = folder_bytes(index.path / "store")
    return {"searchable_bytes_per_object": searchable / n, "chunks_bytes_per_object": chunks / n,
            "own_store_bytes_per_object": store / n,
            "vectors_bytes_per_object": {m: 4 * int(index.info["dims"][m]) for m in index.modalities}}


def evaluate_index(path: str | Path, pairs: Sequence[str] | None = None, split: str | None = None,
                   latency_queries: int = 200, device: str = "auto") -> dict[str, Any]:
    """Retrieval scores of every pair (default: all pairs the space allows), latency and sizes."""
    index = open_index(path, device)
    modalities = index.modalities
    cross = index.info["space"] == "shared"
    if pairs is None:
        chosen = [(q, g) for q in modalities for g in modalities if q == g or cross]
    else:
        chosen = []
        for pair in pairs:
            q, _, g = pair.partition("->")
            if q not in modalities or g not in modalities:
                raise ValueError(f"pair {pair!r}: {path} holds {', '.join(modalities)} vectors (write pairs as points->image)")
            chosen.append((q, g))
    retrieval = {f"{q}->{g}": index.evaluate(q, g, split=split) for q, g in chosen}
    latency = {m: _search_latency(index, m, latency_queries) for m in modalities} if latency_queries else {}
    return {"index": str(path), "objects": len(index), "split": split, "run": index.info["run"],
            "space": index.info["space"], "pool": index.info["pool"], "retrieval": retrieval,
            "search_latency": latency, "query_latency": _query_latency(index, min(latency_queries, 50)),
            "sizes": _sizes(index),
            "definitions": {"mAP, top_k": "as `pretext3d evaluate retrieval`: relevant = same class; within a modality "
                            "the query object is left out of its ranking; across modalities its counterpart counts",
                            "search_latency": "one query vector at a time, top 10, wall clock on this machine",
                            "query_latency": "a stored cloud or view embedded by the run and searched (exact), one at a time"}}


def format_evaluation(report: dict[str, Any]) -> str:
    lines = [f"{report['index']}: {report['objects']} objects, {report['space']} space"
             + (f", split {report['split']}" if report["split"] else "")]
    lines.append(f"  {'query->gallery':16s} {'mAP':>7s} {'top-1':>7s} {'top-5':>7s} {'top-10':>7s}")
    for name, res in report["retrieval"].items():
        top = res["top_k"]
        lines.append(f"  {name:16s} {100 * res['mAP']:6.2f}% " + " ".join(f"{100 * top[k]:6.2f}%" for k in ("1", "5", "10")
                                                                        if k in top))
    for modality, lat in report["search_latency"].items():
        lines.append(f"  search {modality:7s} exact p50 {lat['exact']['p50_ms']:.2f} ms p99 {lat['exact']['p99_ms']:.2f} ms; "
                     f"hnsw p50 {lat['hnsw']['p50_ms']:.2f} ms p99 {lat['hnsw']['p99_ms']:.2f} ms, recall@10 "
                     f"{lat['hnsw']['recall_at_10']:.3f} (stored index: {lat['stored']})")
    for kind, lat in report["query_latency"].items():
        lines.append(f"  whole {kind} query (embed + search): p50 {lat['p50_ms']:.1f} ms p99 {lat['p99_ms']:.1f} ms")
    sizes = report["sizes"]
    lines.append(f"  size per object: searchable {sizes['searchable_bytes_per_object'] / 1024:.1f} KiB, chunks "
                 f"{sizes['chunks_bytes_per_object'] / 1024:.1f} KiB, prepared views {sizes['own_store_bytes_per_object'] / 1024:.1f} KiB")
    return "\n".join(lines)
