"""DGCNN (Wang et al. 2019): the classification encoder and the part-segmentation network."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d.geometry.neighbors import knn
from pretext3d.models.edgeconv import EdgeConv, EdgeImpl
from pretext3d.models.layers import (
    LEAKY_SLOPE,
    PointFeatures,
    PointwiseBlock,
    Pooling,
    join_point_features,
    pointwise_and_pool,
    pooled_width,
)

__all__ = ["DGCNN", "DGCNNSeg", "SpatialTransform", "plain_knn"]


def plain_knn(x: Tensor, k: int) -> Tensor:
    """kNN as the published code does it: full (B, N, N) distance matrix + topk. x: (B, N, C)."""
    inner = torch.matmul(x, x.transpose(1, 2))
    sq = (x * x).sum(-1, keepdim=True)
    neg_dist = 2 * inner - sq - sq.transpose(1, 2)
    return neg_dist.topk(k, dim=-1).indices


def _neighbours(x: Tensor, k: int, impl: EdgeImpl) -> Tensor:
    return plain_knn(x.detach(), k) if impl == "plain" else knn(x, k)


class DGCNN(nn.Module):
    """DGCNN encoder: EdgeConv 64, 64, 128, 256 (dynamic kNN graph in feature space), concat
    (512) -> shared layer to ``emb_dims`` -> global feature concat(max, avg) over points.

    points: (B, N, 3), features: optional (B, N, F) extra per-point inputs (e.g. normals; the
    first graph is built on xyz only)  ->  PointFeatures(global_ (B, 2*emb_dims) for max+avg,
    local (B, N, emb_dims), centres = points, stages (B, N, sum(widths)): the EdgeConv outputs).
    """

    def __init__(
        self,
        k: int = 20,
        emb_dims: int = 1024,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 64, 128, 256),
        pooling: Pooling = "max+avg",
        impl: EdgeImpl = "fast",
    ):
        super().__init__()
        self.k = k
        self.emb_dims = emb_dims
        self.in_channels = in_channels
        self.pooling: Pooling = pooling
        dims = [in_channels, *widths]
        self.edge_convs = nn.ModuleList(EdgeConv(a, [b]) for a, b in zip(dims[:-1], dims[1:]))
        self.fuse = PointwiseBlock(sum(widths), emb_dims, act="leaky_relu")
        self.impl = impl

    @property
    def impl(self) -> EdgeImpl:
        return self._impl

    @impl.setter
    def impl(self, value: EdgeImpl) -> None:
        self._impl = value
        for block in self.modules():
            if isinstance(block, EdgeConv):
                block.impl = value

    @property
    def global_dim(self) -> int:
        return pooled_width(self.emb_dims, self.pooling)

    def forward(self, points: Tensor, features: Tensor | None = None, need_local: bool = True) -> PointFeatures:
        """need_local=False skips materialising ``local`` during inference (faster embedding)."""
        x = join_point_features(points, features, self.in_channels, "DGCNN")
        idx = _neighbours(points, self.k, self.impl)
        stages = []
        for block in self.edge_convs:
            if stages:
                idx = _neighbours(stages[-1], self.k, self.impl)
            x = block(x, idx)
            stages.append(x)
        joined = torch.cat(stages, dim=-1)  # (B, N, sum(widths))
        local, global_ = pointwise_and_pool(self.fuse, joined, self.pooling, need_local)
        return PointFeatures(global_=global_, local=local, centres=points, stages=joined if need_local else None)


class SpatialTransform(nn.Module):
    """DGCNN's 3x3 input transform: EdgeConv(64, 128) -> max over k -> 1024 -> max over points
    -> 512 -> 256 -> 9, initialised to the identity. points: (B, N, 3), idx -> (B, 3, 3)."""

    def __init__(self):
        super().__init__()
        self.edge = EdgeConv(3, [64, 128])
        self.point_mlp = PointwiseBlock(128, 1024, act="leaky_relu")
        self.fc1 = nn.Linear(1024, 512, bias=False)
        self.bn1 = nn.BatchNorm1d(512)
        self.fc2 = nn.Linear(512, 256, bias=False)
        self.bn2 = nn.BatchNorm1d(256)
        self.out = nn.Linear(256, 9)
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():
            self.out.bias.copy_(torch.eye(3).flatten())

    def forward(self, points: Tensor, idx: Tensor) -> Tensor:
        h = self.point_mlp(self.edge(points, idx)).amax(dim=1)
        h = F.leaky_relu(self.bn1(self.fc1(h)), LEAKY_SLOPE)
        h = F.leaky_relu(self.bn2(self.fc2(h)), LEAKY_SLOPE)
        return self.out(h).view(-1, 3, 3)


class DGCNNSeg(nn.Module):
    """DGCNN part-segmentation network (point-wise outputs).

    Input transform -> EdgeConv(64, 64) -> EdgeConv(64, 64) -> EdgeConv(64) -> concat (192)
    -> ``emb_dims`` -> max over points (the global feature); per point: [global ; category
    embedding (64) ; the three EdgeConv features] -> 256 -> 256 -> 128 -> ``num_outputs``.

    points: (B, N, 3); categories: (B, num_categories) one-hot object category (required when
    num_categories > 0)  ->  PointFeatures(global_ (B, emb_dims), local (B, N, 192),
    centres = points, point_logits (B, N, num_outputs)).
    """

    def __init__(
        self,
        num_outputs: int = 50,
        num_categories: int = 16,
        k: int = 40,
        emb_dims: int = 1024,
        transform: bool = True,
        dropout: float = 0.5,
        impl: EdgeImpl = "fast",
    ):
        super().__init__()
        self.k = k
        self.num_categories = num_categories
        self.transform_net = SpatialTransform() if transform else None
        self.edge_convs = nn.ModuleList([EdgeConv(3, [64, 64]), EdgeConv(64, [64, 64]), EdgeConv(64, [64])])
        self.global_mlp = PointwiseBlock(192, emb_dims, act="leaky_relu")
        self.category_mlp = PointwiseBlock(num_categories, 64, act="leaky_relu") if num_categories else None
        head_in = emb_dims + (64 if num_categories else 0) + 192
        self.head = nn.ModuleList(
            [PointwiseBlock(head_in, 256, "leaky_relu"), PointwiseBlock(256, 256, "leaky_relu"),
             PointwiseBlock(256, 128, "leaky_relu")]
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(128, num_outputs, bias=False)
        self.emb_dims = emb_dims
        self.impl = impl

    impl = DGCNN.impl

    @property
    def global_dim(self) -> int:
        return self.emb_dims

    def forward(self, points: Tensor, categories: Tensor | None = None, need_local: bool = True) -> PointFeatures:
        """need_local=False: the global feature only (no per-point head; point_logits is None)."""
        join_point_features(points, None)  # shape check
        x = points
        if self.transform_net is not None:
            rotation = self.transform_net(points, _neighbours(points, self.k, self.impl))
            x = torch.bmm(points, rotation)
        stages = []
        for block in self.edge_convs:
            x = block(x, _neighbours(x, self.k, self.impl))
            stages.append(x)
        local = torch.cat(stages, dim=-1)
        global_ = self.global_mlp(local).amax(dim=1)
        if not need_local:
            return PointFeatures(global_=global_, local=None, centres=points)
        per_cloud = [global_]
        if self.category_mlp is not None:
            if categories is None or categories.shape != (points.shape[0], self.num_categories):
                raise ValueError(f"categories must be one-hot (B, {self.num_categories})")
            per_cloud.append(self.category_mlp(categories.to(points.dtype)))
        per_cloud_t = torch.cat(per_cloud, dim=-1).unsqueeze(1).expand(-1, points.shape[1], -1)
        h = torch.cat([per_cloud_t, local], dim=-1)
        h = self.dropout(self.head[0](h))
        h = self.dropout(self.head[1](h))
        h = self.head[2](h)
        return PointFeatures(global_=global_, local=local, centres=points, point_logits=self.classifier(h))
