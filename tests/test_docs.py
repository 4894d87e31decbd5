"""The documentation: the MkDocs site builds in strict mode (every page in the nav, every link
and anchor resolved, the API reference generated from the docstrings), and every relative link
of README.md and docs/ points to a file of the repository."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
_INLINE_LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_DEFINITION = re.compile(r"^[ ]{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)


def _page(path: Path, site: Path) -> Path:
    """The HTML file of a page, with or without directory URLs (``data/index.html`` or ``data.html``)."""
    for candidate in (site / path / "index.html", site / f"{path}.html"):
        if candidate.is_file():
            return candidate
    raise AssertionError(f"the site has no page for {path} (looked for {path}/index.html and {path}.html)")


def test_the_site_builds_in_strict_mode_with_the_api_reference(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[test]' installs mkdocs and mkdocstrings")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert (site / "index.html").is_file()
    _page(Path("data"), site)
    _page(Path("methods/crosspoint"), site)  # a generated fidelity page is part of the site
    api = _page(Path("api"), site).read_text(encoding="utf-8")
    # the reference is generated from the docstrings: pretext3d.embedding.embed's own words
    anchor = api.find('id="pretext3d.embedding.embed"')
    assert anchor >= 0, "the API page has no entry for pretext3d.embedding.embed"
    assert "prepared as its training data" in api[anchor:], "the API page lacks embed's docstring"
    assert 'id="pretext3d.runs"' in api and 'id="pretext3d.eval.protocols"' in api


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    kept, fence = [], None
    for line in text.splitlines(keepends=True):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
        else:
            kept.append(line)
    return _CODE_SPAN.sub("", "".join(kept))


def relative_links(path: Path) -> list[str]:
    """The targets of the relative links of a Markdown file (inline and reference-style),
    without their anchors; links to web pages, mail and anchors of the same page excluded."""
    prose = _prose(path.read_text(encoding="utf-8"))
    targets = _INLINE_LINK.findall(prose) + _REFERENCE_DEFINITION.findall(prose)
    return [t.split("#", 1)[0] for t in targets
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.IGNORECASE) and not t.startswith("#")]


def test_the_link_finder_sees_inline_and_reference_links_but_not_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("See [a](a.md#part), [b](<dir/b.md> \"title\") and [c][c], not `[d](d.md)`.\n\n"
                    "```text\n[e](e.md)\n```\n\n[c]: c.md\n[web](https://example.org) [here](#top)\n",
                    encoding="utf-8")
    assert sorted(relative_links(page)) == ["a.md", "c.md", "dir/b.md"]


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file(path):
    broken = [target for target in relative_links(path) if target and not (path.parent / target).exists()]
    assert not broken, f"{path.relative_to(ROOT)} links to missing files: {', '.join(broken)}"
