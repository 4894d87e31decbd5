"""MeshNet (Feng et al., AAAI 2019; the 2021 revision of its reference code) on faces.

Input per mesh: F faces, each described by ``faces`` (F, 15) = centre (3) | corners relative to
the centre (9) | unit normal (3), and ``neighbours`` (F, 3) the edge-adjacent faces (the face
itself where an edge has none); ``pretext3d prepare`` stores both (``data/meshnet.py``).

- spatial descriptor: per-face MLP of the centre, 3 -> 64 -> 64;
- structural descriptor: face rotate convolution (an MLP 6 -> 32 -> 32 of each of the three
  corner pairs (c1, c2), (c2, c3), (c3, c1), averaged, then 32 -> 64 -> 64) and face kernel
  correlation (K learnable unit vectors in 4 copies; for the 4 normals of a face and its
  neighbours, sum_{p,q} exp(-|n_p - k_q|^2 / (2 sigma^2)) / 16), joined with the normal and
  mixed by a 131 -> 131 -> 131 MLP;
- two mesh convolutions (spatial: combine spatial + structural; structural: MLP of
  [own, neighbour] for each of the 3 neighbours, max over them, then an MLP);
- fusion (1024) and concatenation of the spatial features of every stage -> 1024 per face,
  max over faces -> the pooled 1024-d feature;
- ``emb_dims`` (default 512): Linear (no bias) + BN + ReLU to the global feature, the 512-d
  feature of Jing et al.'s cross-modal code; ``emb_dims=None`` keeps the pooled 1024-d feature.

Layers are channels-last (features (B, F, C)) and every "MLP" layer is Linear (a 1x1
convolution, with bias as in the reference) + BatchNorm + ReLU.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pretext3d.models.layers import FeatureHead, PointFeatures, PointwiseBlock

__all__ = ["MeshNet", "MeshNetClassifier", "FaceRotateConvolution", "FaceKernelCorrelation", "MeshConvolution", "split_faces"]


def split_faces(faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """faces: (B, F, 15) -> centres (B, F, 3), corners (B, F, 9), normals (B, F, 3)."""
    if faces.dim() != 3 or faces.shape[-1] != 15:
        raise ValueError(f"MeshNet expects face features (B, F, 15), got {tuple(faces.shape)}")
    return faces[..., 0:3], faces[..., 3:12], faces[..., 12:15]


def _mlp(*widths: int) -> nn.Sequential:
    return nn.Sequential(*(PointwiseBlock(a, b, act="relu", bias=True) for a, b in zip(widths[:-1], widths[1:])))


def gather_neighbours(x: Tensor, neighbours: Tensor) -> Tensor:
    """x: (B, F, C), neighbours: (B, F, 3) face indices -> (B, F, 3, C)."""
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x[batch, neighbours]


class FaceRotateConvolution(nn.Module):
    """corners: (B, F, 9) -> (B, F, 64). The shared pair MLP runs once per corner pair (three
    calls, so that in training each has its own BatchNorm statistics, as in the reference)."""

    def __init__(self):
        super().__init__()
        self.rotate = _mlp(6, 32, 32)
        self.fusion = _mlp(32, 64, 64)

    def forward(self, corners: Tensor) -> Tensor:
        c1, c2, c3 = corners[..., 0:3], corners[..., 3:6], corners[..., 6:9]
        pairs = (torch.cat([c1, c2], -1), torch.cat([c2, c3], -1), torch.cat([c3, c1], -1))
        return self.fusion(sum(self.rotate(p) for p in pairs) / 3)


class FaceKernelCorrelation(nn.Module):
    """normals: (B, F, 3), neighbours: (B, F, 3) -> (B, F, K).

    With the face's normal and its three neighbours' n_1..n_4 and K kernels of 4 unit vectors
    k_1..k_4 (angles alpha, beta: k = (sin a cos b, sin a sin b, cos a)):

        out_K = ReLU(BN( 1/16 sum_{p=1..4} sum_{q=1..4} exp(-|n_p - k_q|^2 / (2 sigma^2)) ))
    """

    def __init__(self, num_kernels: int = 64, sigma: float = 0.2):
        super().__init__()
        self.sigma = sigma
        self.alpha = nn.Parameter(torch.rand(num_kernels, 4) * math.pi)
        self.beta = nn.Parameter(torch.rand(num_kernels, 4) * 2 * math.pi)
        self.bn = nn.BatchNorm1d(num_kernels)

    def kernels(self) -> Tensor:
        """(K, 4, 3) unit vectors."""
        sin_a = torch.sin(self.alpha)
        return torch.stack([sin_a * torch.cos(self.beta), sin_a * torch.sin(self.beta), torch.cos(self.alpha)], -1)

    def forward(self, normals: Tensor, neighbours: Tensor) -> Tensor:
        four = torch.cat([normals.unsqueeze(2), gather_neighbours(normals, neighbours)], 2)  # (B, F, 4, 3)
        kernels = self.kernels()
        # |n - k|^2 = |n|^2 + |k|^2 - 2 n.k, for all (face normal p, kernel K, kernel vector q)
        dots = torch.einsum("bfpc,kqc->bfkpq", four, kernels)
        squared = four.square().sum(-1)[:, :, None, :, None] + kernels.square().sum(-1)[None, None, :, None, :] - 2 * dots
        correlation = torch.exp(squared / (-2 * self.sigma**2)).sum((-1, -2)) / 16  # (B, F, K)
        lead = correlation.shape[:-1]
        return torch.relu(self.bn(correlation.reshape(-1, correlation.shape[-1]))).view(*lead, -1)


class MeshConvolution(nn.Module):
    """spatial (B, F, S_in), structural (B, F, T_in), neighbours (B, F, 3) ->
    spatial (B, F, S_out), structural (B, F, T_out)."""

    def __init__(self, spatial_in: int, structural_in: int, spatial_out: int, structural_out: int):
        super().__init__()
        self.combination = _mlp(spatial_in + structural_in, spatial_out)
        self.concat = _mlp(2 * structural_in, structural_in)
        self.aggregation = _mlp(structural_in, structural_out)

    def forward(self, spatial: Tensor, structural: Tensor, neighbours: Tensor) -> tuple[Tensor, Tensor]:
        spatial = self.combination(torch.cat([spatial, structural], -1))
        own = structural.unsqueeze(2).expand(-1, -1, 3, -1)
        pairs = torch.cat([own, gather_neighbours(structural, neighbours)], -1)  # (B, F, 3, 2T)
        structural = self.aggregation(self.concat(pairs).amax(dim=2))
        return spatial, structural


class MeshNet(nn.Module):
    """faces: (B, F, 15), neighbours: (B, F, 3) -> PointFeatures(global_ (B, emb_dims or 1024),
    local (B, F, 1024) per-face features, centres (B, F, 3) face centres).

    mask_ratio: in training, the fraction of faces left out (at random) of the max-pool (the
    2021 reference uses 0.95 for supervised training; 0 keeps all).
    """

    def __init__(self, num_kernels: int = 64, sigma: float = 0.2, emb_dims: int | None = 512, mask_ratio: float = 0.0):
        super().__init__()
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.spatial = _mlp(3, 64, 64)
        self.rotate = FaceRotateConvolution()
        self.kernel_correlation = FaceKernelCorrelation(num_kernels, sigma)
        structural = 64 + num_kernels + 3
        self.structural = _mlp(structural, structural, structural)
        self.conv1 = MeshConvolution(64, structural, 256, 256)
        self.conv2 = MeshConvolution(256, 256, 512, 512)
        self.fusion = _mlp(1024, 1024)
        self.concat = _mlp(256 + 512 + 1024, 1024)
        self.embed = FeatureHead(1024, emb_dims) if emb_dims else None
        self.num_kernels, self.sigma, self.emb_dims, self.mask_ratio = num_kernels, sigma, emb_dims, mask_ratio
        self.in_channels = 15

    @property
    def global_dim(self) -> int:
        return self.emb_dims or 1024

    def forward(self, faces: Tensor, neighbours: Tensor, need_local: bool = True) -> PointFeatures:
        centres, corners, normals = split_faces(faces)
        if neighbours.shape != faces.shape[:2] + (3,):
            raise ValueError(f"MeshNet expects neighbours (B, F, 3) for faces {tuple(faces.shape)}, got {tuple(neighbours.shape)}")
        neighbours = neighbours.long()
        spatial0 = self.spatial(centres)
        structural0 = self.structural(torch.cat(
            [self.rotate(corners), self.kernel_correlation(normals, neighbours), normals], -1))
        spatial1, structural1 = self.conv1(spatial0, structural0, neighbours)
        spatial2, structural2 = self.conv2(spatial1, structural1, neighbours)
        spatial3 = self.fusion(torch.cat([spatial2, structural2], -1))
        local = self.concat(torch.cat([spatial1, spatial2, spatial3], -1))  # (B, F, 1024)
        pooled = self._masked(local).amax(dim=1)
        global_ = self.embed(pooled) if self.embed is not None else pooled
        return PointFeatures(global_=global_, local=local if need_local else None, centres=centres)

    def _masked(self, local: Tensor) -> Tensor:
        if not (self.training and self.mask_ratio > 0):
            return local
        keep = max(1, int(local.shape[1] * (1 - self.mask_ratio)))
        return local[:, torch.randperm(local.shape[1], device=local.device)[:keep]]


class MeshNetClassifier(nn.Module):
    """The 2021 reference MeshNet with its classifier: MeshNet (pooled 1024-d) -> Linear 512 ->
    ReLU -> Dropout -> Linear 256 -> ReLU -> Dropout -> Linear ``num_classes``.

    faces (B, F, 15), neighbours (B, F, 3) -> PointFeatures with global_ (B, 256) (the feature
    the reference returns, there divided by the norm of the whole batch tensor) and logits (B, C).
    """

    def __init__(self, num_classes: int = 40, num_kernels: int = 64, sigma: float = 0.2, dropout: float = 0.5,
                 mask_ratio: float = 0.95):
        super().__init__()
        self.backbone = MeshNet(num_kernels, sigma, emb_dims=None, mask_ratio=mask_ratio)
        self.fc1, self.fc2, self.fc3 = nn.Linear(1024, 512), nn.Linear(512, 256), nn.Linear(256, num_classes)
        self.dropout = nn.Dropout(dropout)
        self.in_channels = 15

    def forward(self, faces: Tensor, neighbours: Tensor, need_local: bool = True) -> PointFeatures:
        out = self.backbone(faces, neighbours, need_local)
        feature = self.dropout(torch.relu(self.fc2(self.dropout(torch.relu(self.fc1(out.global_))))))
        return PointFeatures(global_=feature, local=out.local, centres=out.centres, logits=self.fc3(feature))
