"""Backbones: the fast EdgeConv equals the plain form; invariances; shapes and options."""

from __future__ import annotations

import copy

import pytest
import torch

from pretext3d.models import (
    DGCNN,
    DGCNNSeg,
    EdgeConv,
    EncoderWithHead,
    PointNet,
    PointNetPointwise,
    ProjectionHead,
    build_backbone,
)
from pretext3d.models.layers import FeatureHead, PointwiseBlock


def perturb_batchnorms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN affine parameters and statistics, including negative scales."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) * 2 - 0.7
            m.bias.data = 0.2 * torch.randn(n, generator=g)
            m.running_mean.data = 0.1 * torch.randn(n, generator=g)
            m.running_var.data = 0.5 + torch.rand(n, generator=g)
    return model


def cloud(batch: int = 4, n: int = 96, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def fast_and_plain(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    fast, plain = model, copy.deepcopy(model)
    fast.impl, plain.impl = "fast", "plain"
    return fast, plain


def block_inputs(channels: int, batch: int = 3, n: int = 80, k: int = 9, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, channels, generator=g)
    idx = torch.stack([torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(n)]) for _ in range(batch)])
    return x, idx


@pytest.fixture(params=["numba", "torch"])
def kernels(request, monkeypatch):
    """The numba CPU kernels, or the torch code paths that GPUs take."""
    if request.param == "torch":
        from pretext3d.geometry import neighbors

        monkeypatch.setattr(neighbors, "uses_fast_kernels", lambda t: False)
    return request.param


@pytest.mark.parametrize("channels, widths", [(3, [64]), (64, [128]), (5, [16, 24]), (3, [64, 128]), (4, [16, 24, 8])])
@pytest.mark.parametrize("training", [False, True])
def test_edgeconv_fast_equals_plain(channels, widths, training, kernels):
    """Same input and graph: outputs, input and parameter gradients, BN running statistics."""
    torch.manual_seed(0)
    fast, plain = fast_and_plain(perturb_batchnorms(EdgeConv(channels, widths)).train(training))
    x, idx = block_inputs(channels)
    results = []
    for block in (fast, plain):
        xi = x.clone().requires_grad_()
        out = block(xi, idx)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
        (out * weights).sum().backward()
        results.append((out.detach(), xi.grad, {n: p.grad for n, p in block.named_parameters()}))
    (out_f, gx_f, gp_f), (out_p, gx_p, gp_p) = results
    torch.testing.assert_close(out_f, out_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_f, gx_p, rtol=1e-4, atol=1e-4)
    for name in gp_f:
        scale = max(1.0, float(gp_p[name].abs().max()))
        torch.testing.assert_close(gp_f[name], gp_p[name], rtol=1e-4, atol=1e-5 * scale, msg=name)
    plain_buffers = dict(plain.named_buffers())
    for name, buf in fast.named_buffers():
        torch.testing.assert_close(buf, plain_buffers[name], rtol=1e-5, atol=1e-6, msg=name)


def test_edgeconv_cumulative_batchnorm_average_matches_plain():
    """momentum=None (cumulative averaging, used for BN calibration) in both forms."""
    fast, plain = fast_and_plain(EdgeConv(3, [32]).train())
    for block in (fast, plain):
        block.bns[0].momentum = None
        with torch.no_grad():
            for seed in range(3):
                block(*block_inputs(3, seed=seed))
    for name, buf in fast.named_buffers():
        torch.testing.assert_close(buf, dict(plain.named_buffers())[name], rtol=1e-5, atol=1e-6, msg=name)
    assert int(fast.bns[0].num_batches_tracked) == 3


@pytest.mark.parametrize("widths", [[16], [16, 8]])
def test_frozen_batchnorm_stays_frozen_in_training_mode(widths):
    """Fine-tuning with bn.eval() inside a training model: running statistics, not batch ones."""
    fast, plain = fast_and_plain(perturb_batchnorms(EdgeConv(3, widths)).train())
    for block in (fast, plain):
        for bn in block.bns:
            bn.eval()
    x, idx = block_inputs(3)
    before = {n: b.clone() for n, b in fast.named_buffers()}
    torch.testing.assert_close(fast(x, idx), plain(x, idx), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        expected = EdgeConv(3, widths).eval()
        expected.load_state_dict(fast.state_dict())
        torch.testing.assert_close(fast(x, idx), expected(x, idx), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[n], b) for n, b in fast.named_buffers())


@pytest.mark.parametrize(
    "make",
    [lambda: DGCNN(k=10, emb_dims=64), lambda: DGCNNSeg(num_outputs=7, num_categories=3, k=10, emb_dims=64)],
)
def test_dgcnn_fast_equals_plain_end_to_end(make):
    """Whole networks (each form with its own kNN). Rounding differences of ~1e-7 can flip a
    near-tied neighbour in a feature-space graph, which changes a few points' features, so the
    per-point check allows a tiny fraction of outliers; pooled features must agree."""
    torch.manual_seed(0)
    fast, plain = fast_and_plain(perturb_batchnorms(make()).eval())
    x = cloud()
    extra = (torch.eye(3)[[0, 1, 2, 1]],) if isinstance(fast, DGCNNSeg) else ()
    with torch.no_grad():
        a, b = fast(x, *extra), plain(x, *extra)
    torch.testing.assert_close(a.global_, b.global_, rtol=1e-3, atol=1e-4)
    per_point = a.point_logits if a.point_logits is not None else a.local
    ref = b.point_logits if b.point_logits is not None else b.local
    close = ((per_point - ref).abs() <= 1e-4 + 1e-4 * ref.abs()).float().mean()
    assert close >= 0.99


