"""Training-mode BatchNorm followed by an activation over rows, fused on CPU.

For the rows x (M, C) of a per-point layer (all points of all clouds; under torchrun, of every
process), with the batch mean mu and the biased variance var of each channel:

    y = act(s x + t),   s = gamma / sqrt(var + eps),   t = beta - mu s,
    act(v) = v if v > 0 else a v        (ReLU: a = 0;  LeakyReLU: a = 0.2;  none: a = 1)

and with g' = dL/dy act'(s x + t), xhat = (x - mu) / sqrt(var + eps) and the means over the rows
m1 = mean(g'), m2 = mean(g' xhat):

    dL/dx = s (g' - m1 - xhat m2),   dL/dgamma = sum(g' xhat),   dL/dbeta = sum(g').

torch runs BatchNorm (statistics, then a normalising pass) and then the activation, and
backward the activation's pass and BatchNorm's two; here the statistics come from one read of
x (float64 sums, var = E x^2 - mu^2), y from one read and one write, and the backward is one
read of (g, x) for the sums and one for dL/dx, the activation's mask recomputed from x instead
of a kept output: forward + backward of 32k rows of 1024 channels 64 against 90 ms on the 2-core
machine (``benchmarks/bench_batchnorm_act.py``). ``fused_batch_norm_act_pool`` also takes the
max and mean over each cloud's points without writing y (80 against 204 ms with the pooling).
Under torchrun the sums are all-reduced, forward and backward, so the statistics and gradients
are those of the global batch (as GlobalBatchNorm's); the gradients of gamma and beta stay per
process (DDP averages them), as with torch's SyncBatchNorm.
Everywhere else (GPU, half precision, eval mode, no numba) callers use torch's modules.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from pretext3d import _kernels
from pretext3d.utils.device import all_reduce_with_grad

__all__ = ["bn_update_factor", "can_fuse_batch_norm", "fused_batch_norm_act", "fused_batch_norm_act_pool"]

_BLOCKS = 64  # row blocks of the reductions: enough to balance the threads, few partial rows


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


def can_fuse_batch_norm(x: Tensor, bn: nn.modules.batchnorm._BatchNorm) -> bool:
    """Whether ``fused_batch_norm_act`` serves rows x (M, C) for ``bn``: training mode, CPU,
    float32/float64, more than one row (torch's error for one row stays torch's), numba usable."""
    return (bn.training and x.dim() == 2 and x.shape[0] > 1 and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and _kernels.parallel_usable())


def fused_batch_norm_act(x: Tensor, bn: nn.modules.batchnorm._BatchNorm, slope: float) -> Tensor:
    """act(bn(x)) in training for rows x: (M, C) -> (M, C), with act(v) = v if v > 0 else slope v
    (formulas in the module docstring). Updates bn's running statistics as torch does (the
    unbiased variance). Call only where ``can_fuse_batch_norm(x, bn)``."""
    x = x.contiguous()
    mean, invstd, count = _batch_statistics(x, bn)
    return _BatchNormActCPU.apply(x, bn.weight, bn.bias, mean, invstd, count, float(slope))


def fused_batch_norm_act_pool(x: Tensor, bn: nn.modules.batchnorm._BatchNorm, slope: float,
                              n_batch: int) -> tuple[Tensor, Tensor]:
    """The max and the mean over each cloud's points of act(bn(x)), without the activations:
    x: (B N, C) rows of B clouds -> max (B, C), mean (B, C). A point-wise network's last layer
    when only its pooled feature is wanted: one read of x for the statistics and one for the
    pooling forward; one for the sums and one read + write for dL/dx backward, where
    ``fused_batch_norm_act`` followed by torch's max and mean also writes the (B N, C)
    activations, reads them twice and runs the poolings' backward over a (B N, C) gradient.
    The max's gradient goes to the first point attaining it (as torch's ``max(dim)``). Call only
    where ``can_fuse_batch_norm(x, bn)``, with M divisible by B."""
    if x.shape[0] % n_batch:
        raise ValueError(f"{x.shape[0]} rows are not {n_batch} clouds of equal size")
    x = x.contiguous()
    mean, invstd, count = _batch_statistics(x, bn)
    return _BatchNormActPoolCPU.apply(x, bn.weight, bn.bias, mean, invstd, count, float(slope), n_batch)


def _batch_statistics(x: Tensor, bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor, float]:
    """The batch mean and 1 / sqrt(var + eps) of rows x (M, C) (float64 (C,) each; every
    process's rows under torchrun) and the number of rows they cover; bn's running averages
    updated as the module would (unbiased variance)."""
    _kernels.set_threads(torch.get_num_threads())
    channels = x.shape[1]
    partial_sum = torch.empty(min(_BLOCKS, x.shape[0]), channels, dtype=torch.float64)
    partial_sq = torch.empty_like(partial_sum)
    rows = x.detach().numpy()
    # the backward's reduction with g = x and a pre-activation fixed at 1: the sums of x and x^2
    ones = torch.ones(channels, dtype=x.dtype)
    _kernels.affine_act_grad_sums(rows, rows, (ones * 0).numpy(), ones.numpy(), rows.dtype.type(1), partial_sum.numpy(),
                                  partial_sq.numpy())
    local = torch.cat([partial_sum.sum(0), partial_sq.sum(0), torch.tensor([float(x.shape[0])], dtype=torch.float64)])
    totals = all_reduce_with_grad(local)  # every process's rows under torchrun; `local` itself otherwise
    count = totals[-1]
    mean = totals[:channels] / count
    var = (totals[channels:2 * channels] / count - mean * mean).clamp_min(0)
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            factor = bn_update_factor(bn)
            unbiased = var * count / (count - 1).clamp_min(1)
            bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
            bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)
    return mean, torch.rsqrt(var + bn.eps), float(count)


def _scale_and_shift(weight: Tensor | None, bias: Tensor | None, mean: Tensor, invstd: Tensor) -> tuple[Tensor, Tensor]:
    """s = gamma invstd and t = beta - mu s, in float64. weight, bias: (C,) or None."""
    scale = invstd if weight is None else invstd * weight.detach().double()
    shift = -mean * scale
    return scale, shift if bias is None else shift + bias.detach().double()


def _input_grad_terms(partial_g: Tensor, partial_gx: Tensor, mean: Tensor, invstd: Tensor, scale64: Tensor,
                      count: float, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """From the per-block sums of g' and g' x (R, C) of this process: dL/dx = s g' + coef_x (x - mu)
    + offset with coef_x = -s invstd m2 and offset = -s m1 (m1, m2 over every process's rows),
    and this process's dL/dbeta = sum g', dL/dgamma = sum g' xhat. Returns coef_x, offset (in
    ``dtype``), sum_g, sum_g_xhat (float64)."""
    sum_g = partial_g.sum(0)
    sum_g_xhat = invstd * (partial_gx.sum(0) - mean * sum_g)
    totals = all_reduce_with_grad(torch.cat([sum_g, sum_g_xhat]))
    channels = sum_g.shape[0]
    m1, m2 = totals[:channels] / count, totals[channels:] / count
    return (-scale64 * invstd * m2).to(dtype), (-scale64 * m1).to(dtype), sum_g, sum_g_xhat


def _affine_grads(ctx, sum_g: Tensor, sum_g_xhat: Tensor, dtype: torch.dtype) -> tuple[Tensor | None, Tensor | None]:
    """dL/dgamma and dL/dbeta where the Function's weight and bias (inputs 1 and 2) need them."""
    return (sum_g_xhat.to(dtype) if ctx.needs_input_grad[1] else None,
            sum_g.to(dtype) if ctx.needs_input_grad[2] else None)


class _BatchNormActCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor,  # type: ignore[override]
                invstd: Tensor, count: float, slope: float) -> Tensor:
        scale64, shift64 = _scale_and_shift(weight, bias, mean, invstd)
        scale, shift = scale64.to(x.dtype), shift64.to(x.dtype)
        slope = scale.numpy().dtype.type(slope)  # a scalar of x's dtype: the kernels stay in it
        x = x.detach()
        out = torch.empty_like(x)
        _kernels.affine_act(x.numpy(), scale.numpy(), shift.numpy(), slope, out.numpy())
        ctx.save_for_backward(x, scale, shift, scale64, mean, invstd)
        ctx.count, ctx.slope = count, slope
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, scale, shift, scale64, mean, invstd = ctx.saved_tensors
        _kernels.set_threads(torch.get_num_threads())
        grad_out = grad_out.contiguous().to(x.dtype)
        partial_g = torch.empty(min(_BLOCKS, x.shape[0]), x.shape[1], dtype=torch.float64)
        partial_gx = torch.empty_like(partial_g)
        _kernels.affine_act_grad_sums(grad_out.numpy(), x.numpy(), scale.numpy(), shift.numpy(), ctx.slope,
                                      partial_g.numpy(), partial_gx.numpy())
        coef_x, offset, sum_g, sum_g_xhat = _input_grad_terms(partial_g, partial_gx, mean, invstd, scale64,
                                                              ctx.count, x.dtype)
        grad_x = torch.empty_like(x)
        _kernels.affine_act_grad(grad_out.numpy(), x.numpy(), scale.numpy(), shift.numpy(), ctx.slope,
                                 scale.numpy(), mean.to(x.dtype).numpy(), coef_x.numpy(), offset.numpy(), grad_x.numpy())
        return grad_x, *_affine_grads(ctx, sum_g, sum_g_xhat, x.dtype), None, None, None, None


