"""Keep freed host memory in the process for reuse (glibc malloc), instead of returning it.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
and unmaps it on free, so each large tensor a training step creates (DGCNN's (B, N, k, C) edge
tensors, a ResNet's activations) comes back as untouched pages: the kernel zero-fills them one
page fault at a time. On the 2-core development machine that page-fault work was more than half
of a two-layer EdgeConv block's training step (B 16, N 1024, k 20, C 64: 1.06 s with glibc's
defaults, 0.46 s with freed memory kept); the CPU recipes' steps are in docs/benchmarks.md.
Telling malloc to never use mmap and never trim the heap's top makes freed blocks reusable by
the next step; the price is that the process keeps its high-water mark (peak RSS 8-57% higher
on the CPU recipes).

A no-op where the C library is not glibc (macOS, musl) or lacks ``mallopt``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["keep_freed_memory"]

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_TOP_PAD_BYTES = 64 << 20  # grow the heap in 64 MiB steps: fewer brk calls
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: the heap's top is given back only above 2 GiB free


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Switch this process's malloc to keep freed memory (see the module docstring). Returns
    whether it took effect; later calls return the first call's answer."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        if not hasattr(libc, "gnu_get_libc_version"):
            return False  # another C library: its allocator has other knobs
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM), (_M_TOP_PAD, _TOP_PAD_BYTES)))
