"""Pinhole cameras in OpenGL conventions: view matrices, projection matrices, viewpoint layouts.

Conventions (the same as OpenGL and every renderer in pretext3d):

* world -> camera: ``x_cam = view @ [x, 1]``; the camera looks down its -z axis, +y is up on
  screen, +x is right. ``look_at`` makes rigid 4x4 transforms (the multimodal Dataset folds
  its scaling augmentation into them, which is equally valid for projection).
* camera -> clip: ``x_clip = proj @ x_cam`` with the usual ``perspective`` matrix; normalised
  device coordinates are ``x_ndc = x_clip[:3] / x_clip[3]`` in [-1, 1]^3 (near -> -1).
* NDC -> pixels: ``u = (x_ndc + 1) / 2 * W`` (column, left to right) and
  ``v = (1 - y_ndc) / 2 * H`` (row, top to bottom), so pixel (row r, column c) covers
  ``[c, c+1) x [r, r+1)`` and its centre is at (c + 0.5, r + 0.5). Image arrays are stored
  top row first, as in every image file.

Viewpoint layouts return camera positions (V, 3) around the origin; ``look_at`` turns them into
view matrices. Objects are normalised to the unit sphere, so ``fit_fov`` picks the field of view
that fits that sphere from a given distance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Cameras",
    "DEFAULT_VIEWS",
    "LAYOUTS",
    "dodecahedron_viewpoints",
    "fit_fov",
    "look_at",
    "make_cameras",
    "perspective",
    "project_points",
    "random_sphere_viewpoints",
    "ring_viewpoints",
]

LAYOUTS = ("random", "dodecahedron", "ring12")
DEFAULT_VIEWS = {"random": 20, "dodecahedron": 20, "ring12": 12}  # views per object when not given
_UP = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}


@dataclass
class Cameras:
    """V cameras: view (V, 4, 4) world->camera, proj (V, 4, 4) camera->clip, positions (V, 3)."""

    view: np.ndarray
    proj: np.ndarray
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.view)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def look_at(eyes: np.ndarray, target: np.ndarray | None = None, up: str | np.ndarray = "z") -> np.ndarray:
    """View matrices (V, 4, 4) of cameras at ``eyes`` (V, 3) looking at ``target`` (3,).

    The camera's -z axis points at the target and its +y axis is the part of ``up`` orthogonal
    to the viewing direction. When ``up`` is (nearly) parallel to the viewing direction, the
    world axis least aligned with it is used instead, so every eye gets a valid camera.
    """
    eyes = np.atleast_2d(np.asarray(eyes, dtype=np.float64))
    target = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    up_vec = np.asarray(_UP[up] if isinstance(up, str) else up, dtype=np.float64)
    forward = _unit(target[None] - eyes)  # camera -z
    ups = np.broadcast_to(up_vec, eyes.shape).copy()
    parallel = np.abs((forward * _unit(ups)).sum(-1)) > 0.999
    least_aligned = np.eye(3)[np.argmin(np.abs(forward), axis=1)]
    ups[parallel] = least_aligned[parallel]
    right = _unit(np.cross(forward, ups))
    true_up = np.cross(right, forward)
    view = np.zeros((len(eyes), 4, 4))
    view[:, 0, :3], view[:, 1, :3], view[:, 2, :3] = right, true_up, -forward
    view[:, :3, 3] = -np.einsum("vij,vj->vi", view[:, :3, :3], eyes)
    view[:, 3, 3] = 1.0
    return view


def perspective(fov_y_degrees: float, aspect: float = 1.0, near: float = 0.1, far: float = 10.0) -> np.ndarray:
    """OpenGL perspective matrix (4, 4): vertical field of view, width/height aspect, clip planes."""
    if not 0 < fov_y_degrees < 180 or not 0 < near < far:
        raise ValueError(f"need 0 < fov < 180 and 0 < near < far, got fov={fov_y_degrees}, near={near}, far={far}")
    f = 1.0 / math.tan(math.radians(fov_y_degrees) / 2)
    proj = np.zeros((4, 4))
    proj[0, 0], proj[1, 1] = f / aspect, f
    proj[2, 2] = (far + near) / (near - far)
    proj[2, 3] = 2 * far * near / (near - far)
    proj[3, 2] = -1.0
    return proj


def fit_fov(distance: float, radius: float = 1.0, margin: float = 1.05) -> float:
    """Vertical field of view (degrees) in which a sphere of ``radius`` at ``distance`` fits,
    with ``margin`` (> 1 leaves a border): fov = 2 asin(margin * radius / distance)."""
    ratio = margin * radius / distance
    if ratio >= 1:
        raise ValueError(f"a camera at distance {distance} is inside the sphere of radius {radius * margin}")
    return math.degrees(2 * math.asin(ratio))


def _spherical(azimuth_deg: np.ndarray, polar_deg: np.ndarray, radius: float, up: str) -> np.ndarray:
    """Points at polar angle from the ``up`` axis and azimuth about it: (V, 3)."""
    az, pol = np.radians(azimuth_deg), np.radians(polar_deg)
    a = radius * np.sin(pol) * np.cos(az)
    b = radius * np.sin(pol) * np.sin(az)
    c = radius * np.cos(pol)
    # (a, b, c) in a right-handed frame whose third axis is ``up``
    order = {"z": (a, b, c), "y": (b, c, a), "x": (c, a, b)}[up]
    return np.stack(order, axis=-1)


def random_sphere_viewpoints(
    count: int,
    radius: float = 2.5,
    seed: int = 0,
    azimuth: tuple[float, float] = (10.0, 340.0),
    polar: tuple[float, float] = (10.0, 165.0),
    up: str = "z",
) -> np.ndarray:
    """Jing et al.'s random cameras: azimuth ~ U(10, 340) deg, polar ~ U(10, 165) deg from up."""
    rng = np.random.default_rng(seed)
    return _spherical(rng.uniform(*azimuth, count), rng.uniform(*polar, count), radius, up)


