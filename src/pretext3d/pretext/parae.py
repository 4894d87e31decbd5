"""ParAE (Eckart et al.): self-supervised point-wise partitions as a Gaussian mixture.

A point-wise network gives logits S (N x J) per cloud; gamma = softmax(S) are soft partitions;
the GMM (pi, mu, full Sigma) follows in closed form (``losses.gmm_params``) and the loss is the
negative log-likelihood of the input points under it (``losses.gmm_nll``). The exported backbone
is the point-wise network; its pooled encoder feature is the global feature for evaluation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pretext3d.losses import GMMNLLLoss
from pretext3d.models import backbone_label, backbone_module
from pretext3d.pretext.base import DataNeeds, PretextMethod, register_method

__all__ = ["ParAE"]


@register_method
class ParAE(PretextMethod):
    """batch["points"]: (B, N, 3) -> {"loss", "nll"}.

    backbone: a point-wise registry name ("pointnet-pointwise", ...) or module (shared in a
    composed recipe; its point-wise outputs must number J); partitions: J;
    ridge: added to every covariance (stability of thin or empty partitions).
    """

    name = "parae"
    needs = DataNeeds()

    def __init__(self, backbone: str | nn.Module = "pointnet-pointwise", partitions: int = 32, ridge: float = 1e-4,
                 backbone_config: dict[str, Any] | None = None):
        super().__init__()
        self.backbone_name = backbone_label(backbone)
        self.backbone_config = {"num_outputs": partitions, **(backbone_config or {})}
        self.backbone = backbone_module(backbone, self.backbone_config)
        self.criterion = GMMNLLLoss(ridge)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        points = batch["points"]
        logits = self.backbone(points).point_logits
        if logits is None:
            raise ValueError(f"backbone {self.backbone_name!r} has no point-wise outputs; ParAE needs one")
        with torch.autocast(points.device.type, enabled=False):  # the GMM fit needs float32 (Cholesky)
            nll = self.criterion(points.float(), logits.float())
        return {"loss": nll, "nll": nll}
