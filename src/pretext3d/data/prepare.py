"""``pretext3d prepare`` and ``pretext3d verify``: build and check a prepared-dataset store.

See ``store.py`` for the layout. ``prepare`` runs objects in ``workers`` processes (each with
one torch thread and its own OpenGL context), writes a record line per object as it finishes,
skips and reports bad objects, and rewrites index.json at the end.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pretext3d.data.errors import DataFormatError
from pretext3d.data.sources import Source, SourceObject, open_source
from pretext3d.data.store import (
    ObjectRecord,
    StoreSettings,
    build_index,
    decode_images,
    object_meta,
    object_path,
    prepare_object,
    read_object,
    read_store_settings,
    records_path,
    write_index,
    write_store_header,
)
from pretext3d.utils.progress import progress_bar

__all__ = ["PrepareSummary", "parse_shard", "prepare", "verify"]


@dataclass
class PrepareSummary:
    total: int
    in_shard: int
    skipped: int
    done: int
    failed: list[tuple[str, str]]
    seconds: float
    views: int
    store_bytes: int
    counts: dict

    @property
    def views_per_second(self) -> float:
        return self.views / self.seconds if self.seconds > 0 else 0.0


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        index, count = (int(t) for t in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return index, count


# Worker state: set once per process (inherited through fork, or by the initializer).
_worker: dict = {}


def _init_worker(source: Source, settings: StoreSettings, root: Path, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _worker.update(source=source, settings=settings, root=root)


def _worker_pool(workers: int, initargs: tuple):
    """Worker processes started clean: plain fork would copy this process's OpenGL (llvmpipe)
    and numba thread pools, whose locks deadlock a forked child. The forkserver (Linux) or
    spawn starts them from a fresh interpreter; the source travels as its path (see Source)."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["pretext3d.data.prepare", "pretext3d.render"])
    return context.Pool(workers, initializer=_init_worker, initargs=initargs)


def _run_one(obj: SourceObject) -> ObjectRecord:
    start = time.perf_counter()
    try:
        return prepare_object(_worker["source"], obj, _worker["settings"], _worker["root"])
    except DataFormatError as err:
        return ObjectRecord(obj.key, "failed", reason=str(err), seconds=time.perf_counter() - start)
    except Exception as err:  # one broken object must not stop the batch: report it and go on
        if os.environ.get("PRETEXT3D_DEBUG"):
            traceback.print_exc()
        return ObjectRecord(obj.key, "failed", reason=f"{type(err).__name__}: {err}",
                            seconds=time.perf_counter() - start)


