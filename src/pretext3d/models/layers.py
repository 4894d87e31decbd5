"""Building blocks shared by the point backbones (channels-last: features are (..., C))."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d.models.batchnorm_act import (
    bn_update_factor,
    can_fuse_batch_norm,
    fused_batch_norm_act,
    fused_batch_norm_act_pool,
)

__all__ = [
    "PointFeatures",
    "PointwiseBlock",
    "ProjectionHead",
    "FeatureHead",
    "EncoderWithHead",
    "bn_update_factor",
    "activation",
    "batch_norm_act",
    "pool_points",
    "join_point_features",
    "pooled_width",
    "pointwise_and_pool",
    "Pooling",
]

Activation = Literal["relu", "leaky_relu", "none"]
Pooling = Literal["max", "avg", "max+avg"]
LEAKY_SLOPE = 0.2  # DGCNN's LeakyReLU slope


@dataclass
class PointFeatures:
    """What a point backbone returns.

    global_: (B, D) one vector per cloud;  local: (B, M, C) per-point (M = N for full-resolution
    networks) features (None when the caller passed ``need_local=False``);  centres: (B, M, 3) where the local features sit;  projection: (B, P)
    output of a projection head, when the model has one;  point_logits: (B, N, J) point-wise
    outputs of segmentation/partition networks;  logits: (B, C) class scores of a model with a
    classifier;  stages: (B, N, S) the per-point outputs of every block, concatenated (DGCNN's
    EdgeConv blocks; None for networks without such stages or with ``need_local=False``).
    """

    global_: Tensor
    local: Tensor | None
    centres: Tensor
    projection: Tensor | None = None
    point_logits: Tensor | None = None
    logits: Tensor | None = None
    stages: Tensor | None = None


def activation(x: Tensor, kind: Activation) -> Tensor:
    """ReLU / LeakyReLU(0.2) / identity; in place when no gradient is being recorded."""
    inplace = not (torch.is_grad_enabled() and x.requires_grad)
    if kind == "relu":
        return F.relu_(x) if inplace else F.relu(x)
    if kind == "leaky_relu":
        return F.leaky_relu_(x, LEAKY_SLOPE) if inplace else F.leaky_relu(x, LEAKY_SLOPE)
    return x


_SLOPES: dict[str, float] = {"relu": 0.0, "leaky_relu": LEAKY_SLOPE, "none": 1.0}


def batch_norm_act(x: Tensor, bn: nn.modules.batchnorm._BatchNorm, kind: Activation) -> Tensor:
    """activation(bn(x), kind) for rows x: (M, C) -> (M, C). In training on CPU the fused
    kernels of models/batchnorm_act.py (fewer passes over x; the same values, gradients and
    running statistics); elsewhere torch's BatchNorm and activation."""
    if can_fuse_batch_norm(x, bn):
        return fused_batch_norm_act(x, bn, _SLOPES[kind])
    return activation(bn(x), kind)


def bn_eval_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as y = scale * x + shift. Returns scale, shift: (C,)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def join_point_features(points: Tensor, features: Tensor | None, in_channels: int | None = None,
                        owner: str = "model") -> Tensor:
    """Network input from points (B, N, 3) and optional per-point features (B, N, F):
    (B, N, 3 + F), with clear errors for wrong shapes or a width other than ``in_channels``."""
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be (B, N, 3), got {tuple(points.shape)}")
    x = points
    if features is not None:
        if features.shape[:2] != points.shape[:2]:
            raise ValueError(f"features {tuple(features.shape)} do not match points {tuple(points.shape)}")
        x = torch.cat([points, features], dim=-1)
    if in_channels is not None and x.shape[-1] != in_channels:
        raise ValueError(f"{owner} built for {in_channels} input channels, got {x.shape[-1]}")
    return x


def pooled_width(width: int, pooling: Pooling) -> int:
    """Width of ``pool_points`` output for per-point features of ``width`` channels."""
    return width * (2 if pooling == "max+avg" else 1)


def pool_points(x: Tensor, pooling: Pooling) -> Tensor:
    """Pool (B, N, C) over points: max, mean, or concat(max, mean) -> (B, C) or (B, 2C)."""
    if pooling == "max":
        return x.amax(dim=1)
    if pooling == "avg":
        return x.mean(dim=1)
    if pooling == "max+avg":
        return torch.cat([x.amax(dim=1), x.mean(dim=1)], dim=-1)
    raise ValueError(f"pooling must be max, avg or max+avg, got {pooling!r}")


