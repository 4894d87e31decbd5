"""Jing et al. (Self-supervised Feature Learning by Cross-modality and Cross-view Correspondences,
CVPRW 2021), the image and point cloud variant: cross-modality (CM) and cross-view (CV) invariance.

Networks: F_img, a ResNet-18 (512-d pooled feature); F_p, a DGCNN with EdgeConv widths
(64, 64, 64, 128), a 512-d per-point layer and a max-pool (512-d); F_f, a classifier
Linear(1024 -> 256) -> ReLU -> Linear(256 -> 2) on the concatenation [f_img ; f_p] that says
whether an image and a point cloud show the same object.

Each sample b brings its point cloud P_b and two rendered views I_b, I'_b of the same object;
the view of a *different* object is I_{b+1} (the first view of the next sample in the batch,
cyclically: one extra view is read per sample instead of two, and every sample is an other
object's negative once). With image features a = F_img(I_b), p = F_img(I'_b), n = F_img(I_{b+1})
and the cloud feature q = F_p(P_b):

    L_cv = 1/B sum_b max(0, |a - p| - |a - n| + alpha)            (triplet on image features)
    L_cm = CE(F_f[a; q], same) + CE(F_f[p; q], same) + CE(F_f[n; q], different)   (averaged
           over the 3B pairs; CE over the classifier's two logits: a binary cross entropy)
    L    = L_cv + beta * L_cm

Eq. 1 takes the squared distances between the raw image features (``normalize_triplet=False``
and ``squared_distances=True``, the paper recipe; the defaults L2-normalise the features, since
with raw features the network can meet any margin by scaling them, and use unsquared
distances, L_cv above). The paper
gives neither alpha nor beta: alpha = 0.2 (FaceNet's margin for unit vectors) and beta = 1 are
choices; Eq. 2 sums the three pairs of a sample while the code averages over the 3B pairs, so
``cm_weight=3`` (the paper recipe) is the paper's form with beta = 1. The exported backbone is F_p.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d.losses import triplet_loss
from pretext3d.models import backbone_label, backbone_module, image_encoder_module
from pretext3d.pretext.base import DataNeeds, PretextMethod, register_method

__all__ = ["CMCV", "JING_DGCNN", "cross_modal_loss"]

# F_p of the paper: 4 EdgeConv layers (64, 64, 64, 128), a 512-d point-wise layer, max-pool
JING_DGCNN: dict[str, Any] = {"k": 20, "widths": [64, 64, 64, 128], "emb_dims": 512, "pooling": "max"}


def cross_modal_loss(logits: Tensor, same: Tensor) -> tuple[Tensor, Tensor]:
    """logits: (P, 2) of F_f (column 1: "same object"), same: (P,) bool -> (mean cross entropy,
    accuracy). Softmax over two logits is a sigmoid of their difference, so this is

        L = -1/P sum_i [ y_i log s(z1 - z0) + (1 - y_i) log(1 - s(z1 - z0)) ]
    """
    loss = F.cross_entropy(logits, same.long())
    accuracy = (logits.argmax(1) == same.long()).float().mean()
    return loss, accuracy


@register_method
class CMCV(PretextMethod):
    """batch["points"] (B, N, 3), batch["images"] (B, 2, C, S, S) (two views of each object)
    -> {"loss", "cross_view", "cross_modal", "pair_accuracy", "d_positive", "d_negative"}.

    backbone / backbone_config: F_p (default the paper's DGCNN, ``JING_DGCNN``); image_encoder:
    F_img (resnet18 | resnet50); image_weights: optional torchvision weights to start F_img from;
    margin: alpha; cm_weight: beta; fusion_hidden: F_f's hidden width; normalize_triplet:
    L2-normalise F_img's features before the triplet; squared_distances: the triplet on squared
    distances (Eq. 1). backbone and image_encoder
    may also be modules (encoders shared in a composed recipe).
    """

    name = "cmcv"
    needs = DataNeeds(images=True, views=2)

    def __init__(self, backbone: str | nn.Module = "dgcnn", backbone_config: dict[str, Any] | None = None,
                 image_encoder: str | nn.Module = "resnet18", image_weights: str | None = None, margin: float = 0.2,
                 cm_weight: float = 1.0, fusion_hidden: int = 256, normalize_triplet: bool = True,
                 squared_distances: bool = False):
        super().__init__()
        self.backbone_name = backbone_label(backbone)
        self.backbone_config = dict(JING_DGCNN if backbone_config is None and backbone == "dgcnn" else backbone_config or {})
        self.backbone = backbone_module(backbone, self.backbone_config)
        self.image_encoder = image_encoder_module(image_encoder, image_weights)
        self.fusion = nn.Sequential(nn.Linear(self.image_encoder.feature_dim + self.backbone.global_dim, fusion_hidden),
                                    nn.ReLU(), nn.Linear(fusion_hidden, 2))
        self.margin, self.cm_weight, self.normalize_triplet = margin, cm_weight, normalize_triplet
        self.squared_distances = squared_distances

    def pair_classifier(self) -> nn.Module:
        """F_f: [image feature; cloud feature] -> 2 logits (1: the same object)."""
        return self.fusion

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if "points" not in batch or "images" not in batch or batch["images"].dim() != 5 or batch["images"].shape[1] < 2:
            raise ValueError("CMCV needs batches with points and two views per object: images (B, 2, C, S, S) "
                             "(a prepared store with at least 2 views)")
        images = batch["images"]
        if images.shape[0] < 2:
            raise ValueError("CMCV takes the negative view from another sample of the batch: batch_size must be >= 2")
        if images.shape[2] == 1:
            images = images.expand(-1, -1, 3, -1, -1)
        n_batch = images.shape[0]
        # one pass for both views (BatchNorm sees both): rows 0..B-1 first views, B..2B-1 second
        pictures = self.image_encoder(torch.cat([images[:, 0], images[:, 1]])).global_
        anchor, positive = pictures[:n_batch], pictures[n_batch:]
        negative = anchor.roll(-1, dims=0)  # the first view of the next object
        cloud = self.backbone(batch["points"], need_local=False).global_
        cross_view, d_pos, d_neg = self._cross_view(anchor, positive, negative)
        pairs = torch.cat([anchor, positive, negative])
        logits = self.fusion(torch.cat([pairs, cloud.repeat(3, 1)], dim=1))
        same = torch.arange(3 * n_batch, device=logits.device) < 2 * n_batch
        cross_modal, accuracy = cross_modal_loss(logits, same)
        return {"loss": cross_view + self.cm_weight * cross_modal, "cross_view": cross_view,
                "cross_modal": cross_modal, "pair_accuracy": accuracy, "d_positive": d_pos, "d_negative": d_neg}

    def _cross_view(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, D) each -> triplet loss, mean anchor-positive and anchor-negative distances."""
        if self.normalize_triplet:
            anchor, positive, negative = (F.normalize(x, dim=1) for x in (anchor, positive, negative))
        loss = triplet_loss(anchor, positive, negative, self.margin, squared=self.squared_distances)
        with torch.no_grad():
            return loss, (anchor - positive).norm(dim=1).mean(), (anchor - negative).norm(dim=1).mean()
