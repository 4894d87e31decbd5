"""Every ```python block of README.md and of the docs pages runs as written, in a folder that
holds what ``make demo`` leaves (tiny runs at demo_out/pretrain_parae and
demo_out/pretrain_crosspoint); the blocks of one file share one namespace, in order."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pretext3d.cli import main

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    """A folder holding tiny versions of the demo's two runs."""
    folder = tmp_path_factory.mktemp("readme")
    tiny = ["steps=2", "batch_size=4", "num_workers=0", "data_options.points=128",
            "data_options.builtin={train: 1, test: 1, seed: 0}"]
    assert main(["pretrain", "--recipe", "parae_cpu", "--out", str(folder / "demo_out" / "pretrain_parae"), *tiny,
                 "model.backbone_config={encoder_widths: [16, 32], decoder_widths: [32], skip_layer: 0, pooling: max}",
                 "model.partitions=8"]) == 0
    assert main(["pretrain", "--recipe", "crosspoint_cpu", "--out", str(folder / "demo_out" / "pretrain_crosspoint"),
                 *tiny, "model.backbone_config={emb_dims: 32, widths: [16]}", "model.hidden_dim=16",
                 "model.projection_dim=8", "data_options.image_size=32",
                 "data_options.builtin_store={views: 2, image_size: 32, faces: 64}"]) == 0
    return folder


def test_the_pages_hold_python_blocks():
    assert python_blocks(ROOT / "README.md"), "README.md shows the Python API in a ```python block"
    assert BLOCK.findall("text\n```python\nx = 1\n```\n") == ["x = 1\n"]  # the pattern can find one


# runs one page's blocks in order in one namespace, in a fresh interpreter (a page may register a
# method or change global state: nothing leaks into the test process or the next page)
_RUNNER = """
import json, sys
blocks = json.load(sys.stdin)
namespace = {"__name__": "__readme__"}
for number, block in enumerate(blocks, start=1):
    try:
        exec(compile(block, f"block {number}", "exec"), namespace)
    except BaseException:
        print(f"python block {number} failed:\\n{block}", file=sys.stderr)
        raise
"""


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_runs(page, demo_folder):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(python_blocks(page)), cwd=demo_folder,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{page.relative_to(ROOT)}:\n{result.stderr[-4000:]}"
