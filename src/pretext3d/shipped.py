"""What ships with the package, listed without importing torch (so that ``pretext3d --help``
stays fast): the recipe files and the methods the demo pretrains."""

from __future__ import annotations

from pathlib import Path

__all__ = ["RECIPES_DIR", "shipped_recipes", "DEMO_METHODS"]

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"  # the shipped recipes (configs/ in the repository)

# method -> the shipped recipe the demo pretrains it with
DEMO_METHODS = {"parae": "parae_cpu", "crosspoint": "crosspoint_cpu"}


def shipped_recipes() -> list[str]:
    """The names of the shipped recipes (``--recipe NAME`` works anywhere)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
