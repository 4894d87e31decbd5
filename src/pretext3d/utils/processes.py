"""Worker processes that die with the process that started them.

A pool's workers outlive a parent killed with ``kill -9`` (nothing runs in the parent to stop
them) and are reparented; they then hold memory and files for good. ``die_with_parent`` makes
the calling process exit when its parent goes: at once through Linux's PR_SET_PDEATHSIG, and on
any system through a daemon thread that watches the parent's pid (within a second)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int | None = None, poll_seconds: float = 1.0) -> None:
    """Make this process exit when its parent process ends (``parent``: the pid it must have,
    known to the parent; a worker that starts after its parent was killed exits at once). Call
    it first thing in a worker."""
    parent = os.getppid() if parent is None else parent
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no prctl: the watcher below still works
            pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
