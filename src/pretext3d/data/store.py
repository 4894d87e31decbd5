"""The prepared-dataset store: one folder of multimodal objects, built by ``pretext3d prepare``.

Layout of ``DIR``::

    store.json                 settings (points, views, layout, image size, faces, ...) and classes
    manifest.json              every object of the source: key, name, class, label, split
    objects/<split>/<name>.npz one file per finished object, name percent-encoded (``prepare_object``)
    records/<shard>.<host>.<pid>.jsonl   one line per object a process finished or failed
    index.json                 the objects present (and what each holds) and the failures

Work is split without coordination: shard I of N takes the objects at positions
``i % N == I`` of the manifest (which every run computes identically), and a process skips
every object whose file exists. Object files and the JSON files are written under a
temporary name and renamed, so killing a run loses at most the objects in flight; a re-run
(or another shard) finishes the rest. Every run ends by rewriting ``index.json`` from the
manifest, the files present and the records; ``pretext3d verify`` checks all of it.

One object file (``numpy.savez``, read with ``allow_pickle=False``) holds:
points (P, 3) float32, normals (P, 3) float32 (``normals_estimated`` when the source had
none), view/proj (V, 4, 4) float32, the V images as RGBA PNGs (alpha = mask) concatenated in
``images_png`` with ``image_offsets`` (V + 1,), optionally depth (V, H, W) float16, and for
meshes MeshNet's ``mesh_features`` (F, 15) float32 and ``mesh_neighbours`` (F, 3) int32.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np

from pretext3d.data.errors import DataFormatError
from pretext3d.data.meshes import Mesh, normalize_mesh
from pretext3d.data.meshnet import mesh_face_features
from pretext3d.data.pointclouds import item_seed, select_points
from pretext3d.data.sources import LoadedObject, Source, SourceObject
from pretext3d.geometry.cameras import Cameras, make_cameras
from pretext3d.geometry.sampling import mesh_to_points
from pretext3d.geometry.transforms import normalize_unit_sphere
from pretext3d.utils.io import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from pretext3d.render.shading import Views

__all__ = [
    "store_file",
    "STORE_FORMAT",
    "normalize_object",
    "render_views",
    "StoreSettings",
    "build_index",
    "decode_images",
    "encode_images",
    "fps_indices",
    "surface_points",
    "object_path",
    "prepare_object",
    "read_object",
    "read_store_settings",
]

STORE_FORMAT = "pretext3d-store/1"


@dataclass(frozen=True)
class StoreSettings:
    """What ``prepare`` makes of every object; a store keeps one set of settings."""

    points: int = 2048
    views: int = 20
    layout: str = "dodecahedron"
    image_size: int = 224
    faces: int = 1024
    seed: int = 0
    up: str = "auto"  # resolved to the source's up axis by prepare
    renderer: str = "auto"
    depth: bool = False
    grayscale: bool = False
    camera_distance: float = 2.5
    renders: str | None = None  # a 3D-R2N2 ShapeNetRendering folder: its images and cameras instead of rendering

    def cameras(self, key: str) -> Cameras:
        """This object's cameras (random layouts are seeded by the object's key)."""
        return make_cameras(self.layout, self.views, self.camera_distance, self.up, item_seed(self.seed, key))


@dataclass
class ObjectRecord:
    """One line of a records file: what happened to one object."""

    key: str
    status: str  # "done" | "failed"
    reason: str = ""
    seconds: float = 0.0
    present: dict = field(default_factory=dict)


def object_path(root: Path, key: str) -> Path:
    """objects/<split>/<name>.npz with the name percent-encoded ('chair/1a2b' -> 'chair%2F1a2b'),
    so that distinct keys never share a file (and no key reaches outside objects/)."""
    split, _, name = key.partition("/")
    if split in ("", ".", "..") or not name:
        raise DataFormatError(root / "manifest.json", f"lists the object key {key!r}, not <split>/<name>")
    def encoded(part: str) -> str:  # a name that is not UTF-8 keeps its bytes (surrogate escapes)
        return quote(part.encode("utf-8", "surrogateescape"), safe="")

    return root / "objects" / encoded(split) / f"{encoded(name)}.npz"


def store_file(root: Path, relative: str) -> Path:
    """The object file an index entry names, which must lie inside the store's objects/ folder
    (no absolute path, no '..', no symlink out): a damaged or edited index cannot make a reader
    open anything else."""
    candidate = Path(str(relative))
    objects = (root / "objects").resolve()
    inside = (not candidate.is_absolute() and ".." not in candidate.parts and candidate.parts[:1] == ("objects",)
              and (root / candidate).resolve().is_relative_to(objects))
    if not inside:
        raise DataFormatError(root / "index.json", f"names the file {str(relative)!r}, which is not inside the store's "
                              "objects/ folder (a damaged or edited index: run `pretext3d verify --reindex`)")
    return root / candidate


# --- images ----------------------------------------------------------------------------------


def encode_images(images: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """images (V, H, W, 3) or (V, H, W) uint8, mask (V, H, W) -> PNG bytes (concatenated, uint8)
    and offsets (V + 1,): view v is ``data[offsets[v]:offsets[v + 1]]``, RGBA or LA (alpha = mask)."""
    from PIL import Image

    chunks, offsets = [], [0]
    for image, alpha in zip(images, mask):
        alpha = alpha.astype(np.uint8) * 255
        pixels = np.dstack([image, alpha])
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGBA" if image.ndim == 3 else "LA").save(buffer, format="PNG", compress_level=6)
        chunks.append(np.frombuffer(buffer.getvalue(), np.uint8))
        offsets.append(offsets[-1] + len(chunks[-1]))
    return np.concatenate(chunks), np.asarray(offsets, np.int64)


def decode_images(data: np.ndarray, offsets: np.ndarray, which: list[int] | np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The chosen views (all by default): images (k, H, W, C) uint8 and masks (k, H, W) bool."""
    from PIL import Image

    which = range(len(offsets) - 1) if which is None else which
    images, masks = [], []
    for v in which:
        pixels = np.asarray(Image.open(io.BytesIO(data[offsets[v]:offsets[v + 1]].tobytes())))
        images.append(pixels[..., :-1] if pixels.shape[-1] == 4 else pixels[..., 0])
        masks.append(pixels[..., -1] > 127)
    return np.stack(images), np.stack(masks)


