"""CrossPoint (Afham et al., CVPR 2022): contrast two augmented point views with each other and
with a rendered image of the same object.

For a batch of B objects, the point backbone f and its projection head g give, for two point
augmentations, z1 = g(f(x1)) and z2 = g(f(x2)) (both views go through the network as one batch
of 2B, as in the reference code, so BatchNorm sees both); the image encoder h and its head q
give z_img = q(h(image)). With NT-Xent at temperature t (``losses.nt_xent``):

    L_imid = NT-Xent(z1, z2)                        (intra-modal instance discrimination)
    L_cmid = NT-Xent((z1 + z2) / 2, z_img)          (cross-modal instance discrimination)

With ``images_per_object`` n > 1 (Table 6), z_img is the mean of the projections of n views of
the object drawn without replacement: z_img = (1/n) sum_v q(h(image_v)).
    L      = L_imid + L_cmid

Projection heads: Linear -> BatchNorm -> ReLU -> Linear to 256-d (hidden 512 unless
``point_hidden_dim`` sets the point head's own width; the official code: 1024 for points, 512
without biases for images: ``image_head_bias=False``). The exported
backbone is the point network f; its global feature is what evaluation uses.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from pretext3d.losses import nt_xent
from pretext3d.models import ProjectionHead, backbone_label, backbone_module, image_encoder_module
from pretext3d.pretext.base import DataNeeds, MethodSettingsError, PretextMethod, register_method

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
    hidden_dim: the heads' hidden width (point_hidden_dim: the point head's, when it differs);
    image_head_bias: whether the image head's linear layers have biases; images_per_object: n
    views per object whose image projections are averaged (the paper's n, Table 6); gather_distributed: under torchrun, negatives span the global batch. backbone and
    image_encoder may also be modules (encoders shared in a composed recipe).
    """

    name = "crosspoint"
    needs = DataNeeds(images=True, point_views=2, views=1)

    @classmethod
    def data_needs(cls, settings: Mapping[str, Any]) -> DataNeeds:
        """Two point views and ``images_per_object`` rendered views per object."""
        n = settings.get("images_per_object", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise MethodSettingsError(f"model.images_per_object must be an integer >= 1, got {n!r}")
        return DataNeeds(images=True, point_views=2, views=n)

    def __init__(self, backbone: str | nn.Module = "dgcnn", backbone_config: dict[str, Any] | None = None,
                 image_encoder: str | nn.Module = "resnet50", projection_dim: int = 256, hidden_dim: int = 512,
                 temperature: float = 0.1, gather_distributed: bool = True, image_weights: str | None = None,
                 point_hidden_dim: int | None = None, image_head_bias: bool = True, images_per_object: int = 1):
        super().__init__()
        self.data_needs({"images_per_object": images_per_object})  # checks it
        self.images_per_object = images_per_object
        if backbone in POINTWISE_BACKBONES:
            raise ValueError(f"CrossPoint contrasts global features: use pointnet or dgcnn, not the point-wise {backbone!r}")
        self.backbone_name = backbone_label(backbone)
        self.backbone_config = dict(backbone_config or {})
        self.backbone = backbone_module(backbone, self.backbone_config)
        self.point_head = ProjectionHead(self.backbone.global_dim, point_hidden_dim or hidden_dim, projection_dim)
        self.image_encoder = image_encoder_module(image_encoder, image_weights)
        self.image_head = ProjectionHead(self.image_encoder.feature_dim, hidden_dim, projection_dim, bias=image_head_bias)
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
        """images: (B, k, C, S, S) or (B, C, S, S) -> (B, P): the mean projection of the first
        n = images_per_object views (k >= n; all views go through the encoder as one batch)."""
        if images.dim() == 4:
            images = images[:, None]
        n = self.images_per_object
        if images.shape[1] < n:
            raise ValueError(f"CrossPoint with images_per_object={n} needs {n} views per object, got {images.shape[1]}")
        batch = images.shape[0]
        views = images[:, :n].flatten(0, 1)  # (B * n, C, S, S), object-major
        if views.shape[1] == 1:
            views = views.expand(-1, 3, -1, -1)
        projections = self.image_head(self.image_encoder(views).global_)
        return projections.view(batch, n, -1).mean(dim=1)

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
