"""``pretext3d index``: a collection of 3D objects -> a searchable index in a run's learned space.

Layout of ``INDEX``::

    build.json              what every part of the index was made with (run, weights, space, ...)
    hashes.json             the content digest of every object of the source (``Source.digest``)
    store/                  the objects prepared as ``pretext3d prepare`` prepares them (absent
                            when SOURCE is itself a prepared store: its objects are read there)
    chunks/*.npz            embeddings and thumbnails of finished objects, a file per batch
    index.json              the finished index: objects, files of the current generation, counts
    <generation>/           vectors per modality (L2-normalised, float32 .npy), their FAISS
                            indexes, thumbnails, the objects' metadata

How work survives and repeats: objects are prepared by ``prepare`` (one file per object, written
atomically, skipped when present); embeddings are written a batch at a time under a temporary
name and renamed, keyed by (object key, content digest). A re-run therefore prepares and embeds
only objects that are new or whose digest changed (their stale prepared file is deleted first),
and a kill loses at most the batch in flight. The finished index is written as a new generation
folder, then ``index.json`` is renamed over the old one (readers see the old or the new index,
never a mix), then the old generation is deleted. Shards (``--shard I/N``) split the objects by
manifest position like ``prepare``; ``merge`` gathers their chunks (and prepared objects) and
finishes the index.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pretext3d.data.datasets import is_store
from pretext3d.data.errors import DataFormatError
from pretext3d.data.prepare import prepare
from pretext3d.data.sources import Source, open_source
from pretext3d.data.store import (
    StoreSettings, decode_images, object_path, read_index, read_json, read_object, read_store_settings, store_file,
)
from pretext3d.embedding import Embedder
from pretext3d.eval.modalities import embed_store, pool_views
from pretext3d.search.vectors import build_faiss, write_faiss
from pretext3d.utils.io import atomic_write_bytes, atomic_write_json, file_digest
from pretext3d.utils.progress import progress_bar

__all__ = ["INDEX_FORMAT", "IndexOptions", "IndexSummary", "build_search_index", "merge_indexes", "finish_index",
           "THUMBNAIL_SIZE"]

INDEX_FORMAT = "pretext3d-index/1"
THUMBNAIL_SIZE = 128  # the gallery's thumbnails: the first view, at most this many pixels a side
DEFAULT_VIEWS = 12  # views rendered per object when the run's training store does not say


@dataclass
class IndexOptions:
    """How ``build_search_index`` indexes a source.

    modalities: which of the run's modalities to embed (None: every one the run has and the
    source allows); space: "auto" | "shared" | "encoder"; views / render_size: views rendered per
    object and their side in pixels (default: those of the store the run trained on); pool:
    how an object's views make its image vector ("max" or "mean", as ``evaluate retrieval``
    pools them); splits: the source's splits to index (None: all); approximate: "auto" (an
    approximate index above ``APPROXIMATE_ABOVE`` objects), "always" or "never"."""

    modalities: tuple[str, ...] | None = None
    space: str = "auto"
    views: int | None = None
    render_size: int | None = None
    pool: str = "max"
    splits: tuple[str, ...] | None = None
    workers: int = 1
    shard: tuple[int, int] = (0, 1)
    batch_size: int = 32
    device: str = "auto"
    approximate: str = "auto"
    progress: bool = True


@dataclass
class IndexSummary:
    objects: int  # in the source (the chosen splits)
    embedded_now: int
    reused: int
    failed: list[tuple[str, str]]
    seconds: float
    finished: bool  # index.json written (False for one shard of several: run merge)
    counts: dict = field(default_factory=dict)
    prepare_seconds: float = 0.0
    embed_seconds: float = 0.0


# --- the build record -------------------------------------------------------------------------


def _build_record(embedder: Embedder, source: str, store: Path, own_store: bool, modalities: tuple[str, ...],
                  options: IndexOptions) -> dict[str, Any]:
    """What the index's vectors depend on: a re-run (or a merged shard) must agree on all of it."""
    return {"format": INDEX_FORMAT, "run": str(Path(embedder.run).resolve()), "weights": embedder.encoders.weights_id,
            "method": embedder.encoders.method, "space": embedder.space, "modalities": list(modalities),
            "num_points": embedder.num_points, "image_size": embedder.image_size, "pool": options.pool,
            "source": source, "splits": list(options.splits) if options.splits else None,
            "store": "store" if own_store else str(Path(store).resolve()), "approximate": options.approximate}


