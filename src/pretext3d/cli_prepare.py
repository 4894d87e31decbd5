"""Command-line parts for multimodal data: ``prepare``, ``verify`` and ``render``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pretext3d.geometry.cameras import DEFAULT_VIEWS, LAYOUTS

__all__ = ["add_prepare", "add_render", "add_verify"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="turn meshes or point clouds into a multimodal prepared store",
                       description="Sample points, render views with their camera matrices and compute MeshNet "
                                   "face features for every object of SOURCE (any format `data info` reads). "
                                   "Resumable: re-running skips finished objects.")
    p.add_argument("source", help="a dataset file or folder, or 'builtin[:seed=,train=,test=]'")
    p.add_argument("--out", required=True, help="the store folder (created; re-runs continue it)")
    p.add_argument("--points", type=_positive, default=2048, help="points per object (default 2048)")
    p.add_argument("--views", type=_positive, default=None, help="views per object (default: all of the layout, 20 for random)")
    p.add_argument("--layout", choices=LAYOUTS, default="dodecahedron", help="camera positions (default dodecahedron)")
    p.add_argument("--image-size", type=_positive, default=224)
    p.add_argument("--faces", type=_positive, default=1024, help="MeshNet faces per mesh (default 1024)")
    p.add_argument("--workers", type=_positive, default=1, help="local processes (default 1)")
    p.add_argument("--shard", default="0/1", help="I/N: this run takes objects i with i %% N == I (default 0/1)")
    p.add_argument("--up", choices=("auto", "x", "y", "z"), default="auto",
                   help="the data's up axis for the cameras (default: from the format; y for OBJ folders)")
    p.add_argument("--renderer", choices=("auto", "gl", "splat"), default="auto",
                   help="mesh renderer: OpenGL when available (auto), or point splats")
    p.add_argument("--depth", action="store_true", help="also store depth maps (float16)")
    p.add_argument("--grayscale", action="store_true", help="store grey instead of RGB views")
    p.add_argument("--renders", metavar="SHAPENET_RENDERING",
                   help="take the views from the 3D-R2N2 renders (ShapeNetRendering/<synset>/<id>/rendering/, 24 per "
                   "object, with their cameras) instead of rendering: SOURCE is then the ShapeNetCore v1 mesh folder, "
                   "and objects without renders are left out (CrossPoint's pretraining data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=_positive, default=None, help="only the first N objects (trials)")
    p.add_argument("--format", default=None, help="the source format, when detection is not wanted")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_prepare)


def _render_settings(args: argparse.Namespace) -> dict:
    """--renders replaces the renderer: the options of rendering are errors with it."""
    if not args.renders:
        return {"views": args.views or DEFAULT_VIEWS[args.layout], "layout": args.layout}
    from pretext3d.data.r2n2 import R2N2_VIEWS

    given = [name for name, used in (("--views", args.views is not None), ("--layout", args.layout != "dodecahedron"),
                                     ("--renderer", args.renderer != "auto"), ("--depth", args.depth),
                                     ("--up", args.up not in ("auto", "y"))) if used]
    if given:
        raise ValueError(f"{', '.join(given)}: options of rendering, which --renders replaces (24 views, their "
                         "cameras, y up)")
    return {"views": R2N2_VIEWS, "layout": "r2n2", "renders": str(Path(args.renders)), "up": "y"}


def _cmd_prepare(args: argparse.Namespace) -> int:
    from pretext3d.data.prepare import parse_shard, prepare
    from pretext3d.data.store import StoreSettings

    rendering = {"up": args.up, **_render_settings(args)}
    settings = StoreSettings(points=args.points, image_size=args.image_size, faces=args.faces, seed=args.seed,
                             renderer=args.renderer, depth=args.depth, grayscale=args.grayscale, **rendering)
    summary = prepare(args.source, args.out, settings, workers=args.workers, shard=parse_shard(args.shard),
                      fmt=args.format, limit=args.limit, progress=not args.quiet)
    print(f"prepared {args.source} -> {args.out} (shard {args.shard}): {summary.done} done, "
          f"{summary.skipped} already there, {len(summary.failed)} failed of {summary.in_shard} in this shard")
    print(f"  {summary.seconds:.1f} s, {summary.views} views ({summary.views_per_second:.1f} views/s), "
          f"store {summary.store_bytes / 2**20:.1f} MiB; store holds {summary.counts['present']}/"
          f"{summary.counts['total']} objects ({summary.counts['failed']} failed, {summary.counts['missing']} to do)")
    if summary.without_renders:
        print(f"  left out {len(summary.without_renders)} objects without 3D-R2N2 renders "
              f"(e.g. {', '.join(summary.without_renders[:3])})")
    for key, reason in summary.failed[:20]:
        print(f"  skipped {key}: {reason}")
    if len(summary.failed) > 20:
        print(f"  ... and {len(summary.failed) - 20} more (index.json lists them all)")
    return 1 if summary.in_shard and summary.failed and summary.done == 0 and summary.skipped == 0 else 0


def add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check a prepared store's files and index",
                       description="Check every object file and index.json of a prepared store. Exit status: 0 complete "
                       "and sound; 3 sound but incomplete (objects not prepared yet, e.g. shards still running); 1 "
                       "damaged files or a stale index.")
    p.add_argument("store")
    p.add_argument("--reindex", action="store_true", help="rewrite a stale index.json from the files present")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    from pretext3d.data.prepare import verify

    report = verify(args.store, reindex=args.reindex, progress=not args.quiet)
    counts = report["counts"]
    print(f"{args.store}: {report['checked']} object files checked; {counts['present']}/{counts['total']} present, "
          f"{counts['failed']} failed in preparation, {counts['missing']} not prepared yet")
    for key, problem in report["problems"][:50]:
        print(f"  BAD {key}: {problem}")
    if report["index_stale"]:
        print("  index.json does not match the files; run `pretext3d verify --reindex` (or prepare again)")
    if report["temporary_files"]:
        print(f"  {len(report['temporary_files'])} temporary file(s) of interrupted writes (safe to delete)")
    ok = not report["problems"] and not report["index_stale"]
    if not ok:
        print("FAILED")
        return 1
    if counts["missing"]:
        print(f"INCOMPLETE: sound so far, {counts['missing']} object(s) not prepared yet (exit status 3); "
              "`pretext3d prepare` with the same settings finishes it")
        return 3
    print("OK")
    return 0


def add_render(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="write a contact sheet of rendered views (a mesh, a dataset or a store)")
    p.add_argument("input", help="a mesh file, a dataset (any format), or a prepared store folder")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--layout", choices=LAYOUTS, default="dodecahedron")
    p.add_argument("--views", type=_positive, default=None, help="views per object (default: all of the layout)")
    p.add_argument("--image-size", type=_positive, default=160)
    p.add_argument("--objects", type=_positive, default=4, help="objects of a dataset or store (spread over it)")
    p.add_argument("--up", choices=("auto", "x", "y", "z"), default="auto")
    p.add_argument("--renderer", choices=("auto", "gl", "splat"), default="auto")
    p.add_argument("--columns", type=_positive, default=10)
    p.set_defaults(func=_cmd_render)


def _cmd_render(args: argparse.Namespace) -> int:
    from pretext3d.data.meshes import MESH_SUFFIXES
    from pretext3d.render.sheet import save_contact_sheet

    path = Path(args.input)
    if path.is_dir() and (path / "store.json").exists():
        rows, captions = _store_rows(path, args.objects, args.views)
    elif path.is_file() and path.suffix.lower() in MESH_SUFFIXES:
        rows, captions = _mesh_file_rows(path, args)
    else:
        rows, captions = _source_rows(args)
    out = save_contact_sheet(args.out, rows, captions, args.columns)
    print(f"wrote {out} ({len(rows)} object(s), {sum(len(r) for r in rows)} views)")
    return 0


def _spread(count: int, total: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, total - 1, min(count, total))}) if total else []


def _store_rows(root: Path, objects: int, views: int | None) -> tuple[list[np.ndarray], list[str]]:
    from pretext3d.data.store import decode_images, read_index, read_object, store_file

    entries = read_index(root)["objects"]
    rows, captions = [], []
    for i in _spread(objects, len(entries)):
        arrays = read_object(store_file(root, entries[i]["file"]), ("images_png", "image_offsets"))
        total = len(arrays["image_offsets"]) - 1
        images, _ = decode_images(arrays["images_png"], arrays["image_offsets"], list(range(min(views or total, total))))
        rows.append(images)
        captions.append(f"{entries[i]['key']} ({entries[i]['class']})")
    return rows, captions


def _mesh_file_rows(path: Path, args: argparse.Namespace) -> tuple[list[np.ndarray], list[str]]:
    from pretext3d.data.meshes import load_mesh, normalize_mesh
    from pretext3d.geometry.cameras import make_cameras
    from pretext3d.render import render_mesh

    up = args.up if args.up != "auto" else ("y" if path.suffix.lower() == ".obj" else "z")
    mesh, _, _ = normalize_mesh(load_mesh(path))
    views = render_mesh(mesh, make_cameras(args.layout, args.views, up=up), args.image_size, backend=args.renderer)
    return [views.images], [f"{path.name}: {len(mesh.faces)} faces, {views.info['renderer']} renderer, up {up}"]


def _source_rows(args: argparse.Namespace) -> tuple[list[np.ndarray], list[str]]:
    from pretext3d.data.sources import open_source
    from pretext3d.data.store import StoreSettings, normalize_object, render_views

    source = open_source(args.input)
    objects = source.objects()
    settings = StoreSettings(points=1, views=args.views or DEFAULT_VIEWS[args.layout],
                             layout=args.layout, image_size=args.image_size,
                             up=source.default_up() if args.up == "auto" else args.up, renderer=args.renderer)
    rows, captions = [], []
    for i in _spread(args.objects, len(objects)):
        obj = objects[i]
        views = render_views(normalize_object(source.load(obj)), settings.cameras(obj.key), settings)
        rows.append(views.images)
        captions.append(f"{objects[i].key} ({source.classes[objects[i].label]})")
    return rows, captions