def _folder_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def prepare(
    source_path: str | Path,
    out: str | Path,
    settings: StoreSettings | None = None,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    fmt: str | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> PrepareSummary:
    """Prepare every object of ``source_path`` in this shard that ``out`` does not hold yet.

    settings.up may be "auto" (the source's own up axis); ``limit`` caps the objects taken
    (first ones of the manifest, for trials).
    """
    start = time.perf_counter()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    source = open_source(source_path, fmt)
    settings = settings or StoreSettings()
    if settings.up == "auto":
        settings = replace(settings, up=source.default_up())
    stored = min(d.num_points for d in source.splits.values())
    if source.kind == "points" and stored < settings.points:
        raise DataFormatError(source.path, f"has {stored} points per cloud, fewer than the {settings.points} asked for")
    objects = source.objects()[:limit] if limit else source.objects()
    write_store_header(root, source, settings, objects)
    mine = [o for i, o in enumerate(objects) if i % shard[1] == shard[0]]
    todo = [o for o in mine if not object_path(root, o.key).exists()]
    records_file = records_path(root, shard)
    records_file.parent.mkdir(parents=True, exist_ok=True)
    done, failed, views = 0, [], 0
    workers = max(1, min(workers, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    if workers == 1:
        _init_worker(source, settings, root, threads=max(1, min(threads, 4)))
        results = map(_run_one, todo)
        pool = None
    else:
        pool = _worker_pool(workers, (source, settings, root, 1))
        results = pool.imap_unordered(_run_one, todo, chunksize=1)
    try:
        with open(records_file, "a") as log:
            for record in progress_bar(results, total=len(todo), desc="prepare", unit="obj", enabled=progress):
                log.write(json.dumps({**asdict(record), "time": time.time()}) + "\n")
                log.flush()
                if record.status == "done":
                    done += 1
                    views += record.present.get("views", 0)
                else:
                    failed.append((record.key, record.reason))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    index = write_index(root)
    return PrepareSummary(len(objects), len(mine), len(mine) - len(todo), done, failed,
                          time.perf_counter() - start, views, _folder_bytes(root), index["counts"])


# --- verify -----------------------------------------------------------------------------------


def _check_object(path: Path, entry: dict, settings: StoreSettings) -> list[str]:
    """Problems with one object file (empty when it is sound)."""
    try:
        arrays = read_object(path)
    except Exception as err:  # zip/npy errors of a damaged file come in many types
        return [f"cannot be read ({type(err).__name__}: {err})"]
    problems = []
    for name in ("points", "normals", "view", "proj", "images_png", "image_offsets", "meta"):
        if name not in arrays:
            problems.append(f"lacks {name!r}")
    if problems:
        return problems
    if arrays["points"].shape != (settings.points, 3) or not np.isfinite(arrays["points"]).all():
        problems.append(f"points are {arrays['points'].shape}, not finite ({settings.points}, 3)")
    if arrays["normals"].shape != arrays["points"].shape or not np.isfinite(arrays["normals"]).all():
        problems.append("normals do not match the points or are not finite")
    n_views = len(arrays["image_offsets"]) - 1
    if arrays["view"].shape != (n_views, 4, 4) or arrays["proj"].shape != (n_views, 4, 4):
        problems.append(f"{n_views} images but matrices {arrays['view'].shape} / {arrays['proj'].shape}")
    elif not (np.isfinite(arrays["view"]).all() and np.isfinite(arrays["proj"]).all()):
        problems.append("camera matrices are not finite")
    if n_views != settings.views:
        problems.append(f"has {n_views} views, the store has {settings.views}")
    try:
        images, masks = decode_images(arrays["images_png"], arrays["image_offsets"])
        if images.shape[1:3] != (settings.image_size, settings.image_size):
            problems.append(f"images are {images.shape[1:3]}, not {settings.image_size}")
        empty = int((~masks.reshape(len(masks), -1).any(1)).sum())
        if empty:
            problems.append(f"{empty} view(s) show nothing")
    except Exception as err:
        problems.append(f"images do not decode ({type(err).__name__}: {err})")
    if "mesh_features" in arrays:
        features, neighbours = arrays["mesh_features"], arrays.get("mesh_neighbours")
        if features.shape != (settings.faces, 15) or not np.isfinite(features).all():
            problems.append(f"mesh features are {features.shape}, not finite ({settings.faces}, 15)")
        if neighbours is None or neighbours.shape != (settings.faces, 3) or \
                neighbours.min() < 0 or neighbours.max() >= settings.faces:
            problems.append("mesh neighbours are missing or out of range")
    try:
        meta = object_meta(arrays)
        if meta.get("key") != entry["key"] or meta.get("label") != entry["label"]:
            problems.append(f"holds {meta.get('key')!r} (label {meta.get('label')}), not {entry['key']!r}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        problems.append("its meta record is not JSON")
    return problems


def verify(out: str | Path, reindex: bool = False, progress: bool = True) -> dict:
    """Check every object file of a store, and that index.json matches the files.

    Returns {"checked", "problems": [(key, problem)], "index_stale", "counts", "temporary_files"}.
    With ``reindex`` a stale index.json is rewritten (after the checks)."""
    root = Path(out)
    settings, _ = read_store_settings(root)
    fresh = build_index(root)
    problems: list[tuple[str, str]] = []
    for entry in progress_bar(fresh["objects"], desc="verify", unit="obj", enabled=progress):
        problems.extend((entry["key"], p) for p in _check_object(root / entry["file"], entry, settings))
    index_file = root / "index.json"
    on_disk = json.loads(index_file.read_text()) if index_file.exists() else None
    stale = on_disk is None or [o["key"] for o in on_disk.get("objects", [])] != [o["key"] for o in fresh["objects"]]
    if stale and reindex:
        write_index(root)
    temporary = [str(p.relative_to(root)) for p in root.rglob("*.tmp")]
    return {"checked": len(fresh["objects"]), "problems": problems, "index_stale": stale and not reindex,
            "counts": fresh["counts"], "failed": fresh["failed"], "temporary_files": temporary}
