"""CrossPoint (Afham et al., CVPR 2022): contrast two augmented point views with each other and
with a rendered image of the same object.

For a batch of B objects, the point backbone f and its projection head g give, for two point
augmentations, z1 = g(f(x1)) and z2 = g(f(x2)) (both views go through the network as one batch
of 2B, as in the reference code, so BatchNorm sees both); the image encoder h and its head q
give z_img = q(h(image)). With NT-Xent at temperature t (``losses.nt_xent``):

    L_imid = NT-Xent(z1, z2)                        (intra-modal instance discrimination)
    L_cmid = NT-Xent((z1 + z2) / 2, z_img)          (cross-modal instance discrimination)
    L      = L_imid + L_cmid

Projection heads: Linear -> BatchNorm -> ReLU -> Linear to 256-d (hidden 512). The exported
backbone is the point network f; its global feature is what evaluation uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pretext3d.losses import nt_xent
from pretext3d.models import ProjectionHead, backbone_label, backbone_module, image_encoder_module
from pretext3d.pretext.base import DataNeeds, PretextMethod, register_method

__all__ = ["CrossPoint"]

# their decoders would hold parameters without gradients (DDP needs every parameter used)
POINTWISE_BACKBONES = ("pointnet-pointwise", "dgcnn-seg")


@register_method
class CrossPoint(PretextMethod):
    """batch["point_views"]: (B, 2, N, 3), batch["images"]: (B, k, C, S, S) (the first view is
    used; grey images are repeated to 3 channels) -> {"loss", "imid", "cmid"}.

    backbone / backbone_config: the point network (registry name and kwargs); image_encoder:
    resnet18 | resnet50; image_weights: optional torchvision ResNet weights on disk (.pth/.pt read
    with weights_only=True, or .safetensors) to start the image encoder from (its fc is dropped);
    gather_distributed: under torchrun, negatives span the global batch. backbone and
    image_encoder may also be modules (encoders shared in a composed recipe).
    """

    name = "crosspoint"
    needs = DataNeeds(images=True, point_views=2, views=1)

    def __init__(self, backbone: str | nn.Module = "dgcnn", backbone_config: dict[str, Any] | None = None,
                 image_encoder: str | nn.Module = "resnet50", projection_dim: int = 256, hidden_dim: int = 512,
                 temperature: float = 0.1, gather_distributed: bool = True, image_weights: str | None = None):
        super().__init__()
        if backbone in POINTWISE_BACKBONES:
            raise ValueError(f"CrossPoint contrasts global features: use pointnet or dgcnn, not the point-wise {backbone!r}")
        self.backbone_name = backbone_label(backbone)
        self.backbone_config = dict(backbone_config or {})
        self.backbone = backbone_module(backbone, self.backbone_config)
        self.point_head = ProjectionHead(self.backbone.global_dim, hidden_dim, projection_dim)
        self.image_encoder = image_encoder_module(image_encoder, image_weights)
        self.image_head = ProjectionHead(self.image_encoder.feature_dim, hidden_dim, projection_dim)
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def shared_heads(self) -> dict[str, str]:
        return {"points": "point_head", "image": "image_head"}

    def point_projections(self, point_views: Tensor) -> Tensor:
        """point_views: (B, 2, N, 3) -> (2B, P): rows 0..B-1 the first views, B..2B-1 the second."""
        if point_views.dim() != 4 or point_views.shape[1] != 2:
            raise ValueError(f"CrossPoint needs point_views (B, 2, N, 3), got {tuple(point_views.shape)}")
        both = torch.cat([point_views[:, 0], point_views[:, 1]], dim=0)
        return self.point_head(self.backbone(both, need_local=False).global_)

    def image_projections(self, images: Tensor) -> Tensor:
        """images: (B, k, C, S, S) or (B, C, S, S) -> (B, P)."""
        if images.dim() == 5:
            images = images[:, 0]
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.image_head(self.image_encoder(images).global_)

    def losses(self, point_projection: Tensor, image_projection: Tensor) -> dict[str, Tensor]:
        """point_projection: (2B, P) from ``point_projections``, image_projection: (B, P)."""
        half = image_projection.shape[0]
        first, second = point_projection[:half], point_projection[half:]
        imid = nt_xent(first, second, self.temperature, self.gather_distributed)
        cmid = nt_xent((first + second) / 2, image_projection, self.temperature, self.gather_distributed)
        return {"loss": imid + cmid, "imid": imid, "cmid": cmid}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if "point_views" not in batch or "images" not in batch:
            raise ValueError("CrossPoint needs batches with point_views and images (a prepared store, point_views=2)")
        return self.losses(self.point_projections(batch["point_views"]), self.image_projections(batch["images"]))
