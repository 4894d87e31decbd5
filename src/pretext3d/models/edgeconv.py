"""EdgeConv (Wang et al., DGCNN) in two implementations that compute the same function.

For a point i with neighbours j in N(i) (k nearest, including i itself) and features x:

    out_i = max_{j in N(i)}  act(BN(W [x_j - x_i ; x_i]))          (one layer)

``impl="plain"`` builds the edge tensor (B, 2C, N, k) and applies Conv2d/BN/LeakyReLU/max as
the paper describes. ``impl="fast"`` never builds it:

* the 1x1 convolution splits as W [x_j - x_i ; x_i] = W_a x_j + (W_b - W_a) x_i = y_j + z_i,
  with y = x W_a^T and z = x (W_b - W_a)^T computed once per point;
* BatchNorm is a per-channel affine map s e + t and LeakyReLU is increasing, so
  max_j act(s (y_j + z_i) + t) = act(max_j (s y_j) + s z_i + t): the maximum is taken over the
  per-point values s y (a fused gather-max) before the activation. Scaling y by s first makes a
  negative BN scale (where the max of s e comes from the min of e) need no special case; in eval
  mode s and t fold into the weights;
* in training, BN needs the mean and (biased) variance of e_ij = y_j + z_i over all B N k
  edges. With c_p the number of times point p is somebody's neighbour, y0 = y - ybar and
  z0 = z - zbar (ybar = sum_p c_p y_p / (BNk), zbar = mean_i z_i):
      mean = ybar + zbar
      var  = (sum_p c_p y0_p^2 + 2 sum_i z0_i sum_{j in N(i)} y0_j + k sum_i z0_i^2) / (BNk)
  which needs only per-point sums (a gather-sum), not the edge tensor.

Gradients flow through all of it (the max sends its gradient to the winning neighbour, as the
plain max does). Under torchrun the sums run over every process's batch (differentiable
all-reduce), so the statistics are those of the global batch, as with SyncBatchNorm; the
materialised and plain paths call the BatchNorm modules, which the trainer converts for DDP.
Blocks with several convolutions before the max (DGCNN's segmentation network) use the split
and the per-point statistics for the first convolution, whose activated edges come from one
fused gather (``gather_add_leaky_relu``), and materialise the later ones, chunked in eval mode.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d.geometry.neighbors import (
    _CHUNK_BYTES,
    _gather_rows,
    edge_max_and_moments,
    gather_add_leaky_relu,
    gather_max,
    gather_sum,
    neighbour_counts,
)
from pretext3d.models.layers import LEAKY_SLOPE, activation, bn_eval_affine, bn_update_factor
from pretext3d.utils.device import all_reduce_with_grad, rank_and_world

__all__ = ["EdgeConv", "EdgeImpl", "edge_batch_stats"]

EdgeImpl = Literal["fast", "plain"]


def edge_batch_stats(y: Tensor, z: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of e_ij = y_j + z_i over all edges (formula above).

    y, z: (B, N, C);  idx: (B, N, k)  ->  mean (C,), var (C,), in float32 at least (sums over
    B N k edges overflow half precision).
    """
    if y.dtype in (torch.float16, torch.bfloat16):
        y, z = y.float(), z.float()
    n_batch, n_points, channels = y.shape
    k = idx.shape[-1]
    counts = neighbour_counts(idx, n_points).to(y.dtype).unsqueeze(-1)  # (B, N, 1)
    # under torchrun the sums run over every process's batch (no-ops in one process): first the
    # means, then the centred second moments, as BatchNorm over the global batch would
    size = y.new_tensor([n_batch * n_points])
    firsts = all_reduce_with_grad(torch.cat([(counts * y).sum(dim=(0, 1)), z.sum(dim=(0, 1)), size]))
    n_points_all = firsts[-1]
    n_edges = n_points_all * k
    y_bar, z_bar = firsts[:channels] / n_edges, firsts[channels:2 * channels] / n_points_all
    y0, z0 = y - y_bar, z - z_bar
    neighbour_sum = gather_sum(y0, idx)  # (B, N, C)
    second = all_reduce_with_grad((counts * y0 * y0).sum(dim=(0, 1)) + 2 * (z0 * neighbour_sum).sum(dim=(0, 1))
                                  + k * (z0 * z0).sum(dim=(0, 1)))
    return y_bar + z_bar, (second / n_edges).clamp_min(0)


