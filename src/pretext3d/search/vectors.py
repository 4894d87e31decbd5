"""Nearest-neighbour search over L2-normalised vectors with FAISS: exact inner product (cosine
similarity) for small collections, HNSW above ``APPROXIMATE_ABOVE`` vectors, with its recall
against exact search measured when it is built.

The size and the HNSW settings come from ``benchmarks/bench_search.py`` (2 cores, dimension
256, faiss 1.15): exact search answers one query in 0.85 ms over 10k vectors, 15 ms over 100k
and 143 ms over 1M; on 1M clustered vectors HNSW (M 32, efSearch 128) answers in 0.87 ms with
recall@10 0.997, but on 1M random vectors in 2.6 ms with recall 0.05 (no neighbourhoods to
find): hence the recall measured at build time and the fall-back to exact search
(docs/benchmarks.md, Search).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pretext3d.utils.io import atomic_path

__all__ = ["APPROXIMATE_ABOVE", "HNSW_M", "HNSW_EF_CONSTRUCTION", "HNSW_EF_SEARCH", "BuiltIndex", "build_faiss",
           "exact_index", "write_faiss", "read_faiss", "recall_against_exact"]

APPROXIMATE_ABOVE = 100_000  # vectors; exact search beyond this takes over ~15 ms a query on 2 cores
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH = 128
EF_SEARCH_STEPS = (HNSW_EF_SEARCH, 256, 512)  # tried in turn until recall@10 reaches MIN_RECALL
MIN_RECALL = 0.9
RECALL_QUERIES = 1000
RECALL_K = 10


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("pretext3d's search needs FAISS: pip install faiss-cpu") from None
    return faiss


@dataclass
class BuiltIndex:
    """A FAISS index and what it is: kind "exact" or "hnsw", its settings, and (for hnsw) the
    recall@k of its answers against exact search on sampled indexed vectors."""

    index: Any
    kind: str
    settings: dict[str, Any]
    recall: float | None = None
    recall_queries: int = 0

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, **self.settings}
        if self.kind == "exact" and self.recall is not None:
            out["note"] = (f"an HNSW index reached recall@{RECALL_K} {self.recall:.3f} < {MIN_RECALL} on these vectors "
                           "even at efSearch 512: exact search kept")
        if self.recall is not None:
            out.update(recall_at_k=self.recall, recall_k=RECALL_K, recall_queries=self.recall_queries,
                       recall_rule="fraction of the exact 10 nearest (the query itself left out) that the "
                                   "approximate search returns, over indexed vectors sampled as queries (seed 0)")
        return out


def exact_index(vectors: np.ndarray):
    """An exact inner-product index of (N, D) float32 vectors."""
    faiss = _faiss()
    index = faiss.IndexFlatIP(vectors.shape[1])
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, np.float32))
    return index


def hnsw_index(vectors: np.ndarray, m: int = HNSW_M, ef_search: int = HNSW_EF_SEARCH):
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.hnsw.efSearch = ef_search
    index.add(np.ascontiguousarray(vectors, np.float32))
    return index


def recall_against_exact(approximate, vectors: np.ndarray, k: int = RECALL_K, queries: int = RECALL_QUERIES,
                         seed: int = 0) -> tuple[float, int]:
    """(recall@k, queries): how many of each sampled vector's exact k nearest (itself left out)
    the approximate index returns."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)
    asked = np.ascontiguousarray(vectors[rows], np.float32)
    _, truth = exact_index(vectors).search(asked, k + 1)
    _, found = approximate.search(asked, k + 1)
    hits = []
    for row, t, f in zip(rows, truth, found):
        t_set = [i for i in t if i != row][:k]
        f_set = {i for i in f if i != row}
        hits.append(len(f_set.intersection(t_set)) / max(1, len(t_set)))
    return float(np.mean(hits)), len(rows)


def build_faiss(vectors: np.ndarray, approximate: str = "auto", above: int = APPROXIMATE_ABOVE) -> BuiltIndex:
    """vectors: (N, D) L2-normalised float32 -> the index for their size: exact up to
    ``APPROXIMATE_ABOVE`` vectors (or always with approximate="never"), HNSW above (or always
    with "always"), its recall@10 against exact search measured on sampled indexed vectors and
    efSearch widened (``EF_SEARCH_STEPS``) until it reaches ``MIN_RECALL``; with "auto", an HNSW
    index that cannot reach it is refused and the exact one kept (its recall recorded)."""
    if approximate not in ("auto", "always", "never"):
        raise ValueError(f"approximate must be auto, always or never, got {approximate!r}")
    use_hnsw = approximate == "always" or (approximate == "auto" and len(vectors) > above)
    if not use_hnsw or len(vectors) < 2:
        return BuiltIndex(exact_index(vectors), "exact", {"faiss": "IndexFlatIP"})
    index = hnsw_index(vectors)
    for ef_search in EF_SEARCH_STEPS:  # widen the search until it finds enough of the true neighbours
        index.hnsw.efSearch = ef_search
        recall, queries = recall_against_exact(index, vectors)
        if recall >= MIN_RECALL:
            break
    settings = {"faiss": "IndexHNSWFlat", "M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION,
                "efSearch": int(index.hnsw.efSearch)}
    if recall < MIN_RECALL and approximate == "auto":
        # vectors without neighbourhood structure (random-like): an approximate answer would be
        # mostly wrong, so the exact index is kept and the measured recall says why
        return BuiltIndex(exact_index(vectors), "exact", {"faiss": "IndexFlatIP", "hnsw_refused": settings},
                          recall, queries)
    return BuiltIndex(index, "hnsw", settings, recall, queries)


def write_faiss(index, path: str | Path) -> None:
    """faiss.write_index under a temporary name, then renamed."""
    with atomic_path(path) as tmp:
        _faiss().write_index(index, str(tmp))


def read_faiss(path: str | Path, ef_search: int | None = None):
    index = _faiss().read_index(str(path))
    if ef_search and hasattr(index, "hnsw"):
        index.hnsw.efSearch = ef_search
    return index
