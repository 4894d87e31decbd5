"""PointNet (Qi et al. 2017) without the input/feature transform nets, as used by CrossPoint."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from pretext3d.models.layers import (
    PointFeatures,
    PointwiseBlock,
    Pooling,
    join_point_features,
    pointwise_and_pool,
    pooled_width,
    pool_points,
)

__all__ = ["PointNet", "PointNetPointwise"]


class PointNet(nn.Module):
    """Global PointNet encoder: shared layers 64-64-64-128-``emb_dims`` (Linear+BN+ReLU per point),
    then pooling over points (concat(max, avg) by default; CrossPoint's own PointNet uses max).

    points: (B, N, 3), features: optional (B, N, F)  ->  PointFeatures(global_ (B, D),
    local (B, N, emb_dims), centres = points).
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 64, 64, 128),
        emb_dims: int = 1024,
        pooling: Pooling = "max+avg",
    ):
        super().__init__()
        dims = [in_channels, *widths, emb_dims]
        self.layers = nn.ModuleList(PointwiseBlock(a, b, act="relu") for a, b in zip(dims[:-1], dims[1:]))
        self.in_channels = in_channels
        self.emb_dims = emb_dims
        self.pooling: Pooling = pooling

    @property
    def global_dim(self) -> int:
        return pooled_width(self.emb_dims, self.pooling)

    def forward(self, points: Tensor, features: Tensor | None = None, need_local: bool = True) -> PointFeatures:
        """need_local=False skips materialising ``local`` during inference (faster embedding)."""
        x = join_point_features(points, features, self.in_channels, "PointNet")
        for layer in self.layers[:-1]:
            x = layer(x)
        local, global_ = pointwise_and_pool(self.layers[-1], x, self.pooling, need_local)
        return PointFeatures(global_=global_, local=local, centres=points)


class PointNetPointwise(nn.Module):
    """Point-wise PointNet (the segmentation layout, as in DeepGMR/ParAE): an encoder of shared
    layers, the max-pooled encoder output appended to every point, a decoder of shared layers
    and a final linear map to ``num_outputs`` values per point.

    points: (B, N, 3), features: optional (B, N, F)  ->  PointFeatures(global_ (B, D) pooled
    encoder output, local (B, N, encoder_widths[-1]), centres = points,
    point_logits (B, N, num_outputs)).
    """

    def __init__(
        self,
        num_outputs: int = 32,
        in_channels: int = 3,
        encoder_widths: Sequence[int] = (64, 128, 256, 64),
        decoder_widths: Sequence[int] = (512, 256, 128),
        pooling: Pooling = "max",
    ):
        super().__init__()
        enc = [in_channels, *encoder_widths]
        self.encoder = nn.ModuleList(PointwiseBlock(a, b, act="relu") for a, b in zip(enc[:-1], enc[1:]))
        dec = [2 * encoder_widths[-1], *decoder_widths]
        self.decoder = nn.ModuleList(PointwiseBlock(a, b, act="relu") for a, b in zip(dec[:-1], dec[1:]))
        self.classifier = nn.Linear(dec[-1], num_outputs)
        self.in_channels = in_channels
        self.pooling: Pooling = pooling
        self.local_dim = encoder_widths[-1]

    @property
    def global_dim(self) -> int:
        return pooled_width(self.local_dim, self.pooling)

    def forward(self, points: Tensor, features: Tensor | None = None, need_local: bool = True) -> PointFeatures:
        """need_local is accepted for a uniform interface; the point-wise outputs need local."""
        x = join_point_features(points, features, self.in_channels, "PointNetPointwise")
        for layer in self.encoder:
            x = layer(x)
        local = x
        context = local.amax(dim=1, keepdim=True).expand_as(local)
        h = torch.cat([local, context], dim=-1)
        for layer in self.decoder:
            h = layer(h)
        return PointFeatures(
            global_=pool_points(local, self.pooling), local=local, centres=points, point_logits=self.classifier(h)
        )