_MUST_AGREE = ("weights", "method", "space", "modalities", "num_points", "image_size", "pool", "source", "splits")


def _check_same_build(out: Path, record: dict[str, Any], existing: dict[str, Any]) -> None:
    changed = [f"{k}: {existing.get(k)!r} -> {record.get(k)!r}" for k in _MUST_AGREE if existing.get(k) != record.get(k)]
    if changed:
        raise DataFormatError(out, "was indexed with other settings or weights (" + "; ".join(changed)
                              + "); index into a new --out folder, or delete this one")


# --- sources ----------------------------------------------------------------------------------


def _store_settings(embedder: Embedder, options: IndexOptions) -> StoreSettings:
    """The prepared form of the objects: the run's point count and faces, the views and
    renderer of the store the run trained on (overridable), rendered at least at the run's
    image size."""
    trained = embedder.training_settings
    base = trained or StoreSettings(views=DEFAULT_VIEWS)
    size = options.render_size or max(base.image_size if trained else 0, embedder.image_size)
    return replace(base, points=embedder.num_points, views=options.views or base.views, image_size=size,
                   faces=embedder.faces, up="auto", renders=None, depth=False)


def _source_digests(source: Source, progress: bool) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Every object's content digest; objects that cannot be read are reported, not indexed."""
    digests, failed = {}, []
    for obj in progress_bar(source.objects(), desc="content digests", unit="obj", enabled=progress):
        try:
            digests[obj.key] = source.digest(obj)
        except (DataFormatError, OSError) as err:
            failed.append((obj.key, str(err)))
    return digests, failed


def _drop_stale_prepared(store: Path, digests: dict[str, str], recorded: dict[str, str]) -> int:
    """Delete the prepared files of objects whose content changed since they were prepared, and
    of objects no longer in the source; returns how many were deleted."""
    dropped = 0
    for key, digest in recorded.items():
        if digests.get(key) != digest:
            file = object_path(store, key)
            if file.exists():
                file.unlink()
                dropped += 1
    return dropped