# --- one object ------------------------------------------------------------------------------


def normalize_object(loaded: LoadedObject) -> LoadedObject:
    """The object in the unit sphere (meshes: ``normalize_mesh``; clouds: centroid and farthest
    point), clouds with normals (PCA-estimated when the source has none: ``estimated_normals``)."""
    from pretext3d.render.splat import estimate_normals

    if loaded.mesh is not None:
        mesh, centre, scale = normalize_mesh(loaded.mesh.validate(loaded.origin))
        return LoadedObject(mesh=mesh, origin=loaded.origin, centre=centre, scale=scale)
    cloud = normalize_unit_sphere(np.asarray(loaded.points, np.float64))
    normals = estimate_normals(cloud) if loaded.normals is None else np.asarray(loaded.normals, np.float64)
    return LoadedObject(points=cloud, normals=normals, origin=loaded.origin, estimated_normals=loaded.normals is None)


def render_views(normalized: LoadedObject, cameras: Cameras, settings: StoreSettings,
                 surface_points: np.ndarray | None = None, surface_normals: np.ndarray | None = None) -> Views:
    """The object's views as ``prepare`` stores them: meshes shaded (OpenGL, or splats) with the
    stored surface points as one-pixel dots, clouds splatted with every point the source has."""
    from pretext3d.render import render_mesh, render_points

    if normalized.mesh is not None:
        return render_mesh(normalized.mesh, cameras, settings.image_size, grayscale=settings.grayscale,
                           backend=settings.renderer, surface_points=surface_points, surface_normals=surface_normals)
    return render_points(normalized.points, cameras, settings.image_size, normals=normalized.normals,
                         grayscale=settings.grayscale)


