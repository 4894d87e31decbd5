"""Building blocks shared by the point backbones (channels-last: features are (..., C))."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PointFeatures",
    "PointwiseBlock",
    "ProjectionHead",
    "FeatureHead",
    "EncoderWithHead",
    "bn_update_factor",
    "activation",
    "pool_points",
    "Pooling",
]

Activation = Literal["relu", "leaky_relu", "none"]
Pooling = Literal["max", "avg", "max+avg"]
LEAKY_SLOPE = 0.2  # DGCNN's LeakyReLU slope


@dataclass
class PointFeatures:
    """What a point backbone returns.

    global_: (B, D) one vector per cloud;  local: (B, M, C) per-point (M = N for full-resolution
    networks) features;  centres: (B, M, 3) where the local features sit;  projection: (B, P)
    output of a projection head, when the model has one;  point_logits: (B, N, J) point-wise
    outputs of segmentation/partition networks.
    """

    global_: Tensor
    local: Tensor
    centres: Tensor
    projection: Tensor | None = None
    point_logits: Tensor | None = None

    def to_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def activation(x: Tensor, kind: Activation) -> Tensor:
    """ReLU / LeakyReLU(0.2) / identity; in place when no gradient is being recorded."""
    inplace = not (torch.is_grad_enabled() and x.requires_grad)
    if kind == "relu":
        return F.relu_(x) if inplace else F.relu(x)
    if kind == "leaky_relu":
        return F.leaky_relu_(x, LEAKY_SLOPE) if inplace else F.leaky_relu(x, LEAKY_SLOPE)
    return x


def bn_update_factor(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """The running-average factor a BatchNorm uses for this training step (and count the step).

    Same rule as torch.nn.BatchNorm: ``momentum`` if set, else a cumulative average
    1 / num_batches_tracked.
    """
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    if bn.momentum is None:
        return 1.0 / float(bn.num_batches_tracked)
    return float(bn.momentum)


def bn_eval_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as y = scale * x + shift. Returns scale, shift: (C,)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


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
        if self.training:
            y = self.bn(self.linear(x2))
        else:
            scale, shift = bn_eval_affine(self.bn)
            bias = shift if self.linear.bias is None else shift + self.linear.bias * scale
            y = torch.addmm(bias, x2, (self.linear.weight * scale[:, None]).t())
        return activation(y, self.act).view(*lead, -1)


class ProjectionHead(nn.Module):
    """CrossPoint/SimCLR projection: Linear -> BatchNorm1d -> ReLU -> Linear. (B, D) -> (B, P)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 256):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.bn = nn.BatchNorm1d(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

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
