"""Renderer throughput at 224x224: OpenGL (moderngl/EGL, llvmpipe) vs our point-splat renderer.

Usage: python benchmarks/bench_render.py [--meshes N] [--views 20]

On ShapeNet meshes (../shared/data/shapenet_mini when present, else the built-in shapes) it
times, per mesh and alternately, ``render_mesh`` with the OpenGL backend and with the splat
backend (the vectorised alternative of our own, which also serves machines without OpenGL),
20 dodecahedron views each, images + depth + mask read back; and the splat renderer alone on
ModelNet40 clouds (1024 points). Reports views/s and writes bench_out/render.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timed, timed_pair  # noqa: E402

from pretext3d.data.builtin import builtin_meshes  # noqa: E402
from pretext3d.data.meshes import load_mesh, normalize_mesh  # noqa: E402
from pretext3d.geometry.cameras import make_cameras  # noqa: E402
from pretext3d.geometry.transforms import normalize_unit_sphere  # noqa: E402
from pretext3d.render import gl_available, gl_unavailable_reason, render_mesh, render_points  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def meshes(count: int) -> tuple[str, list]:
    files = sorted((SHARED / "shapenet_mini").glob("*/*/models/*.obj"))
    if files:
        chosen = files[:: max(1, len(files) // count)][:count]
        return "shapenet_mini", [(f.parent.parent.name, normalize_mesh(load_mesh(f))[0], "y") for f in chosen]
    built = builtin_meshes(0, 1)[:count]
    return "builtin", [(name, normalize_mesh(m)[0], "z") for m, _, name in built]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meshes", type=int, default=12)
    parser.add_argument("--views", type=int, default=20)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    source, chosen = meshes(args.meshes)
    rows = []
    if not gl_available():
        print(f"OpenGL unavailable ({gl_unavailable_reason()}): timing the splat renderer only")
    for name, mesh, up in chosen:
        cameras = make_cameras("dodecahedron", args.views, up=up)
        splat = lambda: render_mesh(mesh, cameras, args.size, backend="splat")  # noqa: E731
        if gl_available():
            gl = lambda: render_mesh(mesh, cameras, args.size, backend="gl")  # noqa: E731
            t_gl, t_splat = timed_pair(gl, splat, repeats=2)
        else:
            t_gl, t_splat = float("nan"), timed(splat, repeats=1)
        rows.append({"mesh": name, "faces": len(mesh.faces), "gl_views_per_s": args.views / t_gl,
                     "splat_views_per_s": args.views / t_splat})
        print(f"{name:34s} {len(mesh.faces):7d} faces  gl {args.views / t_gl:7.1f} views/s  "
              f"splat {args.views / t_splat:6.1f} views/s")
    gl_rate = args.views * len(rows) / sum(args.views / r["gl_views_per_s"] for r in rows)
    splat_rate = args.views * len(rows) / sum(args.views / r["splat_views_per_s"] for r in rows)
    print(f"{source}, {len(rows)} meshes, {args.size}x{args.size}: OpenGL {gl_rate:.1f} views/s, "
          f"splats {splat_rate:.1f} views/s (OpenGL {gl_rate / splat_rate:.1f}x)")

    cloud_rate = None
    npz = SHARED / "modelnet40_1024.npz"
    if npz.exists():
        clouds = np.load(npz)["test_x"][:20].astype(np.float64)
        cameras = make_cameras("dodecahedron", args.views, up="z")
        start = time.perf_counter()
        for cloud in clouds:
            render_points(normalize_unit_sphere(cloud), cameras, args.size)
        cloud_rate = args.views * len(clouds) / (time.perf_counter() - start)
        print(f"ModelNet40 clouds (1024 points, normals estimated): splats {cloud_rate:.1f} views/s")
    out = Path("bench_out")
    out.mkdir(exist_ok=True)
    (out / "render.json").write_text(json.dumps({
        "source": source, "size": args.size, "views": args.views, "meshes": rows,
        "gl_views_per_s": gl_rate, "splat_views_per_s": splat_rate, "cloud_splat_views_per_s": cloud_rate,
    }, indent=2))


if __name__ == "__main__":
    main()
