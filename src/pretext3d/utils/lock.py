"""One process at a time in a folder: an advisory lock (``fcntl.flock``) on ``FOLDER/.lock``.

The kernel releases the lock when its process ends, however it ends (``kill -9`` included), so
a killed run never leaves the folder locked; the file itself stays and is reused."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["FolderBusy", "folder_lock", "LOCK_NAME"]

LOCK_NAME = ".lock"


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock; the message names the folder and that process."""


@contextmanager
def folder_lock(folder: str | Path, what: str = "run", name: str = LOCK_NAME) -> Iterator[None]:
    """Hold ``folder``'s lock (the file ``name`` in it; the folder must exist) for the block;
    FolderBusy at once when another process holds it."""
    import fcntl  # POSIX only; imported here so that the package imports on any system

    path = Path(folder) / name
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FolderBusy(f"{folder}: another pretext3d {what} is using this folder ({holder}); wait for it to "
                             "finish or choose another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock
