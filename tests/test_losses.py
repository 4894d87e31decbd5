"""Known-answer cases of the losses, worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pretext3d import losses
from pretext3d.pretext import NTXentLoss
from tests.conftest import golden_case


def test_ntxent_two_identical_orthogonal_pairs():
    """z0 = z1 = I (2x2), t = 0.5: each row sees its partner at similarity 1/t = 2 and two
    orthogonal rows at 0, so L = -log(e^2 / (e^2 + 2))."""
    eye = torch.eye(2)
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert NTXentLoss(0.5)(eye, eye).item() == pytest.approx(expected, rel=1e-6)


def test_ntxent_is_scale_invariant_and_rejects_bad_input():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    loss = NTXentLoss(0.2)
    assert loss(a, b).item() == pytest.approx(loss(3 * a, 0.5 * b).item(), rel=1e-5)
    with pytest.raises(ValueError, match="equal shape"):
        loss(a, b[:4])
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)


# --- functional losses of the other pretext tasks ---------------------------------------------


def test_nt_xent_function_matches_the_module():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    assert losses.nt_xent(a, b, 0.2) == NTXentLoss(0.2)(a, b)


def test_info_nce_known_answer():
    # orthonormal queries with keys equal to them: s_ii = 1/t, s_ij = 0, so L = log(1 + (B-1) e^{-1/t})
    q = torch.eye(3)
    assert losses.info_nce(q, q.clone(), temperature=0.5).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)))
    # swapping two keys makes their queries' positives orthogonal: the loss grows
    assert losses.info_nce(q, q[[1, 0, 2]], 0.5) > losses.info_nce(q, q, 0.5)


def test_triplet_loss_known_answer():
    anchor = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    positive = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    negative = torch.tensor([[0.0, 4.0], [0.0, 1.0]])
    # hinge(1 - 4 + 1) = 0 and hinge(3 - 1 + 1) = 3 -> mean 1.5
    assert losses.triplet_loss(anchor, positive, negative, margin=1.0).item() == pytest.approx(1.5)
    # squared (Jing et al. Eq. 1): hinge(1 - 16 + 1) = 0 and hinge(9 - 1 + 1) = 9 -> mean 4.5
    assert losses.triplet_loss(anchor, positive, negative, margin=1.0, squared=True).item() == pytest.approx(4.5)


def test_binary_cross_entropy_known_answer():
    logits = torch.tensor([0.0, math.log(3.0)])
    targets = torch.tensor([1, 0])
    # -log(1/2) and -log(1 - 3/4) = log 4
    assert losses.binary_cross_entropy(logits, targets).item() == pytest.approx((math.log(2) + math.log(4)) / 2)


@pytest.mark.parametrize("which", ["", "_rnd"])
def test_gmm_params_match_deepgmr(which):
    case = golden_case("deepgmr_gmm_params")
    points = torch.from_numpy(case["inputs/pts"]).double()
    logits = torch.from_numpy(case["outputs/logits" if which == "" else "inputs/rnd_logits"]).double()
    pi, mu, sigma = losses.gmm_params(points, logits)
    torch.testing.assert_close(pi.float(), torch.from_numpy(case[f"outputs/pi{which}"]), rtol=0, atol=1e-6)
    torch.testing.assert_close(mu.float(), torch.from_numpy(case[f"outputs/mu{which}"]), rtol=0, atol=1e-6)
    trace = torch.diagonal(sigma, dim1=-2, dim2=-1).sum(-1)  # DeepGMR keeps trace(Sigma) I
    torch.testing.assert_close(trace.float(), torch.from_numpy(case[f"outputs/sigma{which}"][..., 0, 0]), rtol=1e-5, atol=1e-6)
    # with DeepGMR's isotropic sigma as the covariance, the NLL is the reference helper's
    isotropic = torch.from_numpy(case[f"outputs/sigma{which}"]).double()
    nll = losses.gmm_nll(points, pi, mu, isotropic)
    assert nll.item() == pytest.approx(float(case[f"outputs/derived_nll_mean{which}"]), rel=1e-5)


def test_gmm_nll_of_one_component_is_the_gaussian_fit():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(1)
    points = torch.randn(2, 50, 3, generator=g, dtype=torch.float64) @ torch.tensor([[2.0, 0, 0], [0.5, 1, 0], [0, 0, 0.3]], dtype=torch.float64)
    logits = torch.zeros(2, 50, 1, dtype=torch.float64)  # one partition holding everything
    pi, mu, sigma = losses.gmm_params(points, logits)
    expected = []
    for b in range(2):
        x = points[b].numpy()
        cov = np.cov(x.T, bias=True)  # maximum-likelihood covariance
        np.testing.assert_allclose(sigma[b, 0].numpy(), cov, atol=1e-12)
        expected.append(-scipy_stats.multivariate_normal(x.mean(0), cov).logpdf(x).mean())
    assert losses.gmm_nll(points, pi, mu, sigma).item() == pytest.approx(float(np.mean(expected)), rel=1e-10)


def test_gmm_loss_is_finite_with_empty_partitions_and_has_gradients():
    g = torch.Generator().manual_seed(2)
    points = torch.rand(2, 64, 3, generator=g)
    logits = torch.randn(2, 64, 32, generator=g)
    logits[..., 5] = -1e4  # a partition nobody belongs to
    logits.requires_grad_(True)
    loss = losses.GMMNLLLoss(ridge=1e-4)(points, logits)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