def dodecahedron_viewpoints(radius: float = 2.5) -> np.ndarray:
    """The 20 vertices of a regular dodecahedron on a sphere of ``radius`` (Pic@Point's views)."""
    phi = (1 + math.sqrt(5)) / 2
    cube = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    rest = []
    for s1 in (-1, 1):
        for s2 in (-1, 1):
            a, b = s1 / phi, s2 * phi
            rest += [(0, a, b), (a, b, 0), (b, 0, a)]
    vertices = np.array(cube + rest, dtype=np.float64)
    return radius * _unit(vertices)


def ring_viewpoints(count: int = 12, radius: float = 2.5, elevation: float = 30.0, up: str = "z") -> np.ndarray:
    """MVCNN's ring: ``count`` cameras every 360/count deg of azimuth, ``elevation`` deg above
    the horizontal plane."""
    azimuth = np.arange(count) * 360.0 / count
    return _spherical(azimuth, np.full(count, 90.0 - elevation), radius, up)


def make_cameras(
    layout: str | np.ndarray,
    count: int | None = None,
    distance: float = 2.5,
    up: str = "z",
    seed: int = 0,
    margin: float = 1.05,
) -> Cameras:
    """Cameras around a unit-sphere object for a named layout or explicit positions (V, 3).

    layout: "random" (``count`` views, Jing et al.), "dodecahedron" (20), "ring12" (12) or an
    array of camera positions; the field of view fits the unit sphere (``fit_fov``).
    """
    if isinstance(layout, str):
        if layout == "random":
            positions = random_sphere_viewpoints(count or 20, distance, seed, up=up)
        elif layout == "dodecahedron":
            positions = dodecahedron_viewpoints(distance)
        elif layout == "ring12":
            positions = ring_viewpoints(12, distance, up=up)
        else:
            raise ValueError(f"unknown camera layout {layout!r}; known: {', '.join(LAYOUTS)}")
        if count is not None and layout != "random":
            if count > len(positions):
                raise ValueError(f"layout {layout!r} has {len(positions)} views, {count} were asked for")
            positions = positions[:count]
    else:
        positions = np.atleast_2d(np.asarray(layout, dtype=np.float64))
    dist = np.linalg.norm(positions, axis=1)
    near, far = max(1e-2, dist.min() - 1.5), dist.max() + 1.5  # the unit sphere with room to spare
    proj = perspective(fit_fov(dist.min(), 1.0, margin), 1.0, near, far)
    return Cameras(look_at(positions, up=up), np.broadcast_to(proj, (len(positions), 4, 4)).copy(), positions)


def project_points(points: np.ndarray, view: np.ndarray, proj: np.ndarray, image_size: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates and camera depth of world points, with the renderer's matrices.

    points: (N, 3); view, proj: (4, 4) or (V, 4, 4); image_size: H = W or (H, W).
    Returns uv: (N, 2) or (V, N, 2) as (column, row) in pixels (top-left corner is (0, 0)), and
    depth: (N,) or (V, N), the distance in front of the camera (-z_cam; positive when visible).
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    cam = homogeneous @ np.swapaxes(view, -1, -2)  # (..., N, 4)
    clip = cam @ np.swapaxes(proj, -1, -2)
    ndc = clip[..., :2] / clip[..., 3:4]
    uv = np.stack([(ndc[..., 0] + 1) / 2 * width, (1 - ndc[..., 1]) / 2 * height], axis=-1)
    return uv, -cam[..., 2]