def fps_indices(cloud: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Rows of ``count`` farthest-point samples of ``cloud`` (N, 3), in sampling order (every
    prefix is well spread); ``seed`` picks the start."""
    tagged = np.concatenate([cloud, np.arange(len(cloud))[:, None]], axis=1)
    return select_points(tagged, count, "fps", seed)[:, 3].astype(np.int64)


def surface_points(mesh: Mesh, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(points (count, 3), normals (count, 3)) of a normalised mesh's surface as a store holds
    them: 4 x count area-weighted samples reduced by farthest point sampling (FPS order)."""
    points, normals, _ = mesh_to_points(mesh.vertices, mesh.faces, count, 4, seed)
    return points, normals


def prepare_object(source: Source, obj: SourceObject, settings: StoreSettings, root: Path) -> ObjectRecord:
    """Load, sample, render and describe one object and write its file atomically.

    Raises DataFormatError (naming the file) for malformed input."""
    start = time.perf_counter()
    loaded = normalize_object(source.load(obj))
    seed = item_seed(settings.seed, obj.key)
    arrays: dict[str, np.ndarray] = {}
    if loaded.mesh is not None:
        mesh = loaded.mesh
        points, normals = surface_points(mesh, settings.points, seed)
        faces = mesh_face_features(mesh, settings.faces, seed, loaded.origin)
        arrays.update(mesh_features=faces.features, mesh_neighbours=faces.neighbours)
        meta = {"source_faces": faces.source_faces, "simplified": faces.simplified, "padded_faces": faces.padded}
    else:
        if len(loaded.points) < settings.points:
            raise DataFormatError(loaded.origin, f"has {len(loaded.points)} points, fewer than the {settings.points} asked for")
        keep = fps_indices(loaded.points, settings.points, seed)  # FPS order: every prefix is well spread
        points, normals = loaded.points[keep], loaded.normals[keep]
        meta = {"source_points": len(loaded.points)}
    if settings.renders:
        from pretext3d.data.r2n2 import r2n2_views, rendering_folder

        views = r2n2_views(rendering_folder(settings.renders, obj.name), loaded.centre, loaded.scale,
                           settings.image_size, settings.grayscale)
        if len(views) != settings.views:
            raise DataFormatError(rendering_folder(settings.renders, obj.name),
                                  f"holds {len(views)} renders, not the store's {settings.views}")
    else:
        views = render_views(loaded, settings.cameras(obj.key), settings, points, normals)
    png, offsets = encode_images(views.images, views.mask)
    arrays.update(
        points=np.asarray(points, np.float32), normals=np.asarray(normals, np.float32),
        view=views.view.astype(np.float32), proj=views.proj.astype(np.float32),
        images_png=png, image_offsets=offsets,
    )
    if settings.depth:
        arrays["depth"] = views.depth.astype(np.float16)
    meta.update(key=obj.key, label=obj.label, origin=loaded.origin, renderer=views.info["renderer"],
                normals_estimated=loaded.estimated_normals)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(object_path(root, obj.key), buffer.getvalue())
    present = {"points": len(points), "views": len(views), "mesh": loaded.mesh is not None,
               "depth": settings.depth, "renderer": views.info["renderer"]}
    return ObjectRecord(obj.key, "done", seconds=time.perf_counter() - start, present=present)


def read_object(path: str | Path, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """An object file's arrays (``keys`` only, when given) without unpickling anything."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in (keys or data.files) if k in data.files}


def object_meta(arrays: dict[str, np.ndarray]) -> dict:
    return json.loads(arrays["meta"].tobytes().decode())


# --- store-level files ------------------------------------------------------------------------


def read_json(path: Path, what: str, keys: tuple[str, ...] = ()) -> dict:
    """A store's JSON object (holding ``keys``); DataFormatError naming the file when it is
    missing or malformed."""
    if not path.exists():
        raise DataFormatError(path, f"is missing: the store has no {what}")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFormatError(path, f"is not valid JSON ({err})") from None
    if not isinstance(value, dict) or any(k not in value for k in keys):
        raise DataFormatError(path, f"is not the store's {what} (a JSON object with {', '.join(keys) or 'keys'})")
    return value


def read_store_settings(root: Path) -> tuple[StoreSettings, dict]:
    """The settings and the whole store.json of a prepared store."""
    path = root / "store.json"
    if not path.exists():
        raise DataFormatError(root, "is not a prepared store (no store.json); make one with `pretext3d prepare`")
    config = read_json(path, "settings")
    if config.get("format") != STORE_FORMAT:
        raise DataFormatError(path, f"has format {config.get('format')!r}, expected {STORE_FORMAT!r}")
    try:
        return StoreSettings(**config["settings"]), config
    except (KeyError, TypeError) as err:
        raise DataFormatError(path, f"has malformed settings ({type(err).__name__}: {err})") from None


def write_store_header(root: Path, source: Source, settings: StoreSettings, objects: list[SourceObject]) -> None:
    """Write store.json and manifest.json, or check that an existing store has the same settings."""
    config = {"format": STORE_FORMAT, "source": source.path, "source_format": source.fmt,
              "kind": source.kind, "classes": source.classes, "settings": asdict(settings)}
    if (root / "store.json").exists():
        _, existing = read_store_settings(root)
        changed = [f"{k}: {existing['settings'].get(k)!r} -> {v!r}" for k, v in config["settings"].items()
                   if existing["settings"].get(k) != v]
        if existing.get("source") != source.path:
            changed.append(f"source: {existing.get('source')!r} -> {source.path!r}")
        if changed:
            raise DataFormatError(root, "was prepared with other settings (" + "; ".join(changed)
                                  + "); use a new --out folder or the same settings")
    else:
        atomic_write_json(root / "store.json", config)
    manifest = [{"key": o.key, "name": o.name, "split": o.split, "label": o.label,
                 "class": source.classes[o.label]} for o in objects]
    atomic_write_json(root / "manifest.json", {"objects": manifest})


def records_path(root: Path, shard: tuple[int, int]) -> Path:
    return root / "records" / f"{shard[0]}-of-{shard[1]}.{socket.gethostname()}.{os.getpid()}.jsonl"


def read_records(root: Path) -> dict[str, dict]:
    """The last record of every object over all records files (torn last lines are ignored)."""
    latest: dict[str, tuple[float, dict]] = {}
    for file in sorted((root / "records").glob("*.jsonl")):
        for line in file.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            stamp = record.get("time", 0.0)
            if record.get("key") and stamp >= latest.get(record["key"], (-1.0, {}))[0]:
                latest[record["key"]] = (stamp, record)
    return {k: v for k, (_, v) in latest.items()}


_HOLDS = ("points", "views", "mesh", "depth", "renderer")  # what index.json says of each present object


def _describe_file(file: Path) -> dict:
    """What an object file holds (for objects whose record was lost)."""
    arrays = read_object(file, ("points", "image_offsets", "mesh_features", "depth", "meta"))
    return {"points": len(arrays["points"]), "views": len(arrays["image_offsets"]) - 1,
            "mesh": "mesh_features" in arrays, "depth": "depth" in arrays,
            "renderer": object_meta(arrays).get("renderer", "")}


def build_index(root: Path) -> dict:
    """index.json's content from the manifest, the object files present and the records.

    A file that exists but cannot be read (damaged after it was written) is listed under
    "damaged", not "objects": verify reports it; deleting it lets prepare redo it."""
    settings, config = read_store_settings(root)
    manifest = read_json(root / "manifest.json", "list of objects", ("objects",))["objects"]
    if not isinstance(manifest, list) or not all(isinstance(e, dict) and "key" in e and "label" in e for e in manifest):
        raise DataFormatError(root / "manifest.json", "is not the store's list of objects (entries with key and label)")
    records = read_records(root)
    present, failed, damaged, missing = [], [], [], 0
    for entry in manifest:
        file = object_path(root, entry["key"])
        record = records.get(entry["key"], {})
        if file.exists():
            holds = record.get("present") if record.get("status") == "done" else None
            # a record says what a file holds, never which file it is
            holds = {k: v for k, v in holds.items() if k in _HOLDS} if isinstance(holds, dict) else None
            if holds is None:  # finished, but killed before its record was written
                try:
                    holds = _describe_file(file)
                except Exception as err:  # zip/npy/JSON errors of a damaged file come in many types
                    damaged.append({**entry, "file": str(file.relative_to(root)),
                                    "reason": f"cannot be read ({type(err).__name__}: {err})"})
                    continue
            present.append({**entry, "file": str(file.relative_to(root)), **holds})
        elif record.get("status") == "failed":
            failed.append({**entry, "reason": record.get("reason", "")})
        else:
            missing += 1
    counts = {"present": len(present), "failed": len(failed), "missing": missing, "total": len(manifest)}
    if damaged:
        counts["damaged"] = len(damaged)
    return {"format": STORE_FORMAT, "settings": asdict(settings), "classes": config["classes"],
            "kind": config.get("kind"), "counts": counts, "objects": present, "failed": failed, "damaged": damaged}


def write_index(root: Path) -> dict:
    index = build_index(root)
    atomic_write_json(root / "index.json", index)
    return index


def read_index(root: Path) -> dict:
    path = root / "index.json"
    if not path.exists():
        raise DataFormatError(root, "has no index.json; finish it with `pretext3d prepare` or `pretext3d verify --reindex`")
    return read_json(path, "index", ("objects", "classes"))
