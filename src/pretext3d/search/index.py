"""A finished search index, opened for queries: ``open_index(path).query(x, k)``.

    from pretext3d.search import open_index
    index = open_index("my_index")
    hits = index.query("photo.jpg", k=5, modality="points")   # point clouds that look like the photo
    hits = index.query("test/chair_0901", k=5)                 # objects like an indexed one

A query is a file (mesh, point cloud, image), an in-memory cloud/image/mesh, or the id of an
indexed object. It is embedded with the run the index was built with (``pretext3d.embedding``,
the preprocessing of the run's training data) and compared by cosine similarity with the
vectors of one modality of the collection (``modality``: default the query's own, else the
points). Cross-modal queries need a run with a shared space (CrossPoint, Pic@Point, MIMS).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pretext3d.data.errors import DataFormatError
from pretext3d.data.store import read_json
from pretext3d.search.build import INDEX_FORMAT
from pretext3d.search.queries import Query, query_from_value
from pretext3d.search.vectors import exact_index, read_faiss

__all__ = ["Hit", "SearchIndex", "open_index", "IndexOpenError"]


class IndexOpenError(DataFormatError):
    """An index folder that cannot be opened (named, with the reason)."""


@dataclass
class Hit:
    """One result: rank (1 = nearest), the object's id, score (cosine similarity), and what is
    known of it."""

    rank: int
    id: str
    score: float
    name: str
    label: int | None
    class_: str | None
    path: str
    split: str | None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["class"] = out.pop("class_")
        return out


class SearchIndex:
    """An index folder (``pretext3d index``): its objects, vectors per modality, FAISS indexes,
    thumbnails, and the run that embeds queries (loaded on the first file query)."""

    def __init__(self, path: str | Path, device: str = "auto"):
        self.path = Path(path)
        info = self.path / "index.json"
        if not info.is_file():
            hint = " (an unfinished shard: run `pretext3d index merge`)" if (self.path / "build.json").is_file() else ""
            raise IndexOpenError(self.path, f"is not a finished pretext3d index (no index.json){hint}")
        self.info = read_json(info, "index", ("format", "files", "modalities"))
        if self.info["format"] != INDEX_FORMAT:
            raise IndexOpenError(info, f"has format {self.info['format']!r}, expected {INDEX_FORMAT!r}")
        self.device = device
        self.objects: list[dict[str, Any]] = read_json(self._file(self.info["files"]["objects"]), "objects",
                                                       ("objects",))["objects"]
        self.row_of = {o["id"]: i for i, o in enumerate(self.objects)}
        self.modalities: tuple[str, ...] = tuple(self.info["modalities"])
        self._vectors: dict[str, np.ndarray] = {}
        self._faiss: dict[str, Any] = {}

    def _file(self, relative: str) -> Path:
        """A file the index names, which must lie inside the index folder."""
        candidate = (self.path / relative).resolve()
        if not candidate.is_relative_to(self.path.resolve()) or not candidate.is_file():
            raise IndexOpenError(self.path / "index.json", f"names {relative!r}, which is not a file inside the index")
        return candidate

    def __len__(self) -> int:
        return len(self.objects)

    # --- stored data --------------------------------------------------------------------------

    def vectors(self, modality: str) -> np.ndarray:
        """(N, D) L2-normalised vectors of one modality (memory-mapped)."""
        self._check_modality(modality)
        if modality not in self._vectors:
            self._vectors[modality] = np.load(self._file(self.info["files"]["vectors"][modality]), mmap_mode="r")
        return self._vectors[modality]

    def faiss(self, modality: str):
        self._check_modality(modality)
        if modality not in self._faiss:
            self._faiss[modality] = read_faiss(self._file(self.info["files"]["faiss"][modality]),
                                               self.info["search"][modality].get("efSearch"))
        return self._faiss[modality]

    @cached_property
    def _thumbnails(self) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self._file(self.info["files"]["thumbnails"]), allow_pickle=False) as data:
            return data["data"], data["offsets"]

    def thumbnail(self, object_id: str) -> bytes:
        """The object's thumbnail (PNG bytes)."""
        row = self.row(object_id)
        data, offsets = self._thumbnails
        return data[offsets[row]:offsets[row + 1]].tobytes()

    @cached_property
    def store(self) -> Path | None:
        """The prepared store holding the objects' views (None when it is gone)."""
        store = self.path / "store" if self.info["store"] == "store" else Path(self.info["store"])
        return store if (store / "store.json").is_file() else None

    def views(self, object_id: str) -> list[bytes]:
        """Every rendered view of the object (PNG bytes, RGBA), from the prepared store."""
        from pretext3d.data.store import read_object, store_file

        if self.store is None:
            raise IndexOpenError(self.path, "has no prepared store to show views from (it was moved or deleted)")
        self.row(object_id)
        entry = self.store_entries.get(object_id)
        if entry is None:
            raise IndexOpenError(self.store, f"no longer holds the object {object_id!r}")
        arrays = read_object(store_file(self.store, entry["file"]), ("images_png", "image_offsets"))
        data, offsets = arrays["images_png"], arrays["image_offsets"]
        return [data[offsets[v]:offsets[v + 1]].tobytes() for v in range(len(offsets) - 1)]

    @cached_property
    def store_entries(self) -> dict[str, dict]:
        """The prepared store's index entries by object id (empty without a store)."""
        from pretext3d.data.store import read_index

        return {e["key"]: e for e in read_index(self.store)["objects"]} if self.store else {}

    def row(self, object_id: str | int) -> int:
        """The row of an indexed object, by id (or row number)."""
        if isinstance(object_id, (int, np.integer)) and not isinstance(object_id, bool):
            if not 0 <= object_id < len(self.objects):
                raise ValueError(f"no object at row {object_id} (the index holds {len(self.objects)})")
            return int(object_id)
        if object_id not in self.row_of:
            raise ValueError(f"no indexed object has the id {object_id!r}")
        return self.row_of[object_id]

    def _check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ValueError(f"{self.path}: holds no {modality!r} vectors (it holds {', '.join(self.modalities)})")

    # --- queries ------------------------------------------------------------------------------

    @cached_property
    def embedder(self):
        """The run's encoders with its preprocessing (loaded on first use)."""
        from pretext3d.embedding import Embedder

        run = Path(self.info["run"])
        if not run.is_dir():
            raise IndexOpenError(self.path, f"was built with the run {run}, which is gone: file queries need it "
                                         "(queries by an indexed object's id still work)")
        return Embedder(run, self.info["space"], self.device)

    def embed(self, query: Query) -> tuple[np.ndarray, str]:
        """A read query -> (its L2-normalised vector (D,), the modality it was embedded as)."""
        embedder = self.embedder
        if query.kind == "points":
            vector, modality = embedder.points([query.value])[0], "points"
        elif query.kind == "image":
            vector, modality = embedder.images([query.value], pool=self.info["pool"])[0], "image"
        else:
            vector = embedder.meshes([query.value])[0]
            modality = "mesh" if "mesh" in embedder.modalities else "points"
        return vector / max(float(np.linalg.norm(vector)), 1e-12), modality

    def query_vector(self, query: Any, query_modality: str | None = None) -> tuple[np.ndarray, str, int | None]:
        """Any query form -> (vector, its modality, the row of the indexed object it is, if any)."""
        is_row = isinstance(query, (int, np.integer)) and not isinstance(query, bool)
        if is_row or (isinstance(query, str) and query in self.row_of):
            row = self.row(query)
            modality = query_modality or self.modalities[0]
            return np.asarray(self.vectors(modality)[row]), modality, row
        if isinstance(query, str) and not Path(query).exists():
            raise ValueError(f"{query}: neither a file nor the id of an indexed object")
        read = query if isinstance(query, Query) else query_from_value(query)
        vector, modality = self.embed(read)
        return vector, modality, None

    def search_vector(self, vector: np.ndarray, modality: str, k: int = 10, exclude: int | None = None,
                      exact: bool = False) -> list[Hit]:
        """The k nearest objects in ``modality`` to an L2-normalised vector (D,); ``exclude``: a
        row to leave out (the query object itself)."""
        self._check_modality(modality)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        dim = self.vectors(modality).shape[1]
        if vector.shape != (dim,):
            raise ValueError(f"the query vector has shape {vector.shape}; {modality} vectors are ({dim},): was it "
                             "embedded in another space?")
        wanted = min(len(self.objects), k + (exclude is not None))
        if wanted == 0:
            return []
        index = exact_index(np.asarray(self.vectors(modality))) if exact else self.faiss(modality)
        scores, rows = index.search(np.ascontiguousarray(vector[None], np.float32), wanted)
        hits = []
        for score, row in zip(scores[0], rows[0]):
            if row < 0 or row == exclude:
                continue
            obj = self.objects[row]
            hits.append(Hit(len(hits) + 1, obj["id"], float(score), obj["name"], obj.get("label"), obj.get("class"),
                            obj.get("path", ""), obj.get("split")))
        return hits[:k]

    def resolve(self, query: Any, modality: str | None = None, query_modality: str | None = None
                ) -> tuple[np.ndarray, str, str]:
        """(the query's vector, the modality it is, the modality to search): see ``query``."""
        vector, asked_as, _ = self.query_vector(query, query_modality)
        target = modality or (asked_as if asked_as in self.modalities else self.modalities[0])
        self._check_modality(target)
        if asked_as != target and self.info["space"] != "shared":
            raise ValueError(f"{self.path}: indexed in the {self.info['space']} space of a {self.info['method']} run, "
                             f"where {asked_as} and {target} vectors are not comparable; search {asked_as} with "
                             f"{asked_as}, or index with a run that has a shared space (CrossPoint, Pic@Point, MIMS)")
        return vector, asked_as, target

    def query(self, query: Any, k: int = 10, modality: str | None = None, query_modality: str | None = None
              ) -> list[Hit]:
        """The k objects nearest to ``query`` (module docstring) in ``modality`` (default: the
        query's own modality when indexed, else points). ``query_modality``: which stored vector
        of an indexed object queries (default the first indexed modality); an indexed object
        finds itself first in its own modality (score 1)."""
        vector, _, target = self.resolve(query, modality, query_modality)
        return self.search_vector(vector, target, k)

    # --- measuring ----------------------------------------------------------------------------

    def evaluate(self, query_modality: str, gallery_modality: str, ks: Sequence[int] = (1, 5, 10),
                 split: str | None = None, chunk: int = 512) -> dict[str, Any]:
        """Retrieval scores from the index (``evaluate retrieval``'s definitions): every object
        (of ``split``) with a label queries with its ``query_modality`` vector, the exact ranking
        of the ``gallery_modality`` vectors of the same objects (itself left out within a
        modality) from FAISS; relevant = same class."""
        from pretext3d.eval.metrics import ranking_scores

        rows = np.array([i for i, o in enumerate(self.objects) if o.get("label") is not None
                         and (split is None or o.get("split") == split)])
        if len(rows) < 2:
            raise ValueError(f"{self.path}: evaluating needs at least 2 labelled objects{f' in {split}' if split else ''}")
        labels = np.array([self.objects[i]["label"] for i in rows])
        gallery = np.ascontiguousarray(self.vectors(gallery_modality)[rows], np.float32)
        queries = np.ascontiguousarray(self.vectors(query_modality)[rows], np.float32)
        index = exact_index(gallery)
        within = query_modality == gallery_modality
        parts, seconds = [], 0.0
        for start in range(0, len(rows), chunk):  # (chunk, N) rankings at a time bound the memory
            stop = min(start + chunk, len(rows))
            began = time.perf_counter()
            scores, ranked = index.search(queries[start:stop], len(rows))
            seconds += time.perf_counter() - began
            ranked = _ties_by_row(scores, ranked)
            own = np.arange(start, stop)[:, None]
            valid = ranked != own if within else np.ones_like(ranked, bool)
            # a query's own row sorts last and never counts: the ranking without it
            order = np.argsort(~valid, axis=1, kind="stable")
            ranked, valid = np.take_along_axis(ranked, order, 1), np.take_along_axis(valid, order, 1)
            relevant = (labels[ranked] == labels[start:stop, None]) & valid
            parts.append(ranking_scores(relevant, valid.sum(1), ks))
        result = _combined(parts)
        return {"pair": f"{query_modality}->{gallery_modality}", "objects": int(len(rows)), "mAP": result["mAP"],
                "top_k": result["top_k"], "precision_at_k": result["precision_at_k"],
                "queries": result["queries"], "queries_without_relevant": result["no_relevant"],
                "full_ranking_seconds": seconds}