class PointwiseBlock(nn.Module):
    """Shared per-point layer: Linear (a 1x1 convolution) -> BatchNorm -> activation.

    x: (..., C_in) -> (..., C_out). BatchNorm statistics run over all leading dimensions (all
    points of all clouds), as BatchNorm1d does on (B, C, N). In eval mode BatchNorm is folded
    into the weights so that the layer is one matrix multiply.
    """

    def __init__(self, in_channels: int, out_channels: int, act: Activation = "relu", bias: bool = False):
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels, bias=bias)
        self.bn = nn.BatchNorm1d(out_channels)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if self.bn.training:
            return batch_norm_act(self.linear(x2), self.bn, self.act).view(*lead, -1)
        weight, bias = self.folded()
        return activation(torch.addmm(bias, x2, weight.t()), self.act).view(*lead, -1)

    def folded(self) -> tuple[Tensor, Tensor]:
        """Eval-mode weight (C_out, C_in) and bias (C_out,) with BatchNorm folded in."""
        scale, shift = bn_eval_affine(self.bn)
        bias = shift if self.linear.bias is None else shift + self.linear.bias * scale
        return self.linear.weight * scale[:, None], bias


def pointwise_and_pool(
    block: PointwiseBlock, x: Tensor, pooling: Pooling, need_local: bool = True
) -> tuple[Tensor | None, Tensor]:
    """block(x) and its pooling over points: x (B, N, C) -> local (B, N, O), pooled (B, O|2O).

    For inference (eval mode, no autograd) the clouds go through in groups whose output fits in
    the cache (~8 MB): the activation and the pooling read each group while it is still cached.
    With ``need_local=False`` the (B, N, O) output is never allocated (local is None): a fresh
    128 MB tensor costs more in page faults than the matrix product that fills it (whole
    PointNet forward at B=32, N=1024 on 2 cores: 113 ms with local, 74 ms without). In training
    on CPU with ``need_local=False`` the BatchNorm, activation and pooling are one fused pass
    (``fused_batch_norm_act_pool``) and local is None as well.
    """
    flat = x.reshape(-1, x.shape[-1])
    if not need_local and pooling in ("max", "avg", "max+avg") and can_fuse_batch_norm(flat, block.bn):
        # training without the per-point output: the activations are pooled as they are made
        best, mean = fused_batch_norm_act_pool(block.linear(flat), block.bn, _SLOPES[block.act], x.shape[0])
        return None, best if pooling == "max" else mean if pooling == "avg" else torch.cat([best, mean], dim=-1)
    if block.bn.training or torch.is_grad_enabled():
        local = block(x)
        return local, pool_points(local, pooling)
    n_batch, n_points, _ = x.shape
    weight, bias = block.folded()
    out_dim = weight.shape[0]
    group = max(1, (8 << 20) // max(1, n_points * out_dim * x.element_size()))
    local = x.new_empty(n_batch, n_points, out_dim) if need_local else None
    scratch = None if need_local else x.new_empty(min(group, n_batch) * n_points, out_dim)
    pooled = x.new_empty(n_batch, pooled_width(out_dim, pooling))
    for s in range(0, n_batch, group):
        clouds = min(group, n_batch - s)
        flat = local[s : s + clouds].view(-1, out_dim) if local is not None else scratch[: clouds * n_points]
        torch.addmm(bias, x[s : s + clouds].reshape(-1, x.shape[-1]), weight.t(), out=flat)
        activation(flat, block.act)
        pooled[s : s + clouds] = pool_points(flat.view(clouds, n_points, out_dim), pooling)
    return local, pooled


class ProjectionHead(nn.Module):
    """CrossPoint/SimCLR projection: Linear -> BatchNorm1d -> ReLU -> Linear. (B, D) -> (B, P).
    bias=False: both linear layers without bias (CrossPoint's official image head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 256, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim, bias=bias)
        self.bn = nn.BatchNorm1d(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.bn(self.fc1(x))))


class FeatureHead(nn.Module):
    """Linear (no bias) -> BatchNorm1d -> ReLU: the 2048 -> 512 layer after DGCNN in Jing et al."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim, bias=False)
        self.bn = nn.BatchNorm1d(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.fc(x)))


class EncoderWithHead(nn.Module):
    """A backbone followed by a head on its global feature.

    ``role="projection"`` stores the head's output in ``PointFeatures.projection`` (contrastive
    heads); ``role="global"`` makes it the global feature itself (e.g. Jing et al.'s 512-d).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, role: Literal["projection", "global"] = "projection"):
        super().__init__()
        if role not in ("projection", "global"):
            raise ValueError(f"role must be 'projection' or 'global', got {role!r}")
        self.backbone = backbone
        self.head = head
        self.role = role

    def forward(self, points: Tensor, *args, **kwargs) -> PointFeatures:
        out = self.backbone(points, *args, **kwargs)
        h = self.head(out.global_)
        return replace(out, global_=h) if self.role == "global" else replace(out, projection=h)
