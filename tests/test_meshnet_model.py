"""MeshNet: known answers for its descriptors, invariances, shapes and errors (parity with the
reference is in test_reference_parity)."""

from __future__ import annotations

import math

import pytest
import torch

from pretext3d.models import build_backbone
from pretext3d.models.meshnet import FaceKernelCorrelation, FaceRotateConvolution, MeshNet


def random_mesh(batch: int = 2, faces: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """faces (B, F, 15) with unit normals, neighbours (B, F, 3)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, faces, 15, generator=g)
    feats[..., 12:15] = torch.nn.functional.normalize(feats[..., 12:15], dim=-1)
    return feats, torch.randint(0, faces, (batch, faces, 3), generator=g)


def test_kernel_correlation_known_answer():
    """Normals all +z; kernel vectors alternately +z and -z: |n - k|^2 is 0 for half of the 16
    (normal, kernel vector) pairs and 4 for the rest, so the correlation is
    (8 exp(0) + 8 exp(-4 / (2 * 0.2^2))) / 16 = 0.5 (exp(-50) is negligible)."""
    fkc = FaceKernelCorrelation(num_kernels=1, sigma=0.2).eval()
    with torch.no_grad():
        fkc.alpha.copy_(torch.tensor([[0.0, math.pi, 0.0, math.pi]]))
        fkc.beta.zero_()
    normals = torch.tensor([0.0, 0.0, 1.0]).expand(1, 5, 3)
    neighbours = torch.randint(0, 5, (1, 5, 3))
    with torch.no_grad():
        out = fkc(normals, neighbours)
    expected = (8 + 8 * math.exp(-50)) / 16 / math.sqrt(1 + fkc.bn.eps)  # eval BN with mean 0, var 1
    torch.testing.assert_close(out, torch.full((1, 5, 1), expected))


def test_kernel_correlation_uses_the_neighbours_normals():
    fkc = FaceKernelCorrelation(num_kernels=4).eval()
    _, neighbours = random_mesh(1, 6)
    normals = torch.nn.functional.normalize(torch.randn(1, 6, 3), dim=-1)
    with torch.no_grad():
        before = fkc(normals, neighbours)
        moved = normals.clone()
        moved[0, neighbours[0, 0, 0]] *= -1  # a neighbour of face 0 flips
        after = fkc(moved, neighbours)
    assert not torch.allclose(before[0, 0], after[0, 0])


def test_face_rotate_convolution_is_invariant_to_the_corner_order_cycle():
    """It averages the shared MLP over the pairs (c1, c2), (c2, c3), (c3, c1): relabelling the
    corners cyclically leaves the face's feature unchanged."""
    frc = FaceRotateConvolution().eval()
    corners = torch.randn(2, 10, 9)
    cycled = torch.cat([corners[..., 3:9], corners[..., 0:3]], -1)
    with torch.no_grad():
        torch.testing.assert_close(frc(corners), frc(cycled))


def test_meshnet_global_feature_is_invariant_to_the_face_order():
    model = MeshNet().eval()
    faces, neighbours = random_mesh()
    order = torch.randperm(faces.shape[1])
    new_index = torch.empty_like(order)
    new_index[order] = torch.arange(len(order))  # face order[i] is now face i
    permuted_faces = faces[:, order]
    permuted_neighbours = new_index[neighbours[:, order]]
    with torch.no_grad():
        a, b = model(faces, neighbours), model(permuted_faces, permuted_neighbours)
    torch.testing.assert_close(a.global_, b.global_, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.local[:, order], b.local, rtol=1e-5, atol=1e-5)


def test_meshnet_shapes_training_step_and_errors():
    model = build_backbone("meshnet")
    faces, neighbours = random_mesh(batch=4, faces=16)
    out = model(faces, neighbours)
    assert out.global_.shape == (4, 512) and out.local.shape == (4, 16, 1024) and model.global_dim == 512
    out.global_.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.kernel_correlation.alpha.grad.abs().sum() > 0  # the kernels learn
    pooled = MeshNet(emb_dims=None).eval()
    assert pooled(faces, neighbours, need_local=False).global_.shape == (4, 1024)
    assert pooled(faces, neighbours, need_local=False).local is None
    with pytest.raises(ValueError, match=r"\(B, F, 15\)"):
        model(faces[..., :12], neighbours)
    with pytest.raises(ValueError, match="neighbours"):
        model(faces, neighbours[:, :8])
    with pytest.raises(ValueError, match="mask_ratio"):
        MeshNet(mask_ratio=1.0)


def test_meshnet_face_masking_pools_a_random_subset_in_training_only():
    model = MeshNet(emb_dims=None, mask_ratio=0.75)
    faces, neighbours = random_mesh(batch=3, faces=40)
    torch.manual_seed(0)
    out = model(faces, neighbours)  # training: max over 10 random faces
    assert (out.global_ <= out.local.amax(dim=1)).all() and (out.global_ < out.local.amax(dim=1)).any()
    model.eval()
    with torch.no_grad():
        out = model(faces, neighbours)
    torch.testing.assert_close(out.global_, out.local.amax(dim=1))
