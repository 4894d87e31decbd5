"""The trainer's own state on disk: ``checkpoints/step-XXXXXXX/`` folders, each with the
weights (``model.safetensors``), the optimiser, scaler and RNG states (``state.pt``, read with
``weights_only=True``) and ``trainer.json`` (written last: a folder without it is incomplete)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["training_checkpoints", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "pretext3d-train-state/1"


def training_checkpoints(run: str | Path) -> list[Path]:
    """The complete ``checkpoints/step-N`` folders of a run (with trainer.json), oldest first."""
    found = [p for p in (Path(run) / "checkpoints").glob("step-*") if p.is_dir() and (p / "trainer.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))