def _combined(parts: list) -> dict[str, Any]:
    """Scores of query blocks -> the scores of all their queries (each block's means weighted by
    the queries it scored)."""
    aps = np.concatenate([p.per_query_ap for p in parts])
    scored = int((~np.isnan(aps)).sum())
    weights = [p.queries / scored if scored else 0.0 for p in parts]

    def mean(values: list[dict[int, float]]) -> dict[str, float]:
        return {str(k): float(sum(w * v[k] for w, v in zip(weights, values) if w)) if scored else float("nan")
                for k in values[0]}

    return {"mAP": float(np.nanmean(aps)) if scored else float("nan"), "queries": scored,
            "no_relevant": int(np.isnan(aps).sum()), "top_k": mean([p.top_k for p in parts]),
            "precision_at_k": mean([p.precision_at_k for p in parts])}


def _ties_by_row(scores: np.ndarray, ranked: np.ndarray) -> np.ndarray:
    """Order equal scores by row (``evaluate retrieval``'s rule: ties, lower index first)."""
    order = np.lexsort((ranked, -scores), axis=1)
    return np.take_along_axis(ranked, order, 1)


def open_index(path: str | Path, device: str = "auto") -> SearchIndex:
    """A finished index folder, ready for ``query``."""
    return SearchIndex(path, device)
