"""Errors raised for bad input data."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataFormatError"]


class DataFormatError(ValueError):
    """A data file (or folder) is malformed. The message starts with the file's path."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")
