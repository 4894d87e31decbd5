"""``pretext3d prepare`` and ``pretext3d verify``: build and check a prepared-dataset store.

See ``store.py`` for the layout. ``prepare`` runs objects in ``workers`` processes (each with
one torch thread and its own OpenGL context), writes a record line per object as it finishes,
skips and reports bad objects, and rewrites index.json at the end.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import time
import traceback
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

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
    read_json,
    read_store_settings,
    records_path,
    store_file,
    write_index,
    write_store_header,
)
from pretext3d.utils.io import folder_bytes, naming
from pretext3d.utils.lock import folder_lock
from pretext3d.utils.processes import die_with_parent
from pretext3d.utils.progress import progress_bar

__all__ = ["PrepareSummary", "parse_shard", "prepare", "verify", "is_fatal_os_error"]


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
    without_renders: list[str] = field(default_factory=list)  # objects left out: no 3D-R2N2 renders

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


def _init_worker(source: Source, settings: StoreSettings, root: Path, threads: int, parent: int | None = None) -> None:
    if parent is not None:  # a pool worker: a killed `prepare` must not leave it running (armed before
        die_with_parent(parent)  # the slow torch import, so a parent killed meanwhile is noticed sooner)
    import torch

    torch.set_num_threads(threads)
    _worker.update(source=source, settings=settings, root=root)


def _executor(workers: int, initargs: tuple) -> ProcessPoolExecutor:
    """Worker processes started clean: plain fork would copy this process's OpenGL (llvmpipe)
    and numba thread pools, whose locks deadlock a forked child. Spawn starts them from a fresh
    interpreter as children of this process, so that they die with it (``die_with_parent``; a
    forkserver between them outlived a killed parent, with its workers); the source travels as
    its path (see Source)."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(*initargs, os.getpid()))


_DIED = "its worker process died while preparing it, twice (killed, or out of memory?)"


def _run_in_processes(todo: list[SourceObject], workers: int, initargs: tuple) -> Iterator[ObjectRecord]:
    """Records as objects finish, at most 2 per worker in flight. When a worker dies (the OS
    kills it for memory, say) the pool cannot tell which object killed it: the objects that
    were in flight are retried one at a time in a pool of their own, so only the culprit is
    reported failed, and a fresh pool goes on with the rest."""
    pending = deque(todo)
    while pending:
        executor = _executor(workers, initargs)
        in_flight: dict[Future, SourceObject] = {}
        suspects: list[SourceObject] = []
        broken = False
        try:
            while (pending or in_flight) and not suspects:
                while pending and len(in_flight) < 2 * workers and not broken:
                    obj = pending.popleft()
                    try:
                        in_flight[executor.submit(_run_one, obj)] = obj
                    except BrokenProcessPool:  # a worker died after the last results came back
                        pending.appendleft(obj)
                        broken = True
                if not in_flight:
                    break  # nothing left to blame in this pool: go on in a fresh one
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    obj = in_flight.pop(future)
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        suspects.append(obj)
            suspects.extend(in_flight.values() if suspects else [])
        finally:
            executor.shutdown(wait=not suspects, cancel_futures=True)
        for obj in suspects:
            yield _run_alone(obj, initargs)


def _run_alone(obj: SourceObject, initargs: tuple) -> ObjectRecord:
    executor = _executor(1, initargs)
    try:
        return executor.submit(_run_one, obj).result()
    except BrokenProcessPool:
        return ObjectRecord(obj.key, "failed", reason=_DIED)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


# the machine, not the object: a full or read-only disk fails every object alike
_FATAL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def is_fatal_os_error(err: BaseException, store: Path) -> bool:
    """Whether ``err`` stops the whole job instead of failing one object: a full or read-only
    disk, or any OSError on a path inside the store being written."""
    if not isinstance(err, OSError):
        return False
    if err.errno in _FATAL_ERRNOS:
        return True
    name = err.filename if isinstance(err.filename, str) else None
    return name is not None and Path(name).resolve().is_relative_to(store.resolve())


def _run_one(obj: SourceObject) -> ObjectRecord:
    start = time.perf_counter()
    try:
        return prepare_object(_worker["source"], obj, _worker["settings"], _worker["root"])
    except OSError as err:
        if is_fatal_os_error(err, _worker["root"]):
            raise  # stops the job with one clear message; the object is not recorded, a re-run redoes it
        return ObjectRecord(obj.key, "failed", reason=f"{type(err).__name__}: {err}", seconds=time.perf_counter() - start)
    except DataFormatError as err:
        return ObjectRecord(obj.key, "failed", reason=str(err), seconds=time.perf_counter() - start)
    except Exception as err:  # one broken object must not stop the batch: report it and go on
        if os.environ.get("PRETEXT3D_DEBUG"):
            traceback.print_exc()
        return ObjectRecord(obj.key, "failed", reason=f"{type(err).__name__}: {err}",
                            seconds=time.perf_counter() - start)


