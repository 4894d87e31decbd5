"""PointNet (Qi et al. 2017) without the input/feature transform nets, as used by CrossPoint."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from pretext3d.models.layers import (
    batch_norm_act,
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
    """Point-wise PointNet (DeepGMR's / ParAE's partition network): shared encoder layers, the
    max-pooled encoder output appended to every point's ``skip_layer`` feature, a decoder of
    shared layers and a final linear map to ``num_outputs`` values per point.

    skip_layer: which encoder layer's per-point output joins the pooled context (-1, the last, as
    in DeepGMR; 1, the second 64-d layer, as in PointNet's segmentation network).

    points: (B, N, 3), features: optional (B, N, F)  ->  PointFeatures(global_ (B, D) pooled
    encoder output, local (B, N, encoder_widths[-1]), centres = points,
    point_logits (B, N, num_outputs)). With ``need_local=False`` only global_ is computed (no
    decoder pass; point_logits and local are None): what feature extraction needs.
    """

    def __init__(
        self,
        num_outputs: int = 32,
        in_channels: int = 3,
        encoder_widths: Sequence[int] = (64, 128, 256, 64),
        decoder_widths: Sequence[int] = (512, 256, 128),
        pooling: Pooling = "max",
        skip_layer: int = -1,
    ):
        super().__init__()
        enc = [in_channels, *encoder_widths]
        self.encoder = nn.ModuleList(PointwiseBlock(a, b, act="relu") for a, b in zip(enc[:-1], enc[1:]))
        if not -len(encoder_widths) <= skip_layer < len(encoder_widths):
            raise ValueError(f"skip_layer {skip_layer} is not an index of the {len(encoder_widths)} encoder layers")
        self.skip_layer = skip_layer % len(encoder_widths)
        self.skip_dim = encoder_widths[self.skip_layer]
        dec = [self.skip_dim + encoder_widths[-1], *decoder_widths]
        self.decoder = nn.ModuleList(PointwiseBlock(a, b, act="relu") for a, b in zip(dec[:-1], dec[1:]))
        self.classifier = nn.Linear(dec[-1], num_outputs)
        self.in_channels = in_channels
        self.pooling: Pooling = pooling
        self.local_dim = encoder_widths[-1]

    @property
    def global_dim(self) -> int:
        return pooled_width(self.local_dim, self.pooling)

    def forward(self, points: Tensor, features: Tensor | None = None, need_local: bool = True) -> PointFeatures:
        x = join_point_features(points, features, self.in_channels, "PointNetPointwise")
        skip = x
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i == self.skip_layer:
                skip = x
        global_ = pool_points(x, self.pooling)
        if not need_local:
            return PointFeatures(global_=global_, local=None, centres=points)
        # the max over points is global_'s first half unless pooling is avg alone: not taken twice
        context = x.amax(dim=1) if self.pooling == "avg" else global_[:, : x.shape[-1]]
        h = self._first_decoder_layer(skip, context)
        for layer in self.decoder[1:]:
            h = layer(h)
        return PointFeatures(global_=global_, local=x, centres=points, point_logits=self.classifier(h))

    def _first_decoder_layer(self, skip: Tensor, context: Tensor) -> Tensor:
        """decoder[0] applied to concat(skip (B, N, S), context (B, G) per point) -> (B, N, O).

        W [s; c] = W_s s + W_c c: the context's part is computed once per cloud instead of once
        per point (same weights and result as the concatenation; ParAE's 1088-wide input costs
        17x less this way)."""
        block = self.decoder[0]
        weight = block.linear.weight
        per_cloud = context @ weight[:, self.skip_dim:].t()
        if block.linear.bias is not None:
            per_cloud = per_cloud + block.linear.bias
        y = (skip @ weight[:, : self.skip_dim].t() + per_cloud[:, None, :]).reshape(-1, weight.shape[0])
        return batch_norm_act(y, block.bn, block.act).view(*skip.shape[:2], -1)
