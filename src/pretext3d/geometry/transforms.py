"""Normalisation and the point-cloud augmentations used by the papers.

Augmentations take ``points (B, N, C)`` with xyz in channels 0:3; when ``C >= 6`` channels 3:6
are treated as normals (rotated with the points, re-normalised after anisotropic scaling, never
translated or jittered). Randomness comes from an explicit ``torch.Generator`` so runs repeat.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "normalize_unit_sphere",
    "rotation_about_axis",
    "random_rotate_up",
    "random_scale",
    "random_translate",
    "jitter",
    "random_point_dropout",
]

Axis = Literal["x", "y", "z"]


def normalize_unit_sphere(
    points: np.ndarray | Tensor, center: Literal["mean", "bbox"] = "mean"
) -> np.ndarray | Tensor:
    """Centre each cloud (mean or bounding-box centre) and scale it into the unit sphere.

    points: (N, 3) or (B, N, 3), numpy or torch (extra channels are left untouched)  ->  same
    shape: xyz - c, divided by max_i |xyz_i - c| (a cloud of one repeated point is only centred).
    """
    lib = torch if isinstance(points, Tensor) else np
    xyz = points[..., :3]
    if center == "mean":
        c = xyz.mean(-2, keepdims=True) if lib is np else xyz.mean(-2, keepdim=True)
    elif center == "bbox":
        if lib is np:
            c = (xyz.max(-2, keepdims=True) + xyz.min(-2, keepdims=True)) / 2
        else:
            c = (xyz.amax(-2, keepdim=True) + xyz.amin(-2, keepdim=True)) / 2
    else:
        raise ValueError(f"center must be 'mean' or 'bbox', got {center!r}")
    xyz = xyz - c
    norms = lib.sqrt((xyz * xyz).sum(-1))
    radius = norms.max(-1, keepdims=True) if lib is np else norms.amax(-1, keepdim=True)
    radius = lib.where(radius > 0, radius, lib.ones_like(radius))
    xyz = xyz / radius[..., None]
    if points.shape[-1] == 3:
        return xyz
    rest = points[..., 3:]
    return np.concatenate([xyz, rest], -1) if lib is np else torch.cat([xyz, rest], -1)


def rotation_about_axis(angles: Tensor, axis: Axis = "z") -> Tensor:
    """Right-handed rotation matrices about a coordinate axis. angles: (B,) radians -> (B, 3, 3).

    Points are rotated as ``points @ R.transpose(-1, -2)`` (column-vector convention R p).
    """
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(angles), torch.zeros_like(angles)
    if axis == "z":
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    elif axis == "y":
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    elif axis == "x":
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    else:
        raise ValueError(f"axis must be x, y or z, got {axis!r}")
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def _apply_linear(points: Tensor, matrix: Tensor) -> Tensor:
    """xyz <- M xyz; normals <- M^-T n, re-normalised. matrix: (B, 3, 3). Computed in at least
    float32 (half precision has no matrix inverse on CPU), returned in the points' dtype."""
    work = torch.promote_types(points.dtype, torch.float32)
    pts, matrix = points.to(work), matrix.to(device=points.device, dtype=work)
    out = pts.clone()
    out[..., :3] = pts[..., :3] @ matrix.transpose(-1, -2)
    if points.shape[-1] >= 6:
        normal_map = torch.linalg.inv(matrix)  # (M^-T n)^T = n^T M^-1
        n = pts[..., 3:6] @ normal_map
        out[..., 3:6] = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return out.to(points.dtype)


def _uniform(shape: tuple[int, ...], low: float, high: float, like: Tensor, generator) -> Tensor:
    """Uniform draws made in float32 on the CPU generator, then moved to ``like``'s device (and
    dtype unless it is a half type, where angles and factors would be coarsely quantised)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float32, device="cpu")
    dtype = torch.promote_types(like.dtype, torch.float32)
    return (low + (high - low) * u).to(device=like.device, dtype=dtype)


def random_rotate_up(points: Tensor, up_axis: Axis = "z", generator: torch.Generator | None = None) -> Tensor:
    """Rotate each cloud by an angle uniform in [0, 2 pi) about the up axis. points: (B, N, C)."""
    angles = _uniform((points.shape[0],), 0.0, 2 * math.pi, points, generator)
    return _apply_linear(points, rotation_about_axis(angles, up_axis))


def random_scale(
    points: Tensor,
    low: float = 2.0 / 3.0,
    high: float = 3.0 / 2.0,
    anisotropic: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Scale each cloud by factors uniform in [low, high] (per axis when anisotropic, as in DGCNN)."""
    n_axes = 3 if anisotropic else 1
    factors = _uniform((points.shape[0], n_axes), low, high, points, generator).expand(-1, 3)
    return _apply_linear(points, torch.diag_embed(factors))


def random_translate(
    points: Tensor, low: float = -0.2, high: float = 0.2, generator: torch.Generator | None = None
) -> Tensor:
    """Shift each cloud by a per-axis offset uniform in [low, high]."""
    shift = _uniform((points.shape[0], 1, 3), low, high, points, generator)
    out = points.clone()
    out[..., :3] = (points[..., :3] + shift).to(points.dtype)
    return out


def jitter(
    points: Tensor, sigma: float = 0.01, clip: float = 0.05, generator: torch.Generator | None = None
) -> Tensor:
    """Add per-point Gaussian noise N(0, sigma^2), clipped to [-clip, clip], to xyz."""
    noise = torch.randn(points.shape[:-1] + (3,), generator=generator, dtype=torch.float32)
    noise = (sigma * noise).clamp_(-clip, clip).to(device=points.device, dtype=points.dtype)
    out = points.clone()
    out[..., :3] = points[..., :3] + noise
    return out


def random_point_dropout(
    points: Tensor, max_ratio: float = 0.875, generator: torch.Generator | None = None
) -> Tensor:
    """PointNet++ dropout: per cloud draw r ~ U[0, max_ratio], drop each point with probability
    r and replace it by the cloud's first point (so the shape of the tensor is unchanged)."""
    n_batch, n_points = points.shape[:2]
    ratio = _uniform((n_batch, 1), 0.0, max_ratio, points, generator)
    drop = _uniform((n_batch, n_points), 0.0, 1.0, points, generator) <= ratio
    return torch.where(drop.unsqueeze(-1), points[:, :1].expand_as(points), points)
