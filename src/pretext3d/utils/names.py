"""Naming the right key when a user typed a wrong one."""

from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["closest_hint"]


def closest_hint(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the known name closest to ``name``, or '' when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
