"""The fused training BatchNorm + activation (models/batchnorm_act.py) against torch's modules."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pretext3d import _kernels
from pretext3d.models import PointNet, PointNetPointwise
from pretext3d.models import layers
from pretext3d.models.batchnorm_act import can_fuse_batch_norm, fused_batch_norm_act, fused_batch_norm_act_pool
from pretext3d.models.layers import activation, batch_norm_act

pytestmark = pytest.mark.skipif(not _kernels.AVAILABLE, reason="the fused kernels need numba")

SLOPES = {"relu": 0.0, "leaky_relu": 0.2, "none": 1.0}


def twin_batchnorms(channels: int, dtype: torch.dtype, affine: bool = True, momentum: float | None = 0.1,
                    seed: int = 0) -> tuple[nn.BatchNorm1d, nn.BatchNorm1d]:
    """Two identical training BatchNorms with mixed-sign weights and non-trivial statistics."""
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm1d(channels, affine=affine, momentum=momentum).to(dtype)
    if affine:
        bn.weight.data = (torch.rand(channels, generator=g) * 3 - 1.5).to(dtype)
        bn.bias.data = torch.randn(channels, generator=g).to(dtype)
    bn.running_mean.data = torch.randn(channels, generator=g).to(dtype)
    bn.running_var.data = (0.5 + torch.rand(channels, generator=g)).to(dtype)
    return bn, copy.deepcopy(bn)


@pytest.mark.parametrize("kind", ["relu", "leaky_relu", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine,momentum", [(True, 0.1), (False, None)])
def test_fused_equals_batchnorm_then_activation(kind, dtype, affine, momentum):
    """Outputs, input / weight / bias gradients and running statistics over two steps, with an
    offset far from zero (the one-pass variance must not lose it) and rows not a multiple of the
    reduction blocks."""
    fused_bn, torch_bn = twin_batchnorms(5, dtype, affine, momentum)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-11)
    for step in range(2):
        g = torch.Generator().manual_seed(10 + step)
        x = (torch.randn(131, 5, generator=g) * 2 + 40).to(dtype)
        grad = torch.randn(131, 5, generator=g).to(dtype)
        x_fused, x_torch = x.clone().requires_grad_(), x.clone().requires_grad_()
        assert can_fuse_batch_norm(x_fused, fused_bn)
        y_fused = fused_batch_norm_act(x_fused, fused_bn, SLOPES[kind])
        y_torch = activation(torch_bn(x_torch), kind)
        y_fused.backward(grad)
        y_torch.backward(grad)
        torch.testing.assert_close(y_fused, y_torch, **tol)
        torch.testing.assert_close(x_fused.grad, x_torch.grad, **tol)
        if affine:
            torch.testing.assert_close(fused_bn.weight.grad, torch_bn.weight.grad, **tol)
            torch.testing.assert_close(fused_bn.bias.grad, torch_bn.bias.grad, **tol)
        torch.testing.assert_close(fused_bn.running_mean, torch_bn.running_mean, **tol)
        torch.testing.assert_close(fused_bn.running_var, torch_bn.running_var, **tol)
        assert int(fused_bn.num_batches_tracked) == int(torch_bn.num_batches_tracked) == step + 1


def test_known_answer_by_hand():
    """Column [1, 3]: mean 2, biased var 1, so BN gives [-1, 1] (eps 0, weight 1, bias 0) and ReLU
    [0, 1]; for L = sum(w y) with w = [5, 7]: g' = [0, 7], m1 = 3.5, xhat = [-1, 1],
    m2 = mean(g' xhat) = 3.5, dL/dx = g' - m1 - xhat m2 = [0 - 3.5 + 3.5, 7 - 3.5 - 3.5] = [0, 0];
    dL/dgamma = sum(g' xhat) = 7, dL/dbeta = 7. Running var (momentum 1): unbiased 2."""
    bn = nn.BatchNorm1d(1, eps=0.0, momentum=1.0)
    x = torch.tensor([[1.0], [3.0]], requires_grad=True)
    y = fused_batch_norm_act(x, bn, 0.0)
    (y * torch.tensor([[5.0], [7.0]])).sum().backward()
    assert y.flatten().tolist() == [0.0, 1.0]
    assert x.grad.flatten().tolist() == [0.0, 0.0]
    assert bn.weight.grad.item() == 7.0 and bn.bias.grad.item() == 7.0
    assert bn.running_mean.item() == 2.0 and bn.running_var.item() == 2.0


def test_only_training_cpu_float_rows_are_fused():
    bn = nn.BatchNorm1d(4)
    assert can_fuse_batch_norm(torch.zeros(3, 4), bn)
    assert not can_fuse_batch_norm(torch.zeros(1, 4), bn)  # torch's own error for one value per channel
    assert not can_fuse_batch_norm(torch.zeros(3, 4, dtype=torch.bfloat16), bn)
    assert not can_fuse_batch_norm(torch.zeros(3, 4, 2), bn)
    assert not can_fuse_batch_norm(torch.zeros(3, 4), bn.eval())
    with pytest.raises(ValueError, match="more than 1 value"):
        batch_norm_act(torch.zeros(1, 4), nn.BatchNorm1d(4), "relu")
    with pytest.raises(ValueError, match="10 rows are not 3 clouds"):
        fused_batch_norm_act_pool(torch.zeros(10, 4), nn.BatchNorm1d(4), 0.0, 3)


def assert_same_gradients_and_buffers(net: nn.Module, reference: nn.Module) -> None:
    """Parameter gradients within 1e-4 of each tensor's largest (float32 sums in another order),
    running statistics within 1e-5."""
    for (name, p), p_ref in zip(net.named_parameters(), reference.parameters()):
        scale = float(p_ref.grad.abs().max())
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-4 * scale, msg=name)
    for (name, b), b_ref in zip(net.named_buffers(), reference.buffers()):
        torch.testing.assert_close(b, b_ref, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("make", [lambda: PointNet(emb_dims=32), lambda: PointNetPointwise(num_outputs=6)])
def test_networks_train_the_same_with_and_without_the_fusion(make, monkeypatch):
    """A PointNet training step (every PointwiseBlock, and ParAE's first decoder layer) with the
    fused kernels equals the same step through torch's BatchNorm and activation modules."""
    torch.manual_seed(0)
    fused_net = make().train()
    torch_net = copy.deepcopy(fused_net)
    points = torch.rand(3, 50, 3, generator=torch.Generator().manual_seed(4)) * 2 - 1

    def step(net):
        out = net(points)
        loss = out.global_.square().sum()
        if out.point_logits is not None:
            loss = loss + out.point_logits.square().sum()
        loss.backward()
        return out.global_.detach()

    features_fused = step(fused_net)
    monkeypatch.setattr(layers, "can_fuse_batch_norm", lambda x, bn: False)
    features_torch = step(torch_net)
    torch.testing.assert_close(features_fused, features_torch, rtol=1e-4, atol=1e-5)
    assert_same_gradients_and_buffers(fused_net, torch_net)



@pytest.mark.parametrize("kind", ["relu", "leaky_relu", "none"])
@pytest.mark.parametrize("pooling", ["max", "avg", "max+avg"])
def test_pooled_last_layer_equals_the_layer_then_pooling(kind, pooling):
    """pointwise_and_pool without the per-point output (BatchNorm, activation and pooling fused)
    against the same block with it (activations written, then torch's max / mean): pooled
    features, input and parameter gradients, running statistics; a loss weighting every pooled
    entry differently. Random inputs have no ties for the max."""
    torch.manual_seed(3)
    block = layers.PointwiseBlock(6, 9, act=kind).train()
    block.bn.weight.data = torch.rand(9) * 3 - 1.5  # mixed signs: the max of a decreasing map
    reference = copy.deepcopy(block)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 37, 6, generator=g) + 2
    weights = torch.randn(4, layers.pooled_width(9, pooling), generator=g)
    x_fused, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    local, pooled = layers.pointwise_and_pool(block, x_fused, pooling, need_local=False)
    ref_local, ref_pooled = layers.pointwise_and_pool(reference, x_ref, pooling, need_local=True)
    assert local is None and ref_local is not None
    (pooled * weights).sum().backward()
    (ref_pooled * weights).sum().backward()
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_fused.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    assert_same_gradients_and_buffers(block, reference)


def test_pooled_max_gradient_goes_to_the_first_winner_by_hand():
    """Two clouds of three points, one channel, BatchNorm with eps 0 and weight 1: cloud values
    [1, 5, 5] and [3, 3, 1] (mean 3, var 8/3). The max of cloud 0 is attained at points 1 and 2
    (the first, point 1, takes its gradient), of cloud 1 at points 0 and 1 (point 0 takes it)."""
    bn = nn.BatchNorm1d(1, eps=0.0)
    x = torch.tensor([[1.0], [5.0], [5.0], [3.0], [3.0], [1.0]], dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    best, mean = fused_batch_norm_act_pool(x, bn, 1.0, 2)
    std = (8 / 3) ** 0.5
    torch.testing.assert_close(best.flatten(), torch.tensor([2 / std, 0.0], dtype=torch.float64))
    torch.testing.assert_close(mean.flatten(), torch.tensor([(11 / 3 - 3) / std, (7 / 3 - 3) / std], dtype=torch.float64))
    best.sum().backward()
    # the same gradient with the winners chosen explicitly: rows 1 and 3
    xhat = (x_ref - x_ref.mean()) / x_ref.var(unbiased=False).sqrt()
    (xhat[1] + xhat[3]).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