def _train_affine(bn: nn.modules.batchnorm._BatchNorm, mean: Tensor, var: Tensor, n_edges: int) -> tuple[Tensor, Tensor]:
    """A training BatchNorm as s x + t from the batch's mean and biased var (C,) over n_edges
    values, with the running averages updated as the module would (unbiased variance)."""
    factor = bn_update_factor(bn)
    with torch.no_grad():
        unbiased = var * (n_edges / max(n_edges - 1, 1))
        bn.running_mean.mul_(1 - factor).add_(factor * mean.detach())
        bn.running_var.mul_(1 - factor).add_(factor * unbiased.detach())
    scale = bn.weight * torch.rsqrt(var + bn.eps)
    return scale, bn.bias - mean * scale


class EdgeConv(nn.Module):
    """EdgeConv block: ``len(widths)`` 1x1 convolutions (no bias) + BN + LeakyReLU(0.2) on the
    edge features [x_j - x_i ; x_i], then max over the k neighbours.

    x: (B, N, C_in), idx: (B, N, k) neighbour indices  ->  (B, N, widths[-1]).
    Parameters: ``layers[l]`` is a Linear(in, out, bias=False) (the conv weight) and ``bns[l]``
    its BatchNorm; the first layer's input columns are [x_j - x_i ; x_i].
    """

    def __init__(self, in_channels: int, widths: Sequence[int], impl: EdgeImpl = "fast"):
        super().__init__()
        dims = [2 * in_channels, *widths]
        self.in_channels = in_channels
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims[:-1], dims[1:]))
        self.bns = nn.ModuleList(nn.BatchNorm1d(b) for b in widths)
        self.impl: EdgeImpl = impl

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"EdgeConv expects {self.in_channels} input channels, got {x.shape[-1]}")
        if self.impl == "plain":
            return self._forward_plain(x, idx)
        if self.impl != "fast":
            raise ValueError(f"unknown EdgeConv impl {self.impl!r}")
        if len(self.layers) > 1:
            return self._forward_fast_stack(*self._split_first_layer(x), idx)
        if self.bns[0].training:  # BN's own mode, so a frozen BN (bn.eval()) stays frozen
            return self._forward_fast_train(x, idx)
        return self._forward_fast_eval(x, idx)

    def _split_weights(self) -> tuple[Tensor, Tensor]:
        """W_a (acting on x_j) and W_b - W_a (acting on x_i) of the first layer: (O, C) each."""
        w = self.layers[0].weight
        c = self.in_channels
        return w[:, :c], w[:, c:] - w[:, :c]

    def _split_first_layer(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """y = x W_a^T (neighbour term) and z = x (W_b - W_a)^T (centre term): (B, N, O) each."""
        w_nb, w_ctr = self._split_weights()
        return torch.matmul(x, w_nb.t()), torch.matmul(x, w_ctr.t())

    def _forward_fast_eval(self, x: Tensor, idx: Tensor) -> Tensor:
        """BN (s e + t) folded into the weights: out_i = act(max_j (s W_a x_j) + s (W_b - W_a) x_i + t).

        max_j of s y_j equals |s| max_j sign(s) y_j, so negative BN scales need no special case.
        """
        scale, shift = bn_eval_affine(self.bns[0])
        w_nb, w_ctr = self._split_weights()
        flat = x.reshape(-1, x.shape[-1])
        y = torch.mm(flat, (w_nb * scale[:, None]).t()).view(*x.shape[:2], -1)
        z = torch.addmm(shift, flat, (w_ctr * scale[:, None]).t()).view_as(y)
        out = gather_max(y, idx)
        out = out.add_(z) if not torch.is_grad_enabled() else out + z
        return activation(out, "leaky_relu")

    def _forward_fast_train(self, x: Tensor, idx: Tensor) -> Tensor:
        """Batch statistics of the edge values from per-point sums, then the same folded form."""
        y, z = self._split_first_layer(x)
        scale, shift = self._first_affine(y, z, idx)
        return activation(gather_max(y * scale, idx) + (z * scale + shift), "leaky_relu")

    def _first_affine(self, y: Tensor, z: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The first BatchNorm as s e + t on the edge values e_ij = y_j + z_i: in training from
        the batch statistics of ``edge_batch_stats`` (and the running averages updated), else
        the running ones. y, z: (B, N, O1); idx: (B, N, k) -> scale, shift: (O1,)."""
        bn = self.bns[0]
        if not bn.training:
            return bn_eval_affine(bn)
        mean, var = edge_batch_stats(y, z, idx)
        return _train_affine(bn, mean, var, idx.numel() * rank_and_world()[1])

    def _forward_fast_stack(self, y: Tensor, z: Tensor, idx: Tensor) -> Tensor:
        """The first layer's edge activations act(s (y_j + z_i) + t) in one fused gather (its
        statistics from per-point sums, as the one-layer form), then the later layers on the
        (B, N, k, O) edges. Without gradients and with the later BatchNorms frozen, a bounded
        number of points at a time."""
        scale, shift = self._first_affine(y, z, idx)
        y_scaled, z_shifted = y * scale, z * scale + shift
        if torch.is_grad_enabled() or any(bn.training for bn in self.bns[1:]):
            return self._stack_tail(gather_add_leaky_relu(y_scaled, z_shifted, idx, LEAKY_SLOPE))
        n_batch, n_points, k = idx.shape
        widest = max(b.num_features for b in self.bns)
        rows = max(1, _CHUNK_BYTES // max(1, n_batch * k * widest * y.element_size()))
        parts = []
        for s in range(0, n_points, rows):
            first = gather_add_leaky_relu(y_scaled, z_shifted[:, s : s + rows], idx[:, s : s + rows], LEAKY_SLOPE)
            parts.append(self._stack_tail(first))
        return torch.cat(parts, dim=1)

    def _stack_tail(self, first: Tensor) -> Tensor:
        """The first layer's edge activations (B, M, k, O1) -> the later layers (linear, BN,
        act), max over k: (B, M, O_last)."""
        h = first
        for layer, bn in zip(self.layers[1:-1], self.bns[1:-1]):
            h = activation(self._batch_norm_rows(bn, torch.matmul(h, layer.weight.t())), "leaky_relu")
        h, last = torch.matmul(h, self.layers[-1].weight.t()), self.bns[-1]
        if last.training:
            return self._last_layer_train(last, h)
        h = activation(self._batch_norm_rows(last, h), "leaky_relu")
        return h.amax(dim=2) if not torch.is_grad_enabled() else h.max(dim=2).values

    def _last_layer_train(self, bn: nn.BatchNorm1d, edges: Tensor) -> Tensor:
        """max_j act(BN(e_ij)) of the last layer with batch statistics, without the normalised
        and activated (B, M, k, O) tensors: BN is s e + t per channel and the activation is
        increasing, so the max over j is attained at the winner of sign(s) e (sign(s) = sign of
        BN's weight); its value and the statistics come from one read of the edges:
            mean = sum e / n,  var = sum e^2 / n - mean^2   (float64 sums over the n edges)
            out_i = act(s e_ij* + t),  s = weight / sqrt(var + eps),  t = bias - s mean.
        edges: (B, M, k, O) -> (B, M, O).
        """
        sign = torch.where(bn.weight.detach() < 0, -1.0, 1.0)  # edge_max_and_moments casts it
        best, total, total_sq = edge_max_and_moments(edges, sign)
        count = total.new_tensor([edges.numel() // edges.shape[-1]])
        sums = all_reduce_with_grad(torch.cat([total, total_sq, count]))  # the global batch under torchrun
        channels = edges.shape[-1]
        n_edges = sums[-1]
        mean = sums[:channels] / n_edges
        var = (sums[channels:2 * channels] / n_edges - mean * mean).clamp_min(0)
        stats_dtype = torch.promote_types(edges.dtype, torch.float32)  # half-precision edges: float32 statistics
        scale, shift = _train_affine(bn, mean.to(stats_dtype), var.to(stats_dtype), int(n_edges))
        return activation(best * scale + shift, "leaky_relu")

    def _batch_norm_rows(self, bn: nn.BatchNorm1d, h: Tensor) -> Tensor:
        """BatchNorm over all leading dimensions of (..., C) (BatchNorm2d on (B, C, N, k))."""
        if not bn.training:
            scale, shift = bn_eval_affine(bn)
            return h * scale + shift
        return bn(h.reshape(-1, h.shape[-1])).view_as(h)  # the module: global statistics under DDP

    def _forward_plain(self, x: Tensor, idx: Tensor) -> Tensor:
        """The paper's form: edge tensor (B, 2C, N, k) -> Conv2d -> BN2d -> LeakyReLU -> max."""
        neighbours = _gather_rows(x, idx)  # (B, N, k, C)
        centres = x.unsqueeze(2).expand_as(neighbours)
        h = torch.cat([neighbours - centres, centres], dim=3).permute(0, 3, 1, 2).contiguous()
        for layer, bn in zip(self.layers, self.bns):
            h = F.conv2d(h, layer.weight[:, :, None, None])
            h = bn(h.flatten(2)).view_as(h)  # BatchNorm2d's statistics; global under DDP
            h = F.leaky_relu(h, LEAKY_SLOPE)
        return h.max(dim=-1).values.transpose(1, 2)
