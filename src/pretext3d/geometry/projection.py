"""Where points land in a rendered view: pixel coordinates and depth under a camera's view and
projection matrices (``geometry.cameras`` conventions: u is the column, v the row, top left
(0, 0)), visibility against the cloud itself, and the cell of a G x G grid over the image
(Pic@Point's 7x7 feature-map regions: (row, column) = (floor(G v / H), floor(G u / W)),
numbered row * G + column)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RegionAssignment", "project_to_pixels", "visible_points", "project_to_regions"]


@dataclass
class RegionAssignment:
    """region: (B, M) int64 in [0, G^2) (row * G + column; 0 where not usable);
    inside: (B, M) in front of the camera and within the image; visible: (B, M) not hidden by
    the cloud; usable = inside & visible."""

    region: Tensor
    inside: Tensor
    visible: Tensor

    @property
    def usable(self) -> Tensor:
        return self.inside & self.visible


def project_to_pixels(points: Tensor, view: Tensor, proj: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """points (B, M, 3), view/proj (B, 4, 4) -> uv (B, M, 2) as (column, row) in pixels and depth
    (B, M) in front of the camera (-z in camera space)."""
    homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], -1)
    camera = homogeneous @ view.transpose(1, 2)
    clip = camera @ proj.transpose(1, 2)
    w = clip[..., 3:4]
    ndc = clip[..., :2] / torch.where(w.abs() < 1e-12, torch.full_like(w, 1e-12), w)
    uv = torch.stack([(ndc[..., 0] + 1) / 2 * width, (1 - ndc[..., 1]) / 2 * height], -1)
    return uv, -camera[..., 2]


def visible_points(uv: Tensor, depth: Tensor, cloud_uv: Tensor, cloud_depth: Tensor, height: int, width: int,
                   cells: int = 28, tolerance: float = 0.1) -> Tensor:
    """Whether each query (uv (B, M, 2), depth (B, M)) is not behind the cloud (cloud_uv
    (B, N, 2), cloud_depth (B, N)): depth <= min cloud depth in its screen cell + tolerance."""
    def cell_of(coords: Tensor) -> Tensor:
        col = (coords[..., 0] / width * cells).floor().clamp(0, cells - 1)
        row = (coords[..., 1] / height * cells).floor().clamp(0, cells - 1)
        return (row * cells + col).long()

    n_batch = uv.shape[0]
    on_screen = (cloud_depth > 0) & (cloud_uv[..., 0] >= 0) & (cloud_uv[..., 0] < width) & (cloud_uv[..., 1] >= 0) \
        & (cloud_uv[..., 1] < height)
    nearest = torch.full((n_batch, cells * cells), float("inf"), dtype=depth.dtype, device=depth.device)
    nearest.scatter_reduce_(1, cell_of(cloud_uv), torch.where(on_screen, cloud_depth, torch.inf), reduce="amin")
    return depth <= nearest.gather(1, cell_of(uv)) + tolerance


@torch.no_grad()
def project_to_regions(centres: Tensor, view: Tensor, proj: Tensor, image_size: tuple[int, int], grid: int = 7,
                       cloud: Tensor | None = None, occlusion_cells: int = 28,
                       occlusion_tolerance: float = 0.1) -> RegionAssignment:
    """Regions of local centres (B, M, 3) on the G x G map of the view (view, proj (B, 4, 4))
    of an image of image_size (H, W). cloud: (B, N, 3) points for the visibility test (default
    the centres themselves)."""
    height, width = image_size
    uv, depth = project_to_pixels(centres.float(), view.float(), proj.float(), height, width)
    inside = (depth > 0) & (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
    if cloud is None:
        cloud_uv, cloud_depth = uv, depth
    else:
        cloud_uv, cloud_depth = project_to_pixels(cloud.float(), view.float(), proj.float(), height, width)
    visible = visible_points(uv, depth, cloud_uv, cloud_depth, height, width, occlusion_cells, occlusion_tolerance)
    col = (uv[..., 0] * grid / width).floor().clamp(0, grid - 1).long()
    row = (uv[..., 1] * grid / height).floor().clamp(0, grid - 1).long()
    region = torch.where(inside, row * grid + col, 0)
    return RegionAssignment(region, inside, visible)
