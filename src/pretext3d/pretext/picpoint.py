"""Pic@Point (Pic@Point: cross-modal learning by local and global point-picture correspondence):
contrast a point cloud's global and local features with a rendered view's global feature and its
7x7 feature-map regions.

Heads (d = 512, every output L2-normalised): global, a 2-layer MLP per modality; local 3D,
Linear on each local point feature, then the pose code (a 2-layer MLP of the chosen view's 4x4
view matrix to 64-d) appended, then Linear to d; local 2D, a 1x1 convolution on the image
encoder's 7x7 map. With InfoNCE at temperature t (``losses.info_nce_with_targets``):

    L_global = InfoNCE(g_3D(cloud b), g_2D(image b'))       over the batch, positive b' = b
    L_local  = InfoNCE(l_3D(centre i of b), r_2D(region j of image b'))   over all B x 49 regions,
               positive: the region of image b that centre i projects to
    L        = L_local + L_global

Only usable centres (inside the view, not self-occluded) enter L_local; at most
``local_samples`` of them per cloud, drawn at random. The image encoder is frozen when
pretrained weights are given, else it trains at ``image_lr_scale`` of the learning rate
(the paper: 3D 1e-3, 2D 5e-5).

Which 7x7 region a local feature belongs to:

A local 3D feature sits at a centre c (a point for DGCNN, a set-abstraction centre for
PointNeXt). With the view's matrices (the ones the stored render used, with the sample's point
and image augmentations folded in: see ``MultimodalDataset``), c projects to pixel coordinates
(u, v) in [0, W) x [0, H) (``geometry.cameras`` conventions: u is the column, v the row, top
left (0, 0)); its region on the G x G feature map of the image encoder is
(row, column) = (floor(G v / H), floor(G u / W)), numbered row * G + column.

What the paper leaves open, and what is done here:

* a centre that projects outside the image (or behind the camera) has no region: it is left
  out of the local loss (``usable`` is False);
* a centre hidden behind the object's own surface would be matched with the region showing
  the front surface: such centres are left out too. Visibility is decided with the cloud
  itself: its points are binned into ``occlusion_cells`` x ``occlusion_cells`` screen cells, and a
  centre is visible when its depth is at most the nearest depth in its cell plus
  ``occlusion_tolerance`` (0.1 object units by default; shapes are normalised to the unit sphere;
  measured on a rendered cube, 0.05 already marks ~9% of the surface facing the camera hidden).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pretext3d.losses import info_nce, info_nce_with_targets
from pretext3d.models import ProjectionHead, backbone_label, backbone_module
from pretext3d.models.layers import PointwiseBlock
from pretext3d.pretext.crosspoint import image_encoder_module

__all__ = ["PicAtPoint", "RegionAssignment", "project_to_pixels", "project_to_regions", "visible_points"]


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


def pick_usable(usable: Tensor, count: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Up to ``count`` random usable centres per cloud. usable: (B, M) -> (cloud, centre) index
    pairs (Q,), (Q,)."""
    scores = torch.rand(usable.shape, generator=generator, device="cpu").to(usable.device)
    scores = torch.where(usable, scores, -1.0)
    top = scores.topk(min(count, usable.shape[1]), dim=1)
    keep = top.values >= 0
    clouds = torch.arange(usable.shape[0], device=usable.device)[:, None].expand_as(top.indices)
    return clouds[keep], top.indices[keep]


