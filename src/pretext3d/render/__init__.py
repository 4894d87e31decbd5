"""Rendering: shaded views of meshes (OpenGL) and point clouds (splats) with their camera matrices.

``render_mesh(mesh, cameras)`` and ``render_points(points, cameras)`` both return ``Views``:
images, depth, mask and the exact view/projection matrices used, so that
``geometry.cameras.project_points`` puts a 3D point on the pixel it was drawn at.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

from pretext3d.data.meshes import Mesh
from pretext3d.geometry.cameras import Cameras, project_points
from pretext3d.render.gl import GLRenderer, gl_available, gl_unavailable_reason
from pretext3d.render.shading import LUMA, Lighting, Views, shade
from pretext3d.render.splat import auto_splat_radius, estimate_normals, splat_view

__all__ = [
    "Lighting",
    "Views",
    "gl_available",
    "gl_unavailable_reason",
    "mesh_backend",
    "render_mesh",
    "render_points",
]

Backend = Literal["auto", "gl", "splat"]
DEFAULT_COLOR = (0.78, 0.78, 0.78)
_log = logging.getLogger(__name__)
_warned = False


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


def _to_grey(images: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of (..., 3) uint8 images."""
    return np.round(images @ np.array(LUMA)).astype(np.uint8)


def mesh_backend(requested: Backend = "auto") -> str:
    """The mesh renderer that will run: "gl" when OpenGL works, else "splat" (with a warning)."""
    global _warned
    if requested == "splat":
        return "splat"
    if gl_available():
        return "gl"
    if requested == "gl":
        raise RuntimeError(f"the OpenGL mesh renderer is unavailable: {gl_unavailable_reason()}")
    if not _warned:
        _log.warning("OpenGL unavailable (%s); meshes are rendered as dense point splats", gl_unavailable_reason())
        _warned = True
    return "splat"


def render_mesh(
    mesh: Mesh,
    cameras: Cameras,
    image_size: int | tuple[int, int] = 224,
    color: tuple[float, float, float] = DEFAULT_COLOR,
    face_colors: np.ndarray | None = None,
    smooth: bool = False,
    grayscale: bool = False,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    lighting: Lighting = Lighting(),
    backend: Backend = "auto",
    splat_samples: int = 60000,
    surface_points: np.ndarray | None = None,
    surface_normals: np.ndarray | None = None,
) -> Views:
    """Phong-shaded views of a mesh from every camera.

    mesh: vertices (V, 3) in world units (normalise to the unit sphere first, see
    ``data.meshes.normalize_mesh``, so that the cameras of ``make_cameras`` frame it);
    face_colors: optional (F, 3) albedo in [0, 1]; smooth: interpolate area-weighted vertex
    normals (Gouraud-style normals, Phong lighting per pixel) instead of flat face normals.
    backend "splat" (or "auto" without OpenGL) draws ``splat_samples`` surface samples instead.
    surface_points / surface_normals: (M, 3) samples of the surface (e.g. the point cloud stored
    with the views) drawn as one-pixel dots after the faces, like the vertices: parts thinner
    than a pixel (wires, legs seen from afar) then still cover the pixels of their points.
    """
    height, width = _size(image_size)
    if (surface_points is None) != (surface_normals is None):
        raise ValueError("surface_points and surface_normals go together: give both or neither")
    used = mesh_backend(backend)
    if used == "splat":
        views = _render_mesh_as_splats(mesh, cameras, (height, width), color, face_colors, background,
                                       lighting, splat_samples, surface_points, surface_normals)
    else:
        soup, corners = _triangle_soup(mesh, color, face_colors, smooth)
        if surface_points is not None:
            dots = np.concatenate([surface_points, surface_normals, np.broadcast_to(np.asarray(color, np.float64),
                                                                                  surface_points.shape)], axis=1)
            corners = np.concatenate([corners, dots])
        images, depth, mask = GLRenderer((height, width), lighting, background).draw(
            soup, corners, cameras.view, cameras.proj)
        views = Views(images, depth, mask, cameras.view.astype(np.float32), cameras.proj.astype(np.float32))
    views.info["renderer"] = used
    if grayscale:
        views.images = _to_grey(views.images)
    return views


