"""Losses of the pretext tasks, each a small function or module with its formula.

* ``nt_xent`` / ``NTXentLoss``: SimCLR's NT-Xent (CrossPoint's IMID and CMID), lightly 1.1.21
  semantics, negatives optionally gathered across processes;
* ``info_nce``: one-directional InfoNCE of queries against keys (Pic@Point);
* ``triplet_loss``: margin triplet loss on Euclidean distances (Jing et al.'s cross-view loss);
* ``binary_cross_entropy``: the "same object?" classifier loss (Jing et al.'s cross-modality);
* ``gmm_params`` / ``gmm_nll`` / ``GMMNLLLoss``: ParAE's closed-form GMM and its likelihood.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d.utils.device import all_gather_with_grad, rank_and_world

__all__ = [
    "GMMNLLLoss",
    "NTXentLoss",
    "binary_cross_entropy",
    "gather_with_grad",
    "gmm_nll",
    "gmm_params",
    "info_nce_with_targets",
    "info_nce",
    "nt_xent",
    "triplet_loss",
]

_LOG_2PI = math.log(2 * math.pi)


def gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """All-gather ``x`` (B, D) from every process, keeping gradients to the local part.

    Returns the concatenation (world * B, D) and this process's rank; outside a distributed run,
    (x, 0).
    """
    return all_gather_with_grad(x), rank_and_world()[0]


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross entropy (SimCLR; the loss CrossPoint trains with).

    For a batch of B pairs (z0_i, z1_i), let u = normalise([z0; z1]) (2B rows) and
    s_ab = u_a . u_b / t. Each row a has one positive p(a) (its partner) and 2B - 2 negatives:

        L = -1/(2B) sum_a log( exp(s_{a,p(a)}) / sum_{b != a} exp(s_ab) )

    With ``gather_distributed=True`` the negatives are taken from the whole global batch across
    processes (rows stay local, columns are global), so the mean of the processes' losses equals
    a single-process run on the global batch (tested); every process must have the same batch
    size (use ``drop_last=True``).
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        """z0, z1: (B, D) two views of the same B samples -> scalar loss."""
        return nt_xent(z0, z1, self.temperature, self.gather_distributed)


def nt_xent(z0: Tensor, z1: Tensor, temperature: float = 0.1, gather_distributed: bool = False) -> Tensor:
    """NT-Xent of two views z0, z1: (B, D) -> scalar (the formula is in ``NTXentLoss``)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if z0.shape != z1.shape or z0.dim() != 2:
        raise ValueError(f"expected two (B, D) tensors of equal shape, got {tuple(z0.shape)}, {tuple(z1.shape)}")
    z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
    n = z0.shape[0]
    if gather_distributed:
        all0, rank = gather_with_grad(z0)
        all1, _ = gather_with_grad(z1)
    else:
        all0, all1, rank = z0, z1, 0
    total = all0.shape[0]
    rows = torch.cat([z0, z1])  # (2B, D) local
    cols = torch.cat([all0, all1])  # (2G, D) global
    logits = rows @ cols.t() / temperature
    local = torch.arange(n, device=z0.device) + rank * n
    self_cols = torch.cat([local, local + total])
    logits[torch.arange(2 * n, device=z0.device), self_cols] = float("-inf")
    positives = torch.cat([local + total, local])
    return F.cross_entropy(logits, positives)


def info_nce(queries: Tensor, keys: Tensor, temperature: float = 0.07, gather_distributed: bool = False) -> Tensor:
    """InfoNCE of queries against keys, the positive of query i being key i.

    queries: (B, D), keys: (B, D); with u = normalise(q), v = normalise(k), s_ij = u_i . v_j / t:

        L = -1/B sum_i log( exp(s_ii) / sum_j exp(s_ij) )

    The negatives of a query are the other keys (of the global batch with ``gather_distributed``).
    """
    if queries.shape != keys.shape or queries.dim() != 2:
        raise ValueError(f"expected two (B, D) tensors of equal shape, got {tuple(queries.shape)}, {tuple(keys.shape)}")
    return info_nce_with_targets(queries, keys, torch.arange(len(queries), device=queries.device), temperature,
                                 gather_distributed)