class PicAtPoint(nn.Module):
    """batch["points"] (B, N, 3) (+ "normals" with use_normals), batch["images"] (B, k, C, S, S),
    batch["view"], batch["proj"] (B, k, 4, 4) (the first view is used) -> {"loss", "local",
    "global", "usable"} (usable: mean fraction of local centres that have a region).
    backbone and image_encoder may also be modules (encoders shared in a composed recipe)."""

    def __init__(self, backbone: str | nn.Module = "dgcnn", backbone_config: dict[str, Any] | None = None,
                 image_encoder: str | nn.Module = "resnet18", image_weights: str | None = None, embed_dim: int = 512,
                 pose_dim: int = 64, temperature: float = 0.07, local_samples: int = 256, image_lr_scale: float = 0.05,
                 use_normals: bool = False, occlusion_cells: int = 28, occlusion_tolerance: float = 0.1,
                 gather_distributed: bool = True):
        super().__init__()
        config = dict(backbone_config or {})
        if use_normals:
            config.setdefault("in_channels", 6)
        self.backbone_name, self.backbone_config = backbone_label(backbone), config
        self.backbone = backbone_module(backbone, config)
        self.image_encoder = image_encoder_module(image_encoder, image_weights, frozen=bool(image_weights))
        local_dim = _local_width(self.backbone)
        self.point_global = ProjectionHead(self.backbone.global_dim, embed_dim, embed_dim)
        self.image_global = ProjectionHead(self.image_encoder.feature_dim, embed_dim, embed_dim)
        self.point_local = PointwiseBlock(local_dim, embed_dim)
        self.pose = nn.Sequential(nn.Linear(16, pose_dim), nn.ReLU(), nn.Linear(pose_dim, pose_dim))
        self.point_local_out = nn.Linear(embed_dim + pose_dim, embed_dim)
        self.image_local = nn.Conv2d(self.image_encoder.feature_dim, embed_dim, 1)
        self.temperature, self.local_samples, self.image_lr_scale = temperature, local_samples, image_lr_scale
        self.use_normals, self.gather_distributed = use_normals, gather_distributed
        self.occlusion = (occlusion_cells, occlusion_tolerance)

    def param_groups(self) -> list[dict]:
        """The image encoder trains at ``image_lr_scale`` of the rate (when not frozen)."""
        image = set(map(id, self.image_encoder.parameters()))
        return [{"params": [p for p in self.parameters() if id(p) not in image], "lr_scale": 1.0},
                {"params": list(self.image_encoder.parameters()), "lr_scale": self.image_lr_scale}]

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        for key in ("points", "images", "view", "proj"):
            if key not in batch:
                raise ValueError(f"Pic@Point needs batches with {key!r} (a prepared store with images)")
        points, images = batch["points"], batch["images"][:, 0]
        view, proj = batch["view"][:, 0], batch["proj"][:, 0]
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        features = batch["normals"] if self.use_normals else None
        cloud = self.backbone(points, features)
        picture = self.image_encoder(images)
        global_loss = info_nce(self.point_global(cloud.global_), self.image_global(picture.global_), self.temperature,
                               self.gather_distributed)
        regions = project_to_regions(cloud.centres, view, proj, tuple(images.shape[-2:]), picture.local.shape[-1],
                                     cloud=points, occlusion_cells=self.occlusion[0], occlusion_tolerance=self.occlusion[1])
        keys = self.image_local(picture.local).flatten(2).transpose(1, 2)  # (B, G*G, d)
        local_loss = self._local_loss(cloud.local, view, regions, keys)
        return {"loss": local_loss + global_loss, "local": local_loss, "global": global_loss,
                "usable": regions.usable.float().mean()}

    def _local_loss(self, local: Tensor, view: Tensor, regions: RegionAssignment, keys: Tensor) -> Tensor:
        """local (B, M, C), view (B, 4, 4), keys (B, R, d) -> InfoNCE of the picked centres."""
        clouds, centres = pick_usable(regions.usable, self.local_samples)
        flat_keys = keys.reshape(-1, keys.shape[-1])
        if len(clouds) < 2:  # (almost) nothing in view; BatchNorm needs 2 rows: a zero loss that still
            # touches every local-head parameter (DDP expects gradients for all) and joins the key gather
            heads = (*self.point_local.parameters(), *self.pose.parameters(), *self.point_local_out.parameters())
            empty = info_nce_with_targets(flat_keys[:0], flat_keys, clouds[:0], self.temperature, self.gather_distributed)
            return empty + 0.0 * sum(p.sum() for p in heads)
        hidden = self.point_local(local[clouds, centres])  # (Q, d); BatchNorm over the picked centres
        pose = self.pose(view.flatten(1))[clouds]
        queries = self.point_local_out(torch.cat([hidden, pose], -1))
        targets = clouds * keys.shape[1] + regions.region[clouds, centres]
        return info_nce_with_targets(queries, flat_keys, targets, self.temperature, self.gather_distributed)


def _local_width(backbone: nn.Module) -> int:
    """Channels of a backbone's local features (probed on a tiny input)."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        probe = torch.rand(2, 64, 3)
        extra = torch.zeros(2, 64, backbone.in_channels - 3) if getattr(backbone, "in_channels", 3) > 3 else None
        width = backbone(probe, extra).local.shape[-1]
    backbone.train(was_training)
    return width