def prepare(
    source_path: str | Path | Source,
    out: str | Path,
    settings: StoreSettings | None = None,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    fmt: str | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> PrepareSummary:
    """Prepare every object of ``source_path`` in this shard that ``out`` does not hold yet.

    settings.up may be "auto" (the source's own up axis); ``limit`` takes only the first objects
    of the manifest (trials; the manifest and index still list them all).
    """
    start = time.perf_counter()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    source = source_path if isinstance(source_path, Source) else open_source(source_path, fmt)
    settings = settings or StoreSettings()
    if settings.up == "auto":
        settings = replace(settings, up=source.default_up())
    if source.kind == "points":
        stored = min(d.num_points for d in source.splits.values())
        if stored < settings.points:
            raise DataFormatError(source.path, f"has {stored} points per cloud, fewer than the {settings.points} asked for")
    objects = source.objects()
    without_renders: list[str] = []
    if settings.renders:
        objects, without_renders = _with_renders(source, settings, objects)
    # one process per shard of a store: shards may run side by side, the same shard twice may not
    with folder_lock(root, f"prepare of shard {shard[0]}/{shard[1]}", f".lock-{shard[0]}-of-{shard[1]}"):
        summary = _prepare_shard(source, root, settings, objects, shard, workers, limit, progress, start)
    summary.without_renders = without_renders
    return summary


def _with_renders(source: Source, settings: StoreSettings, objects: list[SourceObject]
                  ) -> tuple[list[SourceObject], list[str]]:
    """The objects that have a 3D-R2N2 rendering folder, and the names of those without (the
    renders cover 13 of ShapeNet's 55 categories: the others are left out, not failed)."""
    from pretext3d.data.r2n2 import rendering_folder

    renders = Path(settings.renders)
    if not renders.is_dir():
        raise DataFormatError(renders, "is not a folder (expected ShapeNetRendering/<synset>/<id>/rendering/)")
    if source.kind != "mesh":
        raise DataFormatError(source.path, "holds point clouds: the 3D-R2N2 cameras are in the ShapeNetCore v1 "
                                           "meshes' frame, so --renders needs the ShapeNetCore meshes")
    kept = [o for o in objects if rendering_folder(renders, o.name).is_dir()]
    if not kept:
        raise DataFormatError(renders, f"has no rendering folder for any object of {source.path} (expected "
                                       f"<synset>/<id>/rendering/ for objects named like {objects[0].name!r})")
    left_out = sorted({o.name for o in objects} - {o.name for o in kept})
    return kept, left_out


def _prepare_shard(source: Source, root: Path, settings: StoreSettings, objects: list[SourceObject],
                   shard: tuple[int, int], workers: int, limit: int | None, progress: bool, start: float) -> PrepareSummary:
    write_store_header(root, source, settings, objects)
    taken = objects[:limit] if limit else objects
    mine = [o for i, o in enumerate(taken) if i % shard[1] == shard[0]]
    todo = [o for o in mine if not object_path(root, o.key).exists()]
    records_file = records_path(root, shard)
    records_file.parent.mkdir(parents=True, exist_ok=True)
    done, failed, views = 0, [], 0
    workers = max(1, min(workers, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    if workers == 1:
        _init_worker(source, settings, root, threads=max(1, min(threads, 4)))
        results: Iterator[ObjectRecord] = map(_run_one, todo)
    else:
        results = _run_in_processes(todo, workers, (source, settings, root, 1))
    with open(records_file, "a") as log:
        for record in progress_bar(results, total=len(todo), desc="prepare", unit="obj", enabled=progress):
            try:
                log.write(json.dumps({**asdict(record), "time": time.time()}) + "\n")
                log.flush()
            except OSError as err:  # a torn last line is ignored by read_records
                raise naming(err, records_file) from None
            if record.status == "done":
                done += 1
                views += record.present.get("views", 0)
            else:
                failed.append((record.key, record.reason))
    index = write_index(root)
    return PrepareSummary(len(objects), len(mine), len(mine) - len(todo), done, failed,
                          time.perf_counter() - start, views, folder_bytes(root), index["counts"])


# --- verify -----------------------------------------------------------------------------------


def _check_object(path: Path, entry: dict, settings: StoreSettings, mesh_store: bool) -> list[str]:
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
    if mesh_store and "mesh_features" not in arrays:
        problems.append("lacks the mesh features of a mesh store")
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
    With ``reindex`` a stale index.json is rewritten when the objects have no problems."""
    root = Path(out)
    settings, config = read_store_settings(root)
    fresh = build_index(root)
    problems: list[tuple[str, str]] = [(d["key"], f"{d['file']} {d['reason']}") for d in fresh["damaged"]]
    for entry in progress_bar(fresh["objects"], desc="verify", unit="obj", enabled=progress):
        file_problems = _check_object(store_file(root, entry["file"]), entry, settings, config.get("kind") == "mesh")
        problems.extend((entry["key"], f"{entry['file']} {p}") for p in file_problems)
    index_file = root / "index.json"
    on_disk = read_json(index_file, "index") if index_file.exists() else None
    for entry in (on_disk or {}).get("objects", []):  # what readers would open: never outside objects/
        try:
            store_file(root, entry.get("file", ""))
        except DataFormatError as err:
            problems.append((str(entry.get("key")), str(err)))
    stale = on_disk != fresh
    if stale and reindex and not problems:
        write_index(root)
    temporary = [str(p.relative_to(root)) for p in root.rglob("*.tmp")]
    return {"checked": len(fresh["objects"]), "problems": problems, "index_stale": stale and not (reindex and not problems),
            "counts": fresh["counts"], "failed": fresh["failed"], "temporary_files": temporary}
