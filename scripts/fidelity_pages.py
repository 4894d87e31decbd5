"""Regenerate the settings tables of docs/methods/<method>.md from the fidelity YAML files.

    python scripts/fidelity_pages.py          # rewrite the pages
    python scripts/fidelity_pages.py --check  # exit 1 when a page is out of date

The test suite runs the check (tests/test_fidelity.py), so a table cannot drift from its YAML.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pretext3d.fidelity import load_table, replace_generated
from pretext3d.shipped import fidelity_tables

DOCS = Path(__file__).resolve().parents[1] / "docs" / "methods"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report pages that are out of date")
    args = parser.parse_args(argv)
    stale = []
    for method in fidelity_tables():
        page = DOCS / f"{method}.md"
        text = page.read_text(encoding="utf-8")
        fresh = replace_generated(text, load_table(method))
        if fresh != text:
            stale.append(str(page))
            if not args.check:
                page.write_text(fresh, encoding="utf-8")
    for page in stale:
        print(f"{page}: {'out of date' if args.check else 'rewritten'}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
