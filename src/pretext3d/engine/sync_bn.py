"""BatchNorm over the global batch in distributed training, on the CPU too.

torch's SyncBatchNorm only runs on GPUs. ``GlobalBatchNorm`` computes the batch statistics
from sums all-reduced across processes with the differentiable ``all_reduce``, so a DDP run on
CPU (gloo) takes the same steps as one process on the whole global batch:

    mean = sum_p sum_i x_pi / M,   var = sum_p sum_i x_pi^2 / M - mean^2,   M = sum_p m_p
    y = (x - mean) / sqrt(var + eps) * weight + bias

(running statistics use the unbiased variance, as torch does). Gradients flow through the
all-reduce, so each activation's gradient includes its effect on every process's statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pretext3d.utils.device import all_reduce_with_grad, is_distributed

__all__ = ["GlobalBatchNorm", "convert_batchnorm"]


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm{1,2,3}d drop-in whose training statistics span all processes."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (B, C, ...), got {x.dim()}D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        count = torch.full((1,), x.numel() // channels, dtype=x.dtype, device=x.device)
        totals = all_reduce_with_grad(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        samples = totals[-1]
        mean = totals[:channels] / samples
        var = (totals[channels:2 * channels] / samples - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * samples / (samples - 1).clamp_min(1)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.detach(), alpha=factor)
        shape = (1, channels) + (1,) * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm{1,2,3}d in ``module`` (in place) by a GlobalBatchNorm holding the
    same parameters and buffers; returns ``module`` (or the replacement when it is one)."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        replacement = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats)
        replacement.load_state_dict(module.state_dict())
        replacement.train(module.training)
        return replacement.to(next(iter(module.state_dict().values())).device)
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child))
    return module