class _BatchNormActPoolCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor,  # type: ignore[override]
                invstd: Tensor, count: float, slope: float, n_batch: int) -> tuple[Tensor, Tensor]:
        scale64, shift64 = _scale_and_shift(weight, bias, mean, invstd)
        scale, shift = scale64.to(x.dtype), shift64.to(x.dtype)
        slope = scale.numpy().dtype.type(slope)  # a scalar of x's dtype: the kernels stay in it
        x = x.detach()
        best = x.new_empty(n_batch, x.shape[1])
        arg = torch.empty(n_batch, x.shape[1], dtype=torch.int64)
        total = torch.empty(n_batch, x.shape[1], dtype=torch.float64)
        _kernels.affine_act_pool(x.numpy(), scale.numpy(), shift.numpy(), slope, best.numpy(), arg.numpy(), total.numpy())
        ctx.save_for_backward(x, scale, shift, scale64, mean, invstd, arg)
        ctx.count, ctx.slope = count, slope
        return best, (total / (x.shape[0] // n_batch)).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_best: Tensor | None, grad_avg: Tensor | None):  # type: ignore[override]
        x, scale, shift, scale64, mean, invstd, arg = ctx.saved_tensors
        _kernels.set_threads(torch.get_num_threads())
        n_points = x.shape[0] // arg.shape[0]
        grad_best = torch.zeros_like(arg, dtype=x.dtype) if grad_best is None else grad_best.contiguous().to(x.dtype)
        grad_mean = (torch.zeros_like(arg, dtype=x.dtype) if grad_avg is None
                     else (grad_avg / n_points).contiguous().to(x.dtype))  # each point's share of the mean
        partial_g = torch.empty(arg.shape, dtype=torch.float64)
        partial_gx = torch.empty_like(partial_g)
        pooled = (arg.numpy(), grad_best.numpy(), grad_mean.numpy())
        _kernels.affine_act_pool_grad_sums(x.numpy(), scale.numpy(), shift.numpy(), ctx.slope, *pooled,
                                           partial_g.numpy(), partial_gx.numpy())
        coef_x, offset, sum_g, sum_g_xhat = _input_grad_terms(partial_g, partial_gx, mean, invstd, scale64,
                                                              ctx.count, x.dtype)
        grad_x = torch.empty_like(x)
        _kernels.affine_act_pool_grad(x.numpy(), scale.numpy(), shift.numpy(), ctx.slope, *pooled, scale.numpy(),
                                      mean.to(x.dtype).numpy(), coef_x.numpy(), offset.numpy(), grad_x.numpy())
        return grad_x, *_affine_grads(ctx, sum_g, sum_g_xhat, x.dtype), None, None, None, None, None
