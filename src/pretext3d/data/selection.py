"""Trial subsets of any dataset: some of its classes (``--classes``) and at most N objects of
each (``--per-class N``), drawn with a seed, the same way for every reader and for stores.

The objects kept of a class are the first N of a seeded order of that class's objects, so a
smaller N keeps a subset of a larger one; the kept classes are renumbered 0..K-1 in the order
given (or the dataset's order when only ``per_class`` is given).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pretext3d.data.errors import DataFormatError

__all__ = ["Selection", "select_rows"]


@dataclass(frozen=True)
class Selection:
    """classes: the class names to keep (None: all); per_class: at most this many objects of
    each kept class per split (None: all); seed: the draw of those objects."""

    classes: tuple[str, ...] | None = None
    per_class: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.per_class is not None and self.per_class < 1:
            raise ValueError(f"per_class must be at least 1, got {self.per_class}")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes are named twice: {', '.join(self.classes)}")

    @property
    def active(self) -> bool:
        return self.classes is not None or self.per_class is not None

    def describe(self) -> str | None:
        """The selection in words (None when it keeps everything)."""
        if not self.active:
            return None
        parts = [f"classes {', '.join(self.classes)}"] if self.classes is not None else []
        if self.per_class is not None:
            parts.append(f"at most {self.per_class} objects per class and split (seed {self.seed})")
        return "; ".join(parts)

    def record(self) -> dict | None:
        """What reports and cache keys store (None when it keeps everything)."""
        if not self.active:
            return None
        return {"classes": list(self.classes) if self.classes is not None else None, "per_class": self.per_class,
                "seed": self.seed}


def select_rows(labels: np.ndarray, class_names: Sequence[str], selection: Selection,
                source: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(kept rows sorted, kept class names, new labels of the kept rows) of a split.

    labels: (S,) class indices into ``class_names``; source: named in the error for an unknown
    class."""
    names = list(class_names)
    kept = list(selection.classes) if selection.classes is not None else names
    unknown = [c for c in kept if c not in names]
    if unknown:
        raise DataFormatError(source, f"has no class {', '.join(map(repr, unknown))}; its classes: {', '.join(names)}")
    labels = np.asarray(labels, dtype=np.int64)
    rows: list[np.ndarray] = []
    for name in kept:  # one seeded permutation per class: a smaller N keeps a subset of a larger one
        members = np.flatnonzero(labels == names.index(name))
        order = np.random.default_rng([selection.seed, 23, names.index(name)]).permutation(members)
        rows.append(order if selection.per_class is None else order[: selection.per_class])
    chosen = np.sort(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)
    renumber = {names.index(name): j for j, name in enumerate(kept)}
    return chosen, kept, np.array([renumber[int(labels[r])] for r in chosen], dtype=np.int64)