@pytest.mark.parametrize("make", [PointNet, lambda: DGCNN(k=10, emb_dims=64), lambda: PointNetPointwise(num_outputs=5)])
def test_global_feature_is_permutation_invariant(make):
    torch.manual_seed(0)
    model = perturb_batchnorms(make()).eval()
    x = cloud(2, 128)
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = model(x), model(x[:, perm])
    torch.testing.assert_close(a.global_, b.global_, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.local[:, perm], b.local, rtol=1e-4, atol=1e-5)


def test_output_shapes_and_pooling():
    x = cloud(3, 64)
    pn = PointNet().eval()
    out = pn(x)
    assert out.global_.shape == (3, 2048) and out.local.shape == (3, 64, 1024) and out.centres is x
    assert PointNet(pooling="max").eval()(x).global_.shape == (3, 1024)
    dg = DGCNN(k=8, emb_dims=32).eval()
    assert dg(x).global_.shape == (3, 64) and dg.global_dim == 64
    seg = DGCNNSeg(num_outputs=6, num_categories=0, k=8, emb_dims=32).eval()
    out = seg(x)
    assert out.point_logits.shape == (3, 64, 6) and out.global_.shape == (3, 32)
    pw = PointNetPointwise(num_outputs=9).eval()
    out = pw(x)
    assert out.point_logits.shape == (3, 64, 9) and out.global_.shape == (3, 64)


def test_global_pooling_known_answer():
    """max and mean pooling of a hand-made feature map."""
    from pretext3d.models.layers import pool_points

    feats = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [-1.0, 5.0]]])
    assert pool_points(feats, "max").tolist() == [[3.0, 5.0]]
    assert pool_points(feats, "avg").tolist() == [[1.0, 1.0]]
    assert pool_points(feats, "max+avg").tolist() == [[3.0, 5.0, 1.0, 1.0]]


def test_extra_per_point_features_such_as_normals():
    x = cloud(2, 64)
    normals = torch.nn.functional.normalize(torch.randn(2, 64, 3), dim=-1)
    for model in (PointNet(in_channels=6), DGCNN(k=8, emb_dims=32, in_channels=6)):
        out = model.eval()(x, normals)
        assert torch.isfinite(out.global_).all()
        with pytest.raises(ValueError, match="6 input channels"):
            model(x)


def test_pointwise_block_eval_folding_equals_unfolded_layers():
    torch.manual_seed(0)
    block = perturb_batchnorms(PointwiseBlock(5, 7, act="leaky_relu", bias=True)).eval()
    x = torch.randn(3, 11, 5)
    expected = torch.nn.functional.leaky_relu(block.bn(block.linear(x).reshape(-1, 7)).view(3, 11, 7), 0.2)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-6)


def test_heads_and_registry():
    x = cloud(4, 32)
    proj = EncoderWithHead(PointNet(emb_dims=64), ProjectionHead(128, 64, 16)).eval()(x)
    assert proj.projection.shape == (4, 16) and proj.global_.shape == (4, 128)
    glob = EncoderWithHead(PointNet(emb_dims=64), FeatureHead(128, 8), role="global").eval()(x)
    assert glob.global_.shape == (4, 8) and glob.projection is None
    assert isinstance(build_backbone("dgcnn", k=5), DGCNN)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("pointmlp")
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        PointNet()(torch.rand(2, 3, 64))


def test_large_cloud_runs_with_bounded_memory():
    """N=8192 through the fast DGCNN (no (B, C, N, k) tensor; see benchmarks for the numbers)."""
    model = DGCNN(k=20, emb_dims=64).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 8192, 3))
    assert out.local.shape == (1, 8192, 64)


def test_edge_statistics_in_half_precision_do_not_overflow():
    from pretext3d.geometry import knn
    from pretext3d.models.edgeconv import edge_batch_stats

    g = torch.Generator().manual_seed(0)
    y, z = torch.randn(16, 1024, 8, generator=g), torch.randn(16, 1024, 8, generator=g)
    idx = knn(torch.rand(16, 1024, 3, generator=g), 20)
    mean32, var32 = edge_batch_stats(y, z, idx)
    mean16, var16 = edge_batch_stats(y.half(), z.half(), idx)
    assert var16.dtype == torch.float32 and torch.isfinite(var16).all()
    torch.testing.assert_close(var16, var32, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(mean16, mean32, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("pooling", ["max", "avg", "max+avg"])
def test_pointwise_decoder_sees_each_point_with_the_max_over_points(pooling):
    """PointNetPointwise's decoder input is [skip feature ; max over points of the encoder output]
    per point whatever the global pooling (DeepGMR / PointNet segmentation), written out here
    with the concatenation."""
    net = perturb_batchnorms(PointNetPointwise(num_outputs=5, encoder_widths=(8, 16), decoder_widths=(12,),
                                               pooling=pooling, skip_layer=0)).eval()
    x = cloud(2, 30)
    skip = net.encoder[0](x)
    encoded = net.encoder[1](skip)
    joined = torch.cat([skip, encoded.amax(dim=1, keepdim=True).expand(-1, 30, -1)], dim=-1)
    torch.testing.assert_close(net(x).point_logits, net.classifier(net.decoder[0](joined)), rtol=1e-5, atol=1e-5)