def _prepare_own_store(source: Source, out: Path, embedder: Embedder, options: IndexOptions
                       ) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Digest every object, forget what changed, prepare what is missing (this shard)."""
    digests, failed = _source_digests(source, options.progress)
    hashes_file = out / "hashes.json"
    recorded = read_json(hashes_file, "digests") if hashes_file.exists() else {}
    store = out / "store"
    _drop_stale_prepared(store, digests, recorded)
    # recorded before preparing: a kill during prepare leaves only files that match these digests
    atomic_write_json(hashes_file, digests)
    prepared = prepare(source, store, _store_settings(embedder, options), workers=options.workers,
                       shard=options.shard, progress=options.progress)
    failed += [(k, r) for k, r in prepared.failed if k in digests]
    return digests, failed


def _store_digests(store: Path, entries: list[dict], progress: bool) -> dict[str, str]:
    """A prepared store given as SOURCE: each object's digest is its prepared file's."""
    return {e["key"]: file_digest(store_file(store, e["file"]))
            for e in progress_bar(entries, desc="content digests", unit="obj", enabled=progress)}


# --- embedding --------------------------------------------------------------------------------


def _chunk_files(out: Path) -> list[Path]:
    """Every chunk of embeddings, oldest first (later chunks win for the same object)."""
    return sorted((out / "chunks").glob("*.npz"), key=lambda p: (p.stat().st_mtime_ns, p.name))


def read_chunks(out: Path, wanted: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """(key -> row) of every embedded object whose digest is ``wanted[key]`` (all when None):
    row = {"digest", modality vectors, "thumbnail" bytes}. A damaged chunk is skipped (its objects
    are embedded again)."""
    rows: dict[str, dict[str, Any]] = {}
    for file in _chunk_files(out):
        try:
            with np.load(file, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception:  # a chunk cut short by a full disk: its objects are simply redone
            continue
        keys, digests = arrays["keys"].tolist(), arrays["digests"].tolist()
        offsets = arrays["thumb_offsets"]
        for i, (key, digest) in enumerate(zip(keys, digests)):
            if wanted is not None and wanted.get(key) != digest:
                continue
            row = {"digest": digest, "thumbnail": arrays["thumbs"][offsets[i]:offsets[i + 1]].tobytes()}
            row.update({k[4:]: arrays[k][i] for k in arrays if k.startswith("vec_")})
            rows[key] = row
    return rows


def _embedded_keys(out: Path, wanted: dict[str, str]) -> set[str]:
    """The keys of ``wanted`` whose digest some chunk holds (reads only each chunk's keys and
    digests, not its vectors and thumbnails)."""
    found: set[str] = set()
    for file in _chunk_files(out):
        try:
            with np.load(file, allow_pickle=False) as data:
                keys, digests = data["keys"].tolist(), data["digests"].tolist()
        except Exception:  # a damaged chunk: its objects are redone (as read_chunks skips it)
            continue
        found.update(k for k, d in zip(keys, digests) if wanted.get(k) == d)
    return found


def _write_chunk(out: Path, keys: list[str], digests: list[str], vectors: dict[str, np.ndarray],
                 thumbnails: list[bytes]) -> None:
    import io

    offsets = np.cumsum([0] + [len(t) for t in thumbnails]).astype(np.int64)
    arrays = {"keys": np.array(keys), "digests": np.array(digests), "thumb_offsets": offsets,
              "thumbs": np.frombuffer(b"".join(thumbnails), np.uint8),
              **{f"vec_{m}": v.astype(np.float32) for m, v in vectors.items()}}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    name = f"{time.time_ns():020d}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
    atomic_write_bytes(out / "chunks" / name, buffer.getvalue())


def thumbnail(store: Path, entry: dict) -> bytes:
    """The object's first view, on white, at most ``THUMBNAIL_SIZE`` a side, as PNG bytes."""
    import io

    from PIL import Image

    arrays = read_object(store_file(store, entry["file"]), ("images_png", "image_offsets"))
    images, masks = decode_images(arrays["images_png"], arrays["image_offsets"], [0])
    image = images[0] if images.ndim == 4 else np.repeat(images[0][..., None], 3, axis=2)
    composed = np.where(masks[0][..., None], image, 255).astype(np.uint8)
    picture = Image.fromarray(composed)
    if max(picture.size) > THUMBNAIL_SIZE:
        picture = picture.resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _embed_missing(embedder: Embedder, store: Path, entries: list[dict], digests: dict[str, str], out: Path,
                   modalities: tuple[str, ...], options: IndexOptions) -> tuple[int, float]:
    """Embed the objects (store index entries) whose (key, digest) has no chunk yet, a chunk per
    batch; returns (objects embedded, seconds)."""
    done = _embedded_keys(out, digests)
    todo = [e for e in entries if e["key"] in digests and e["key"] not in done]
    if not todo:
        return 0, 0.0
    settings, _ = read_store_settings(store)
    views = np.arange(settings.views)
    rows_of: dict[str, int] = {}  # each object's row within its split, as the store's datasets count them
    counted: dict[str, int] = {}
    for entry in read_index(store)["objects"]:
        rows_of[entry["key"]] = counted.get(entry["split"], 0)
        counted[entry["split"]] = rows_of[entry["key"]] + 1
    batches = [todo[i:i + options.batch_size] for i in range(0, len(todo), options.batch_size)]
    start = time.perf_counter()
    bar = progress_bar(range(len(todo)), desc="embed", unit="obj", enabled=options.progress)
    ticks = iter(bar)
    for batch in batches:
        vectors: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
        order: list[dict] = []
        for split in sorted({e["split"] for e in batch}):
            part = [e for e in batch if e["split"] == split]
            embedded = embed_store(embedder.encoders, store, split, modalities, embedder.num_points,
                                   embedder.image_size, len(part), embedder.device, use_cache=False, progress=False,
                                   objects=[rows_of[e["key"]] for e in part])
            for m in modalities:
                features = embedded.features[m]
                vectors[m].append(pool_views(features, views, options.pool) if m == "image" else features)
            order += part
        _write_chunk(out, [e["key"] for e in order], [digests[e["key"]] for e in order],
                     {m: np.concatenate(v) for m, v in vectors.items()}, [thumbnail(store, e) for e in order])
        for _ in order:
            next(ticks, None)
    for _ in ticks:  # let the line progress print its last line
        pass
    return len(todo), time.perf_counter() - start


def _mine(entries: list[dict], manifest_keys: list[str], shard: tuple[int, int]) -> list[dict]:
    """The entries of shard I of N: manifest positions i % N == I (as ``prepare`` splits)."""
    if shard == (0, 1):
        return entries
    position = {key: i for i, key in enumerate(manifest_keys)}
    return [e for e in entries if position[e["key"]] % shard[1] == shard[0]]


# --- the whole job ----------------------------------------------------------------------------


