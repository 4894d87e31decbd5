"""Known-answer cases of the losses, worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pretext3d.pretext import NTXentLoss


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
