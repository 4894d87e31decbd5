"""How many threads the math libraries use (``pretext3d --threads N|auto``).

torch starts as many threads as the machine has cores. Beside another busy process that
oversubscribes the cores and every thread waits on the others (inference read 2.8x slower
with 2 threads than with 1 on a 2-core machine shared with one training run), so ``auto``
takes the cores left free by the rest of the machine: the cores this process may run on minus
the cores the others keep busy, at least 1. Busy cores are measured over half a second from
/proc/stat (the 1-minute load average lags a minute behind: it still counts a job that just
ended), or taken from the load average where /proc/stat is missing.

Nothing here imports torch until threads are set, so the CLI's --help stays fast.
"""

from __future__ import annotations

import os

__all__ = ["usable_cores", "busy_cores", "free_cores", "set_threads"]

# numba's pool is left alone: it reads its variable once, at import, and refuses a change later
_LIBRARY_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; all cores where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores since boot, from /proc/stat (None where it is missing)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(seconds: float = 0.5) -> float:
    """How many cores the machine keeps busy, measured over ``seconds`` (this process sleeps
    meanwhile, so it is the others' load); the 1-minute load average where /proc/stat is missing."""
    import time

    first = _cpu_times()
    if first is None:
        try:
            return os.getloadavg()[0]
        except OSError:  # no load average either
            return 0.0
    time.sleep(seconds)
    second = _cpu_times()
    busy, total = second[0] - first[0], second[1] - first[1]  # type: ignore[index]
    return (os.cpu_count() or 1) * busy / total if total > 0 else 0.0


def free_cores(load: float | None = None, cores: int | None = None) -> int:
    """The usable cores not taken by other processes: round(cores - load), in [1, cores];
    ``load``: busy cores (measured, ``busy_cores``, when None)."""
    cores = usable_cores() if cores is None else cores
    load = busy_cores() if load is None else load
    return max(1, min(cores, round(cores - load)))


def set_threads(spec: str | int) -> int:
    """Set the thread count of torch (intra-op) and, for processes started from here, of the
    OpenMP/BLAS pools: an integer, or "auto" (``free_cores``). Returns the count."""
    count = free_cores() if spec == "auto" else int(spec)
    if count < 1:
        raise ValueError(f"--threads must be a positive integer or auto, got {spec!r}")
    for variable in _LIBRARY_VARIABLES:
        os.environ[variable] = str(count)
    import torch

    torch.set_num_threads(count)
    return count
