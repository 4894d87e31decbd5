"""Point-splat renderer for data without meshes: z-buffered discs shaded from normals.

Every point is drawn as a disc of constant world radius (so its pixel radius shrinks with
depth), the nearest disc wins each pixel, and the pixel is Phong-shaded (``shading.py``) from
that point's normal: the given normals, or ones estimated by PCA over the k nearest neighbours
(their sign does not matter: shading turns normals towards the camera). A disc always covers
the pixel its own centre falls in, so every projected point lands inside the mask.
"""

from __future__ import annotations

import numpy as np
import torch

from pretext3d import _kernels
from pretext3d.geometry.neighbors import knn

__all__ = ["auto_splat_radius", "estimate_normals", "splat_view", "splat_zbuffer"]

_MIN_PIXEL_RADIUS = 0.75  # > sqrt(2)/2: the disc reaches the centre of the pixel the point is in


def estimate_normals(points: np.ndarray, k: int = 16) -> np.ndarray:
    """Unit normals (N, 3) of points (N, 3): the least-variance direction of each point's k
    nearest neighbours (unoriented)."""
    k = min(k, len(points))
    cloud = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))[None]
    neighbours = points[knn(cloud, k)[0].numpy()]  # (N, k, 3)
    centred = neighbours - neighbours.mean(1, keepdims=True)
    covariance = np.einsum("nki,nkj->nij", centred, centred)
    _, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues
    return vectors[:, :, 0].astype(np.float32)


def auto_splat_radius(points: np.ndarray, neighbour: int = 4, scale: float = 0.7) -> float:
    """A world radius that closes the gaps between splats: ``scale`` x the median distance to
    each point's ``neighbour``-th nearest neighbour."""
    k = min(neighbour + 1, len(points))
    cloud = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))[None]
    idx = knn(cloud, k, sorted=True)[0, :, -1].numpy()
    spacing = np.linalg.norm(points - points[idx], axis=1)
    return float(scale * np.median(spacing)) if len(points) > 1 else 0.05


def splat_zbuffer(u: np.ndarray, v: np.ndarray, z: np.ndarray, radius: np.ndarray,
                  height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-disc z-buffer. u, v, z, radius: (N,) pixel column, row, depth, pixel radius.

    Returns zbuf (H, W) float64 (+inf where empty) and index (H, W) int64 (-1 where empty).
    Numba kernel when available, else the vectorised numpy version below (same answer).
    """
    u, v, z, radius = (np.ascontiguousarray(a, dtype=np.float64) for a in (u, v, z, radius))
    zbuf = np.full((height, width), np.inf)
    index = np.full((height, width), -1, dtype=np.int64)
    if _kernels.AVAILABLE:
        _kernels.splat_zbuffer(u, v, z, radius, zbuf, index)
        return zbuf, index
    return _splat_zbuffer_numpy(u, v, z, radius, zbuf, index)


def _splat_zbuffer_numpy(u, v, z, radius, zbuf, index):
    height, width = zbuf.shape
    keep = np.flatnonzero(z > 0)
    if len(keep) == 0:
        return zbuf, index
    reach = np.ceil(radius[keep]).astype(np.int64) + 1
    pixels, points = [], []
    for r in np.unique(reach):  # points grouped by disc size: memory ~ sum of their own discs
        group = keep[reach == r]
        offsets = np.arange(-r, r + 1)
        ox, oy = (a.ravel() for a in np.meshgrid(offsets, offsets))
        px = np.floor(u[group])[:, None].astype(np.int64) + ox  # (K, P)
        py = np.floor(v[group])[:, None].astype(np.int64) + oy
        dx, dy = px + 0.5 - u[group, None], py + 0.5 - v[group, None]
        inside = (dx * dx + dy * dy <= radius[group, None] ** 2) & (px >= 0) & (px < width) & (py >= 0) & (py < height)
        points.append(np.broadcast_to(group[:, None], px.shape)[inside])
        pixels.append((py * width + px)[inside])
    point, pixel = np.concatenate(points), np.concatenate(pixels)
    order = np.lexsort((point, z[point], pixel))  # by pixel, then depth, then index
    first = np.ones(len(order), bool)
    first[1:] = pixel[order][1:] != pixel[order][:-1]
    winners = order[first]
    zbuf.ravel()[pixel[winners]] = z[point[winners]]
    index.ravel()[pixel[winners]] = point[winners]
    return zbuf, index


def splat_view(cam_points: np.ndarray, uv: np.ndarray, world_radius: float, focal_pixels: float,
               height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer one view. cam_points: (N, 3) camera coordinates; uv: (N, 2) pixel coordinates.

    The pixel radius is ``focal_pixels * world_radius / depth`` (at least 0.75 px)."""
    depth = -cam_points[:, 2]
    pixel_radius = np.maximum(focal_pixels * world_radius / np.maximum(depth, 1e-6), _MIN_PIXEL_RADIUS)
    return splat_zbuffer(uv[:, 0], uv[:, 1], depth, pixel_radius, height, width)
