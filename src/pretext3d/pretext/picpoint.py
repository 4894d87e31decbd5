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

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from pretext3d.geometry.projection import RegionAssignment, project_to_pixels, project_to_regions, visible_points
from pretext3d.losses import info_nce, info_nce_with_targets
from pretext3d.models import ProjectionHead, backbone_label, backbone_module, image_encoder_module
from pretext3d.models.layers import PointwiseBlock
from pretext3d.pretext.base import DataNeeds, PretextMethod, register_method

__all__ = ["PicAtPoint", "RegionAssignment", "project_to_pixels", "project_to_regions", "visible_points"]


def pick_usable(usable: Tensor, count: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Up to ``count`` random usable centres per cloud. usable: (B, M) -> (cloud, centre) index
    pairs (Q,), (Q,)."""
    scores = torch.rand(usable.shape, generator=generator, device="cpu").to(usable.device)
    scores = torch.where(usable, scores, -1.0)
    top = scores.topk(min(count, usable.shape[1]), dim=1)
    keep = top.values >= 0
    clouds = torch.arange(usable.shape[0], device=usable.device)[:, None].expand_as(top.indices)
    return clouds[keep], top.indices[keep]


@register_method
class PicAtPoint(PretextMethod):
    """batch["points"] (B, N, 3) (+ "normals" with use_normals), batch["images"] (B, k, C, S, S),
    batch["view"], batch["proj"] (B, k, 4, 4) (the first view is used) -> {"loss", "local",
    "global", "usable"} (usable: mean fraction of local centres that have a region).
    backbone and image_encoder may also be modules (encoders shared in a composed recipe)."""

    name = "picpoint"
    needs = DataNeeds(images=True)

    def __init__(self, backbone: str | nn.Module = "dgcnn", backbone_config: dict[str, Any] | None = None,
                 image_encoder: str | nn.Module = "resnet18", image_weights: str | None = None, embed_dim: int = 512,
                 pose_dim: int = 64, temperature: float = 0.07, local_samples: int = 256, image_lr_scale: float = 0.05,
                 use_normals: bool = False, occlusion_cells: int = 28, occlusion_tolerance: float = 0.1,
                 gather_distributed: bool = True, image_heads_lr_scale: float = 1.0):
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
        self.image_heads_lr_scale = image_heads_lr_scale
        self.use_normals, self.gather_distributed = use_normals, gather_distributed
        self.occlusion = (occlusion_cells, occlusion_tolerance)

    @classmethod
    def paper_setting_problems(cls, settings: Mapping[str, Any]) -> list[str]:
        """The paper's premise is a frozen pretrained 2D backbone: its weights must be given."""
        if settings.get("image_weights"):
            return []
        return ["Pic@Point's paper setting freezes an ImageNet-pretrained ResNet-18: give model.image_weights=PATH "
                "(torchvision's resnet18 weights file on disk, e.g. resnet18-f37072fd.pth), or run the variant that "
                "trains a randomly initialised image encoder knowingly with paper_setting=false (its run, evaluations "
                "and reports then say it is not the paper's setting)"]

    def shared_heads(self) -> dict[str, str]:
        return {"points": "point_global", "image": "image_global"}

    def param_groups(self) -> list[dict]:
        """The image encoder trains at ``image_lr_scale`` of the rate (when not frozen), the image
        heads (global MLP, local 1x1 convolution) at ``image_heads_lr_scale``, the rest at 1."""
        encoder = list(self.image_encoder.parameters())
        heads = [*self.image_global.parameters(), *self.image_local.parameters()]
        image = set(map(id, encoder + heads))
        return [{"params": [p for p in self.parameters() if id(p) not in image], "lr_scale": 1.0},
                {"params": encoder, "lr_scale": self.image_lr_scale},
                {"params": heads, "lr_scale": self.image_heads_lr_scale}]

    @torch.no_grad()
    def local_queries(self, points: Tensor, view: Tensor, normals: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """points (B, N, 3), view (B, 4, 4), normals (B, N, 3) (used when trained with normals) ->
        the local queries l_3D (B, M, d) of every local centre, and the centres (B, M, 3)."""
        cloud = self.backbone(points, normals if self.use_normals else None)
        hidden = self.point_local(cloud.local)  # (B, M, d)
        pose = self.pose(view.flatten(1))[:, None].expand(-1, hidden.shape[1], -1)
        return self.point_local_out(torch.cat([hidden, pose], -1)), cloud.centres

    @torch.no_grad()
    def region_keys(self, images: Tensor) -> tuple[Tensor, int]:
        """images (B, C, S, S) (normalised; one channel is repeated) -> the region keys r_2D
        (B, G^2, d) in region order row * G + column, and G."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        local = self.image_local(self.image_encoder(images).local)  # (B, d, G, G)
        return local.flatten(2).transpose(1, 2), int(local.shape[-1])

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
