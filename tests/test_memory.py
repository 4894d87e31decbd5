"""utils.memory: freed host memory stays with the process once keep_freed_memory() is on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pretext3d.utils.memory import keep_freed_memory

CHILD = r"""
import json, os, sys
import numpy as np
from pretext3d.utils.memory import keep_freed_memory

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

switched = keep_freed_memory() if sys.argv[1] == "keep" else False
before = rss()
block = np.ones(256 << 20, dtype=np.uint8)  # 256 MiB, every page touched
held = rss()
del block
print(json.dumps({"switched": switched, "grown": held - before, "after_free": rss() - before}))
"""


def _child(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is on Linux")
def test_a_freed_large_block_is_kept_only_when_asked():
    if not keep_freed_memory():
        pytest.skip("this C library is not glibc (keep_freed_memory is a no-op here)")
    default, kept = _child("default"), _child("keep")
    mib = 1 << 20
    assert default["grown"] > 200 * mib and kept["grown"] > 200 * mib
    assert default["after_free"] < 64 * mib  # glibc unmapped the block
    assert kept["switched"] and kept["after_free"] > 200 * mib  # kept for the next allocation
    assert keep_freed_memory() is True  # later calls answer like the first