def info_nce_with_targets(queries: Tensor, keys: Tensor, targets: Tensor, temperature: float = 0.07,
                          gather_distributed: bool = False) -> Tensor:
    """InfoNCE of Q queries (Q, D) against K keys (K, D), the positive of query i being key
    ``targets[i]`` (Q,) (e.g. Pic@Point: a point's image region among all regions of the batch).
    With u = normalise(q), v = normalise(k), s_ij = u_i . v_j / t:

        L = -1/Q sum_i log( exp(s_{i, targets_i}) / sum_j exp(s_ij) )

    With ``gather_distributed`` the keys of every process are negatives too (targets index this
    process's keys).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if queries.dim() != 2 or keys.dim() != 2 or queries.shape[1] != keys.shape[1] or targets.shape != queries.shape[:1]:
        raise ValueError(f"expected queries (Q, D), keys (K, D), targets (Q,), got {tuple(queries.shape)}, "
                         f"{tuple(keys.shape)}, {tuple(targets.shape)}")
    u, v = F.normalize(queries, dim=1), F.normalize(keys, dim=1)
    all_keys, rank = gather_with_grad(v) if gather_distributed else (v, 0)
    if len(u) == 0:  # nothing to contrast here (other processes may have queries: the gather above still ran)
        return all_keys.sum() * 0.0
    logits = u @ all_keys.t() / temperature
    return F.cross_entropy(logits, targets + rank * len(v))


def triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 1.0,
                 squared: bool = False) -> Tensor:
    """Margin triplet loss on Euclidean distances; anchor, positive, negative: (B, D).

        L = 1/B sum_i max(0, |a_i - p_i| - |a_i - n_i| + margin)
        squared: L = 1/B sum_i max(0, |a_i - p_i|^2 - |a_i - n_i|^2 + margin)   (FaceNet; Jing et al. Eq. 1)
    """
    if squared:
        d_pos = (anchor - positive).pow(2).sum(dim=1)
        d_neg = (anchor - negative).pow(2).sum(dim=1)
    else:
        d_pos = (anchor - positive).norm(dim=1)
        d_neg = (anchor - negative).norm(dim=1)
    return F.relu(d_pos - d_neg + margin).mean()


def binary_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross entropy on logits (numerically stable); logits, targets: (B,) with y in {0, 1}:

        L = -1/B sum_i [ y_i log sigmoid(z_i) + (1 - y_i) log(1 - sigmoid(z_i)) ]
    """
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def gmm_params(points: Tensor, logits: Tensor, ridge: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """ParAE's GMM in closed form (paper Eq. 5-7) from point-wise logits.

    points: (B, N, 3); logits: (B, N, J). With gamma = softmax_j(logits) (soft partitions):

        pi_j    = 1/N sum_n gamma_nj
        mu_j    = sum_n gamma_nj x_n / (N pi_j)
        Sigma_j = sum_n gamma_nj (x_n - mu_j)(x_n - mu_j)^T / (N pi_j)  + ridge I

    Returns pi (B, J), mu (B, J, 3), sigma (B, J, 3, 3). (DeepGMR keeps only trace(Sigma_j) I.)
    """
    if points.dim() != 3 or logits.dim() != 3 or points.shape[:2] != logits.shape[:2]:
        raise ValueError(f"expected points (B, N, 3) and logits (B, N, J), got {tuple(points.shape)}, {tuple(logits.shape)}")
    gamma = torch.softmax(logits, dim=2)
    mass = gamma.sum(dim=1)  # (B, J) = N pi
    pi = mass / points.shape[1]
    weights = gamma / mass.clamp_min(torch.finfo(gamma.dtype).tiny).unsqueeze(1)  # (B, N, J), columns sum to 1
    mu = weights.transpose(1, 2) @ points  # (B, J, 3)
    centred = points.unsqueeze(2) - mu.unsqueeze(1)  # (B, N, J, 3)
    sigma = torch.einsum("bnj,bnjc,bnjd->bjcd", weights, centred, centred)
    if ridge:
        sigma = sigma + ridge * torch.eye(3, dtype=sigma.dtype, device=sigma.device)
    return pi, mu, sigma


def gmm_nll(points: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """Mean negative log-likelihood of points (B, N, 3) under per-cloud GMMs pi (B, J),
    mu (B, J, 3), sigma (B, J, 3, 3):

        L = -1/(BN) sum_{b,n} log sum_j pi_j N(x_n; mu_j, Sigma_j)

    computed stably: Sigma = L L^T (Cholesky), the Mahalanobis term from a triangular solve,
    log det Sigma = 2 sum log diag L, and log-sum-exp over j.
    """
    chol = torch.linalg.cholesky(sigma)  # (B, J, 3, 3)
    centred = (points.unsqueeze(1) - mu.unsqueeze(2))  # (B, J, N, 3)
    solved = torch.linalg.solve_triangular(chol, centred.transpose(-1, -2), upper=False)  # (B, J, 3, N)
    mahalanobis = solved.square().sum(dim=2)  # (B, J, N)
    log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (B, J)
    log_gauss = -0.5 * (mahalanobis + log_det.unsqueeze(-1) + 3 * _LOG_2PI)
    log_pi = torch.log(pi.clamp_min(torch.finfo(pi.dtype).tiny)).unsqueeze(-1)
    return -torch.logsumexp(log_pi + log_gauss, dim=1).mean()


class GMMNLLLoss(nn.Module):
    """ParAE's loss: ``gmm_nll(points, *gmm_params(points, logits, ridge))``; the ridge keeps
    the covariances of thin or empty partitions invertible."""

    def __init__(self, ridge: float = 1e-4):
        super().__init__()
        self.ridge = ridge

    def forward(self, points: Tensor, logits: Tensor) -> Tensor:
        """points: (B, N, 3), logits: (B, N, J) -> scalar."""
        return gmm_nll(points, *gmm_params(points, logits, self.ridge))
