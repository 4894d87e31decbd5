"""The trainer's own state on disk: ``checkpoints/step-XXXXXXX/`` folders, each with the
weights (``model.safetensors``), the optimiser, scaler and RNG states (``state.pt``, read with
``weights_only=True``) and ``trainer.json`` (written last: a folder without it is incomplete)."""

from __future__ import annotations

from pathlib import Path

import re
import shutil

__all__ = ["training_checkpoints", "remove_unfinished_checkpoints", "CHECKPOINT_FORMAT", "CHECKPOINT_FILES"]

CHECKPOINT_FORMAT = "pretext3d-train-state/1"
CHECKPOINT_FILES = ("model.safetensors", "state.pt", "trainer.json")  # trainer.json is written last
_STEP = re.compile(r"^step-(\d+)$")


def training_checkpoints(run: str | Path) -> list[Path]:
    """The complete ``checkpoints/step-N`` folders of a run (every file of ``CHECKPOINT_FILES``
    present), oldest first."""
    folder = Path(run) / "checkpoints"
    found = [p for p in folder.glob("step-*") if _STEP.match(p.name) and p.is_dir()
             and all((p / name).is_file() for name in CHECKPOINT_FILES)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def remove_unfinished_checkpoints(run: str | Path) -> list[str]:
    """Delete the temporary folders of checkpoints a killed process did not finish writing
    (``.step-N.tmp-PID``); returns their names. Call it only while holding the run's lock."""
    removed = []
    for tmp in (Path(run) / "checkpoints").glob(".step-*.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp.name)
    return removed
