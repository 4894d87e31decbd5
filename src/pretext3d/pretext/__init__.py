"""Pretext tasks and their losses."""

from pretext3d.losses import NTXentLoss

__all__ = ["NTXentLoss"]