def _modalities(embedder: Embedder, asked: Sequence[str] | None, mesh_source: bool) -> tuple[str, ...]:
    available = [m for m in embedder.modalities if m != "mesh" or mesh_source]
    if not asked:
        return tuple(available)
    missing = [m for m in asked if m not in available]
    if missing:
        why = "the source holds no meshes" if missing == ["mesh"] and "mesh" in embedder.modalities else \
            f"the run embeds {', '.join(embedder.modalities)}"
        raise ValueError(f"cannot index the {', '.join(missing)} modality: {why}")
    return tuple(m for m in ("points", "image", "mesh") if m in asked)


def build_search_index(source: str | Path, run: str | Path, out: str | Path, options: IndexOptions | None = None,
                       log: Callable[[str], None] = print) -> IndexSummary:
    """Index every object of ``source`` (any dataset the readers read, or a prepared store) with
    the run's encoders into ``out`` (module docstring); a re-run adds, updates and drops objects."""
    options = options or IndexOptions()
    start = time.perf_counter()
    out = Path(out)
    embedder = Embedder(run, options.space, options.device, options.batch_size)
    given_store = is_store(source)
    if given_store:
        store = Path(source)
        _, config = read_store_settings(store)
        mesh_source = config.get("kind") == "mesh"
    else:
        opened = open_source(source, only_splits=options.splits)
        store, mesh_source = out / "store", opened.kind == "mesh"
    modalities = _modalities(embedder, options.modalities, mesh_source)
    record = _build_record(embedder, str(source), store, not given_store, modalities, options)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "build.json").exists():
        _check_same_build(out, record, read_json(out / "build.json", "build record"))
    atomic_write_json(out / "build.json", record)
    prepare_start = time.perf_counter()
    if given_store:
        entries = [e for e in read_index(store)["objects"] if not options.splits or e["split"] in options.splits]
        digests, failed = _store_digests(store, entries, options.progress), []
        atomic_write_json(out / "hashes.json", digests)
        manifest_keys = [e["key"] for e in entries]
    else:
        digests, failed = _prepare_own_store(opened, out, embedder, options)
        entries = read_index(store)["objects"]
        manifest_keys = [o.key for o in opened.objects()]
    prepare_seconds = time.perf_counter() - prepare_start
    mine = _mine(entries, manifest_keys, options.shard)
    embedded, embed_seconds = _embed_missing(embedder, store, mine, digests, out, modalities, options)
    summary = IndexSummary(len(digests) + len([f for f in failed if f[0] not in digests]), embedded,
                           len([e for e in mine if e["key"] in digests]) - embedded, failed, 0.0, False,
                           prepare_seconds=prepare_seconds, embed_seconds=embed_seconds)
    if options.shard == (0, 1):
        finished = finish_index(out, failed, log=log)
        summary.finished, summary.counts = True, finished["counts"]
    summary.seconds = time.perf_counter() - start
    return summary


# --- finishing: one generation of vectors, FAISS indexes and metadata -------------------------


def _entries_of(out: Path, build: dict[str, Any]) -> tuple[Path, list[dict]]:
    store = out / "store" if build["store"] == "store" else Path(build["store"])
    splits = build.get("splits")
    return store, [e for e in read_index(store)["objects"] if not splits or e["split"] in splits]


def _object_record(entry: dict, digest: str, store: Path) -> dict[str, Any]:
    """The metadata an index shows of one object (no paths that a request could steer)."""
    origin = ""
    try:
        meta = read_object(store_file(store, entry["file"]), ("meta",))["meta"]
        origin = json.loads(meta.tobytes().decode()).get("origin", "")
    except Exception:  # the origin is a courtesy: a damaged file is verify's to report
        pass
    return {"id": entry["key"], "name": entry.get("name", entry["key"]), "split": entry.get("split"),
            "label": entry.get("label"), "class": entry.get("class"), "path": origin, "digest": digest,
            "views": entry.get("views")}


