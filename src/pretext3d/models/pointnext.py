"""PointNeXt (Qian et al., NeurIPS 2022) in pure torch: FPS and ball query run on any device.

Encoder (``PointNeXt``, S by default): a stem (per-point Linear+BN+ReLU to ``width``), then one
stage per further stride. A stage is a set abstraction (FPS keeps N/stride centres; each
gathers ``neighbours`` points within its radius by ball query; an MLP of [(p_j - c) / r, f_j],
the *normalised* relative position joined with the neighbour's feature; max over the
neighbours; a residual from the centre's own feature) followed by ``blocks[i]`` inverted-
residual blocks (InvResMLP: local aggregation on the stage's points, then Linear x4 -> Linear
back, residual). The radius grows by ``radius_scaling`` at every downsampling stage
(0.15 x 1.5^i for PointNeXt-S), and the width doubles.

PointNeXt-S: widths 32-64-128-256-512, strides 1-2-2-2-2, radius 0.15, 32 neighbours, no
InvResMLP block (``blocks=(0, 0, 0, 0, 0)``); PointNeXt-B adds (0, 1, 2, 1, 1) blocks.
Choices the paper leaves open: the set abstraction's MLP is two layers (C_in + 3 -> C_out / 2
-> C_out, the last without activation before the residual sum); the global feature pools the
last stage (max+avg by default, as our other backbones).

``PointNeXtSeg`` adds the point-wise decoder: feature propagation from each stage to the one
before (inverse-distance weights of the 3 nearest coarse points, joined with the skip feature,
two Linear+BN+ReLU layers), back to all N points, and an optional per-point classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from pretext3d.geometry.neighbors import ball_query, knn
from pretext3d.geometry.sampling import farthest_point_sample
from pretext3d.models.layers import PointFeatures, PointwiseBlock, Pooling, join_point_features, pool_points, pooled_width

__all__ = ["PointNeXt", "PointNeXtSeg", "SetAbstraction", "InvResMLP", "group", "interpolate"]


def group(values: Tensor, idx: Tensor) -> Tensor:
    """values: (B, N, C), idx: (B, M, K) -> (B, M, K, C)."""
    batch = torch.arange(values.shape[0], device=values.device)[:, None, None]
    return values[batch, idx]


def relative_group(points: Tensor, features: Tensor, centres: Tensor, idx: Tensor, radius: float) -> Tensor:
    """[(p_j - c) / radius, f_j] for each centre c and neighbour j: (B, M, K, 3 + C)."""
    offsets = (group(points, idx) - centres.unsqueeze(2)) / radius
    return torch.cat([offsets, group(features, idx)], -1)


def interpolate(coarse_points: Tensor, coarse_features: Tensor, fine_points: Tensor) -> Tensor:
    """Inverse-distance weighted mean of the 3 nearest coarse features at each fine point:
    w_i = (1 / (d_i^2 + 1e-8)) / sum_j 1 / (d_j^2 + 1e-8).  (B, M, C) at (B, M, 3) -> (B, N, C)."""
    k = min(3, coarse_points.shape[1])
    idx = knn(coarse_points, k, query=fine_points)  # (B, N, k)
    squared = (group(coarse_points, idx) - fine_points.unsqueeze(2)).square().sum(-1)
    weights = 1.0 / (squared + 1e-8)
    weights = weights / weights.sum(-1, keepdim=True)
    return (group(coarse_features, idx) * weights.unsqueeze(-1)).sum(2)


class SetAbstraction(nn.Module):
    """points (B, N, 3), features (B, N, C_in) -> centres (B, N/stride, 3), features (B, N/stride, C_out)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, radius: float, neighbours: int):
        super().__init__()
        self.stride, self.radius, self.neighbours = stride, radius, neighbours
        self.mlp = nn.Sequential(
            PointwiseBlock(in_channels + 3, out_channels // 2, act="relu"),
            PointwiseBlock(out_channels // 2, out_channels, act="none"),
        )
        self.skip = PointwiseBlock(in_channels, out_channels, act="none") if in_channels != out_channels else nn.Identity()

    def forward(self, points: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        n_centres = max(1, points.shape[1] // self.stride)
        chosen = farthest_point_sample(points, n_centres)  # (B, M), no gradient
        centres = group(points, chosen.unsqueeze(-1)).squeeze(2)
        idx = ball_query(points, centres, self.radius, self.neighbours)
        pooled = self.mlp(relative_group(points, features, centres, idx, self.radius)).amax(dim=2)
        own = group(features, chosen.unsqueeze(-1)).squeeze(2)
        return centres, torch.relu(pooled + self.skip(own))


class InvResMLP(nn.Module):
    """Inverted residual block on fixed points: features (B, N, C) -> (B, N, C).
    f' = ReLU(f + MLP_{4C -> C}(MLP_{C -> 4C}(max_j Linear([(p_j - p_i) / r, f_j]))))."""

    def __init__(self, channels: int, radius: float, neighbours: int, expansion: int = 4):
        super().__init__()
        self.radius, self.neighbours = radius, neighbours
        self.aggregate = PointwiseBlock(channels + 3, channels, act="relu")
        self.expand = PointwiseBlock(channels, channels * expansion, act="relu")
        self.project = PointwiseBlock(channels * expansion, channels, act="none")

    def forward(self, points: Tensor, features: Tensor) -> Tensor:
        idx = ball_query(points, points, self.radius, self.neighbours)
        local = self.aggregate(relative_group(points, features, points, idx, self.radius)).amax(dim=2)
        return torch.relu(features + self.project(self.expand(local)))


@dataclass
class _Stage:
    points: Tensor  # (B, M, 3)
    features: Tensor  # (B, M, C)


class PointNeXt(nn.Module):
    """points: (B, N, 3), features: optional (B, N, F) (e.g. normals) -> PointFeatures(global_
    (B, D) pooled from the last stage, local (B, N / prod(strides), C_last), centres the last
    stage's points). ``stages`` gives the points and features of every stage (for decoders)."""

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 32,
        strides: Sequence[int] = (1, 2, 2, 2, 2),
        blocks: Sequence[int] = (0, 0, 0, 0, 0),
        radius: float = 0.15,
        radius_scaling: float = 1.5,
        neighbours: int = 32,
        pooling: Pooling = "max+avg",
    ):
        super().__init__()
        if len(strides) != len(blocks) or strides[0] != 1:
            raise ValueError(f"PointNeXt needs one block count per stride and a first stride of 1, got {strides}, {blocks}")
        self.in_channels, self.pooling = in_channels, pooling
        self.widths = [width * 2**i for i in range(len(strides))]
        self.stem = PointwiseBlock(in_channels, width, act="relu")
        # stage i > 0 abstracts with radius * scaling^(i - 1); a stage's blocks use its radius
        self.stage_radii = [radius * radius_scaling ** max(0, i - 1) for i in range(len(strides))]
        self.abstractions = nn.ModuleList(
            SetAbstraction(self.widths[i - 1], self.widths[i], strides[i], self.stage_radii[i], neighbours)
            for i in range(1, len(strides))
        )
        self.blocks = nn.ModuleList(
            nn.ModuleList(InvResMLP(self.widths[i], self.stage_radii[i], neighbours) for _ in range(count))
            for i, count in enumerate(blocks)
        )

    @property
    def global_dim(self) -> int:
        return pooled_width(self.widths[-1], self.pooling)

    def stages(self, points: Tensor, features: Tensor | None = None) -> list[_Stage]:
        """The points and features of every stage, finest first."""
        x = self.stem(join_point_features(points, features, self.in_channels, "PointNeXt"))
        for block in self.blocks[0]:
            x = block(points, x)
        out = [_Stage(points, x)]
        for abstraction, blocks in zip(self.abstractions, self.blocks[1:]):
            points, x = abstraction(points, x)
            for block in blocks:
                x = block(points, x)
            out.append(_Stage(points, x))
        return out

    def forward(self, points: Tensor, features: Tensor | None = None, need_local: bool = True) -> PointFeatures:
        last = self.stages(points, features)[-1]
        return PointFeatures(global_=pool_points(last.features, self.pooling), local=last.features if need_local else None,
                             centres=last.points)


class PointNeXtSeg(nn.Module):
    """Point-wise PointNeXt: the encoder, feature propagation back to all N points, and (when
    ``num_outputs``) a per-point classifier. points (B, N, 3) -> PointFeatures(global_ from the
    encoder, local (B, N, width) per-point features, centres = points, point_logits (B, N, J))."""

    def __init__(self, num_outputs: int = 0, **encoder_config):
        super().__init__()
        self.encoder = PointNeXt(**encoder_config)
        widths = self.encoder.widths
        self.decoder = nn.ModuleList(
            nn.Sequential(PointwiseBlock(widths[i + 1] + widths[i], widths[i]), PointwiseBlock(widths[i], widths[i]))
            for i in range(len(widths) - 1)
        )
        self.head = nn.Sequential(PointwiseBlock(widths[0], widths[0]), nn.Linear(widths[0], num_outputs)) if num_outputs else None
        self.in_channels = self.encoder.in_channels

    @property
    def global_dim(self) -> int:
        return self.encoder.global_dim

    def forward(self, points: Tensor, features: Tensor | None = None, need_local: bool = True) -> PointFeatures:
        stages = self.encoder.stages(points, features)
        global_ = pool_points(stages[-1].features, self.encoder.pooling)
        if not need_local and self.head is None:
            return PointFeatures(global_=global_, local=None, centres=points)
        x = stages[-1].features
        for i in range(len(stages) - 2, -1, -1):
            up = interpolate(stages[i + 1].points, x, stages[i].points)
            x = self.decoder[i](torch.cat([up, stages[i].features], -1))
        logits = self.head(x) if self.head is not None else None
        return PointFeatures(global_=global_, local=x, centres=points, point_logits=logits)