def _triangle_soup(mesh: Mesh, color, face_colors, smooth: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows of (position, normal, albedo) for every face corner (3F, 9), drawn without an index
    buffer, and for every distinct vertex (P, 9)."""
    # a face repeated with reversed winding (double-sided, common in ShapeNet) is drawn once:
    # its two normals would cancel in the vertex normals
    _, first = np.unique(np.sort(mesh.faces, axis=1), axis=0, return_index=True)
    faces = mesh.faces[np.sort(first)]
    face_colors = None if face_colors is None else np.asarray(face_colors)[np.sort(first)]
    tri = mesh.vertices[faces]  # (F, 3, 3)
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 x area
    vertex_normals = np.zeros_like(mesh.vertices)
    any_face_normal = np.zeros_like(mesh.vertices)
    for corner in range(3):
        np.add.at(vertex_normals, faces[:, corner], face_normals)
        any_face_normal[faces[:, corner]] = face_normals
    # normals that still cancel (folded or non-manifold parts): take one incident face's normal
    cancelled = np.linalg.norm(vertex_normals, axis=1) < 1e-3 * np.linalg.norm(any_face_normal, axis=1)
    vertex_normals[cancelled] = any_face_normal[cancelled]
    normals = vertex_normals[faces] if smooth else np.repeat(face_normals[:, None], 3, axis=1)
    if face_colors is None:
        albedo = np.broadcast_to(np.asarray(color, np.float64), tri.shape)
        vertex_albedo = np.broadcast_to(np.asarray(color, np.float64), mesh.vertices.shape)
    else:
        albedo = np.repeat(np.asarray(face_colors, np.float64)[:, None], 3, axis=1)
        vertex_albedo = np.zeros_like(mesh.vertices)
        vertex_albedo[faces.ravel()] = albedo.reshape(-1, 3)  # any one of its faces' colours
    soup = np.concatenate([tri, normals, albedo], axis=2).reshape(-1, 9)
    used = np.unique(faces)
    corners = np.concatenate([mesh.vertices, vertex_normals, vertex_albedo], axis=1)[used]
    return soup, corners


def _render_mesh_as_splats(mesh, cameras, size, color, face_colors, background, lighting, samples,
                           surface_points, surface_normals) -> Views:
    rng = np.random.default_rng(0)
    tri = mesh.vertices[mesh.faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(cross, axis=1)
    face = rng.choice(len(area), size=samples, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(samples)), rng.random(samples)
    points = (1 - r1)[:, None] * tri[face, 0] + (r1 * (1 - r2))[:, None] * tri[face, 1] + (r1 * r2)[:, None] * tri[face, 2]
    normals = cross[face]
    colors = None if face_colors is None else face_colors[face]
    if surface_points is not None:
        points, normals = np.concatenate([points, surface_points]), np.concatenate([normals, surface_normals])
        if colors is not None:
            colors = np.concatenate([colors, np.broadcast_to(np.asarray(color, np.float64), surface_points.shape)])
    spacing = np.sqrt(area.sum() / 2 / samples)  # mean distance between uniform samples; no kNN needed
    return render_points(points, cameras, size, normals=normals, colors=colors, color=color,
                         point_radius=0.8 * spacing, background=background, lighting=lighting)


def render_points(
    points: np.ndarray,
    cameras: Cameras,
    image_size: int | tuple[int, int] = 224,
    normals: np.ndarray | None = None,
    colors: np.ndarray | None = None,
    color: tuple[float, float, float] = DEFAULT_COLOR,
    point_radius: float | None = None,
    grayscale: bool = False,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    lighting: Lighting = Lighting(),
) -> Views:
    """Splat views of a point cloud from every camera.

    points: (N, 3) (normalised to the unit sphere for ``make_cameras``); normals: (N, 3), estimated
    from 16 neighbours when None; colors: optional (N, 3) albedo in [0, 1]; point_radius: world
    radius of a splat (``auto_splat_radius`` when None).
    """
    height, width = _size(image_size)
    points = np.asarray(points, dtype=np.float64)
    normals = estimate_normals(points) if normals is None else np.asarray(normals, dtype=np.float64)
    albedo = np.broadcast_to(np.asarray(color, np.float64), points.shape) if colors is None else np.asarray(colors)
    radius = auto_splat_radius(points) if point_radius is None else point_radius
    bg = np.round(np.asarray(background) * 255).astype(np.uint8)
    n_views = len(cameras)
    images = np.empty((n_views, height, width, 3), np.uint8)
    depth = np.zeros((n_views, height, width), np.float32)
    mask = np.zeros((n_views, height, width), bool)
    uv, _ = project_points(points, cameras.view, cameras.proj, (height, width))
    for v in range(n_views):
        rotation, translation = cameras.view[v, :3, :3], cameras.view[v, :3, 3]
        cam = points @ rotation.T + translation
        zbuf, index = splat_view(cam, uv[v], radius, cameras.proj[v, 1, 1] * height / 2, height, width)
        hit = index >= 0
        winners = index[hit]
        rgb = shade(normals[winners] @ rotation.T, cam[winners], albedo[winners], lighting)
        images[v] = bg
        images[v][hit] = np.round(rgb * 255).astype(np.uint8)
        depth[v][hit], mask[v] = zbuf[hit], hit
    views = Views(images, depth, mask, cameras.view.astype(np.float32), cameras.proj.astype(np.float32),
                  {"renderer": "splat", "splat_radius": radius})
    if grayscale:
        views.images = _to_grey(views.images)
    return views
