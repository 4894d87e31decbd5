"""Helpers shared by the segmentation datasets and protocols: drawing a fixed number of points
from a varying one, and carving a validation split out of a training split."""

from __future__ import annotations

import numpy as np

__all__ = ["resample_indices", "carve_validation"]


def resample_indices(m: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n row indices (int64) into m >= 1 rows: n distinct rows at random, in row order, when
    m >= n; otherwise every row once followed by n - m rows drawn at random with replacement."""
    if m < 1:
        raise ValueError("cannot resample an empty set of points")
    if m >= n:
        return np.sort(rng.choice(m, n, replace=False)).astype(np.int64)
    return np.concatenate([np.arange(m), rng.choice(m, n - m, replace=True)]).astype(np.int64)


def carve_validation(labels: np.ndarray, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split rows of a training set into (train rows, validation rows), both sorted int64.

    Per class, round(fraction x its size) rows go to validation (at least one and never all,
    for classes of two or more), chosen at random with a generator seeded by (seed, class), so
    the split repeats and one class's draw does not depend on the others.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels)
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = int(round(fraction * len(rows)))
        if fraction > 0 and len(rows) > 1:
            k = min(max(k, 1), len(rows) - 1)
        elif len(rows) <= 1:
            k = 0
        val.append(np.random.default_rng([seed, int(c)]).choice(rows, k, replace=False))
    val_rows = np.sort(np.concatenate(val)).astype(np.int64) if val else np.zeros(0, np.int64)
    train_rows = np.setdiff1d(np.arange(len(labels)), val_rows).astype(np.int64)
    return train_rows, val_rows
