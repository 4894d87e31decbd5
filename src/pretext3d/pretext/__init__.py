"""Pretext tasks and their losses."""

from pretext3d.pretext.losses import NTXentLoss

__all__ = ["NTXentLoss"]