def finish_index(out: str | Path, failed: Sequence[tuple[str, str]] = (), log: Callable[[str], None] = print,
                 progress: bool = True) -> dict[str, Any]:
    """Gather every chunk that matches the current digests into a new generation (vectors,
    FAISS indexes, thumbnails, metadata) and publish it by renaming ``index.json``; the old
    generation and the superseded chunks are deleted afterwards."""
    out = Path(out)
    build = read_json(out / "build.json", "build record", ("format", "modalities"))
    digests = read_json(out / "hashes.json", "digests")
    store, entries = _entries_of(out, build)
    rows = read_chunks(out, digests)
    kept = [e for e in entries if e["key"] in rows]
    missing = [e["key"] for e in entries if e["key"] not in rows and e["key"] in digests]
    generation = f"gen-{time.time_ns():020d}"
    folder = out / generation
    folder.mkdir()
    objects = [_object_record(e, digests[e["key"]], store) for e in kept]
    files: dict[str, Any] = {"objects": f"{generation}/objects.json", "thumbnails": f"{generation}/thumbnails.npz",
                             "vectors": {}, "faiss": {}}
    approximate: dict[str, Any] = {}
    dims: dict[str, int] = {}
    for m in build["modalities"]:
        raw = np.stack([rows[e["key"]][m] for e in kept]).astype(np.float32) if kept else np.zeros((0, 1), np.float32)
        vectors = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
        np.save(folder / f"vectors-{m}.npy", vectors)
        dims[m] = int(vectors.shape[1])
        built = build_faiss(vectors, build.get("approximate", "auto"))
        write_faiss(built.index, folder / f"faiss-{m}.index")
        files["vectors"][m] = f"{generation}/vectors-{m}.npy"
        files["faiss"][m] = f"{generation}/faiss-{m}.index"
        approximate[m] = built.describe()
    thumbs = [rows[e["key"]]["thumbnail"] for e in kept]
    np.savez(folder / "thumbnails.npz", data=np.frombuffer(b"".join(thumbs), np.uint8),
             offsets=np.cumsum([0] + [len(t) for t in thumbs]).astype(np.int64))
    atomic_write_json(folder / "objects.json", {"objects": objects})
    _fsync_folder(folder)
    counts = {"indexed": len(kept), "missing": len(missing), "failed": len(failed)}
    previous = read_json(out / "index.json", "index") if (out / "index.json").exists() else None
    index = {**{k: build[k] for k in ("format", "run", "weights", "method", "space", "modalities", "num_points",
                                       "image_size", "pool", "source", "splits", "store")},
             "dims": dims,
             "metric": "cosine similarity (inner product of L2-normalised vectors)",
             "search": approximate, "generation": generation, "files": files, "counts": counts,
             "failed": [{"id": k, "reason": r} for k, r in failed], "missing": missing[:100],
             "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(out / "index.json", index)
    if previous and previous.get("generation") and previous["generation"] != generation:
        shutil.rmtree(out / previous["generation"], ignore_errors=True)
    _compact_chunks(out, rows, kept, digests)
    if missing:
        log(f"{out}: {len(missing)} object(s) not embedded yet (another shard's, or interrupted): "
            "run the index again, or merge the shards")
    return index


def _compact_chunks(out: Path, rows: dict[str, dict], kept: list[dict], digests: dict[str, str]) -> None:
    """Replace every chunk by one holding the current rows (written before the old are deleted)."""
    old = _chunk_files(out)
    if len(old) <= 1 and all(k in digests for k in rows):
        return
    if kept:
        modalities = [k for k in rows[kept[0]["key"]] if k not in ("digest", "thumbnail")]
        _write_chunk(out, [e["key"] for e in kept], [digests[e["key"]] for e in kept],
                     {m: np.stack([rows[e["key"]][m] for e in kept]) for m in modalities},
                     [rows[e["key"]]["thumbnail"] for e in kept])
    for file in old:
        file.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Flush a generation's files to disk before index.json names them."""
    for file in folder.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


# --- shards -----------------------------------------------------------------------------------


def merge_indexes(out: str | Path, others: Sequence[str | Path] = (), log: Callable[[str], None] = print,
                  progress: bool = True) -> dict[str, Any]:
    """Finish ``out`` from its own chunks and those of ``others`` (shards indexed on other
    machines into their own folders): their chunks and prepared objects are copied in (what
    ``out`` already has is kept), then ``finish_index``."""
    out = Path(out)
    build = read_json(out / "build.json", "build record", ("format", "modalities"))
    for other in map(Path, others):
        theirs = read_json(other / "build.json", "build record", ("format", "modalities"))
        _check_same_build(other, build, theirs)
        (out / "chunks").mkdir(exist_ok=True)
        for chunk in _chunk_files(other):
            if not (out / "chunks" / chunk.name).exists():
                shutil.copy2(chunk, out / "chunks" / chunk.name)
        if build["store"] == "store" and (other / "store" / "objects").is_dir():
            for file in (other / "store" / "objects").rglob("*.npz"):
                target = out / "store" / file.relative_to(other / "store")
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, target)
    if build["store"] == "store":
        from pretext3d.data.store import write_index

        write_index(out / "store")
    return finish_index(out, log=log, progress=progress)
