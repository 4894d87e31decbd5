"""Surface sampling of triangle meshes and farthest point sampling."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import trimesh
from torch import Tensor

from pretext3d import _kernels

__all__ = ["sample_surface", "farthest_point_sample", "fps_backends", "mesh_to_points"]

FpsBackend = Literal["auto", "numba", "torch", "fpsample"]


def sample_surface(
    vertices: np.ndarray, faces: np.ndarray, count: int, seed: int | np.random.Generator | None = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area-weighted uniform samples on a triangle mesh.

    vertices: (V, 3);  faces: (F, 3) int  ->  points (count, 3), normals (count, 3) unit face
    normals of the sampled faces, face_index (count,). Zero-area faces are never chosen.
    """
    mesh = trimesh.Trimesh(vertices=np.asarray(vertices, np.float64), faces=np.asarray(faces), process=False)
    if len(mesh.faces) == 0 or not np.isfinite(mesh.area) or mesh.area <= 0:
        raise ValueError("cannot sample a mesh with no faces of positive area")
    points, face_index = trimesh.sample.sample_surface(mesh, count, seed=seed)
    normals = mesh.face_normals[face_index]
    return points.astype(np.float32), normals.astype(np.float32), face_index


def mesh_to_points(
    vertices: np.ndarray,
    faces: np.ndarray,
    num_points: int,
    oversample: int = 4,
    seed: int | None = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A well-spread point cloud of a mesh: ``oversample * num_points`` area-weighted samples,
    reduced to ``num_points`` by exact farthest point sampling.

    Returns points (num_points, 3), normals (num_points, 3), face_index (num_points,).
    """
    pts, nrm, face = sample_surface(vertices, faces, max(num_points, oversample * num_points), seed)
    if oversample > 1:
        keep = farthest_point_sample(pts, num_points)
        pts, nrm, face = pts[keep], nrm[keep], face[keep]
    return pts, nrm, face


def fps_backends() -> list[str]:
    """The FPS backends usable on this machine, fastest first (see benchmarks/bench_fps.py)."""
    names = ["numba"] if _kernels.AVAILABLE else []
    names.append("torch")
    try:
        import fpsample  # noqa: F401

        names.append("fpsample")
    except ImportError:
        pass
    return names


def farthest_point_sample(
    points: Tensor | np.ndarray,
    num_samples: int,
    start: int | Tensor | np.ndarray = 0,
    backend: FpsBackend = "auto",
) -> Tensor | np.ndarray:
    """Exact farthest point sampling.

    points: (N, 3) or (B, N, 3), numpy or torch;  start: index of the first sample (per cloud
    or shared);  returns int64 indices (num_samples,) or (B, num_samples) of the same library
    as the input. Each next sample is the point farthest (Euclidean) from those chosen so far;
    ties go to the lowest index. ``auto`` picks the numba kernel for CPU data and the batched
    torch loop on other devices. On CPU both compute distances in float64 and return the same
    indices (tested); on a GPU the torch loop uses float32, and fpsample is float32 too, so
    near-ties (~1e-10 apart) can resolve differently.
    """
    as_numpy = isinstance(points, np.ndarray)
    pts = torch.from_numpy(np.ascontiguousarray(points)) if as_numpy else points
    single = pts.dim() == 2
    if single:
        pts = pts.unsqueeze(0)
    if pts.dim() != 3 or pts.shape[-1] != 3:
        raise ValueError(f"farthest_point_sample expects (N, 3) or (B, N, 3), got {tuple(pts.shape)}")
    n_batch, n_points, _ = pts.shape
    if not 1 <= num_samples <= n_points:
        raise ValueError(f"cannot draw {num_samples} samples from {n_points} points")
    starts = torch.as_tensor(start, dtype=torch.int64).expand(n_batch).contiguous()
    if int(starts.min()) < 0 or int(starts.max()) >= n_points:
        raise ValueError(f"FPS start index must lie in [0, {n_points}), got {starts.tolist()}")
    if backend == "auto":
        cpu = pts.device.type == "cpu"
        one_cloud = n_batch == 1  # the serial kernel runs anywhere, even in forked workers
        backend = "numba" if cpu and (_kernels.parallel_usable() or (_kernels.AVAILABLE and one_cloud)) else "torch"
    if backend == "numba":
        idx = _fps_numba(pts, num_samples, starts)
    elif backend == "torch":
        idx = _fps_torch(pts, num_samples, starts.to(pts.device))
    elif backend == "fpsample":
        idx = _fps_fpsample(pts, num_samples, starts)
    else:
        raise ValueError(f"unknown FPS backend {backend!r}; choose from auto, numba, torch, fpsample")
    if single:
        idx = idx[0]
    return idx.cpu().numpy() if as_numpy else idx


def _fps_numba(points: Tensor, num_samples: int, starts: Tensor) -> Tensor:
    if not _kernels.AVAILABLE:
        raise RuntimeError("the numba FPS backend needs numba")
    pts = points.detach().cpu().contiguous()
    if pts.dtype not in (torch.float32, torch.float64):
        pts = pts.float()
    out = torch.empty(pts.shape[0], num_samples, dtype=torch.int64)
    if pts.shape[0] == 1:  # one cloud (data loading): serial, never touches the thread pool
        _kernels.farthest_point_sample_one(pts[0].numpy(), int(starts[0]), out[0].numpy())
    else:
        _kernels.set_threads(torch.get_num_threads())
        _kernels.farthest_point_sample(pts.numpy(), starts.numpy(), out.numpy())
    return out.to(points.device)


def _fps_torch(points: Tensor, num_samples: int, starts: Tensor) -> Tensor:
    """Batched FPS loop; float64 on CPU so that it agrees with the numba kernel exactly."""
    pts = points.detach()
    pts = pts.double() if pts.device.type == "cpu" else pts.float()
    n_batch, n_points, _ = pts.shape
    rows = torch.arange(n_batch, device=pts.device)
    dist = torch.full((n_batch, n_points), float("inf"), dtype=pts.dtype, device=pts.device)
    out = torch.empty(n_batch, num_samples, dtype=torch.int64, device=pts.device)
    cur = starts
    for s in range(num_samples):
        out[:, s] = cur
        d = ((pts - pts[rows, cur].unsqueeze(1)) ** 2).sum(-1)
        dist = torch.minimum(dist, d)
        cur = dist.argmax(dim=1)  # first maximal index on ties
    return out


def _fps_fpsample(points: Tensor, num_samples: int, starts: Tensor) -> Tensor:
    import fpsample

    pts = points.detach().cpu().float().numpy()
    out = [fpsample.fps_sampling(pts[b], num_samples, start_idx=int(starts[b])) for b in range(len(pts))]
    return torch.from_numpy(np.stack(out).astype(np.int64)).to(points.device)
