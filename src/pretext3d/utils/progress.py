"""Progress for long work: a tqdm bar on a terminal, a line every few seconds otherwise
(both with rate and ETA), so that logs of batch jobs stay readable."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

__all__ = ["progress_bar", "LineProgress"]

T = TypeVar("T")


class LineProgress:
    """Iterate and print '<desc>: i/n (p%) rate/s, ETA' at most every ``interval`` seconds."""

    def __init__(self, iterable: Iterable[T], total: int | None, desc: str, unit: str, interval: float = 10.0):
        self.iterable, self.total, self.desc, self.unit, self.interval = iterable, total, desc, unit, interval
        self.count = 0

    def __iter__(self) -> Iterator[T]:
        start = last = time.perf_counter()
        for item in self.iterable:
            yield item
            self.count += 1
            now = time.perf_counter()
            if now - last >= self.interval or (self.total and self.count == self.total):
                last = now
                print(self._line(now - start), file=sys.stderr, flush=True)

    def _line(self, elapsed: float) -> str:
        rate = self.count / elapsed if elapsed > 0 else float("inf")
        if self.total:
            eta = (self.total - self.count) / rate if rate > 0 else float("inf")
            pct = 100.0 * self.count / self.total
            return f"{self.desc}: {self.count}/{self.total} ({pct:.0f}%) {rate:.1f} {self.unit}/s, ETA {eta:.0f}s"
        return f"{self.desc}: {self.count} {self.unit} {rate:.1f} {self.unit}/s"


def progress_bar(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
                 enabled: bool = True) -> Iterable[T]:
    """Wrap ``iterable`` with progress reporting on stderr (a bar on a TTY, lines otherwise)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not enabled:
        return iterable
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True)
    return LineProgress(iterable, total, desc, unit)
