"""Shared fixtures: where ../shared lives and helpers to read golden cases."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PRETEXT3D_SHARED", ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def golden_case(name: str) -> dict[str, np.ndarray]:
    """Arrays of ../shared/golden/<name>.npz; skips the test when the folder is absent."""
    path = GOLDEN / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"golden reference {path} not available (../shared is not checked out here)")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def golden_state_dict(case: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k[len("state_dict/"):]: v for k, v in case.items() if k.startswith("state_dict/")}


def shared_data(relative: str) -> Path:
    """A path under ../shared/data; skips the test when it is absent."""
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"shared data {path} not available (../shared is not checked out here)")
    return path
