"""What ships with the package, listed without importing torch (so that ``pretext3d --help``
stays fast): the recipe files with their descriptions and fidelity tables, and the methods the
demo pretrains."""

from __future__ import annotations

from pathlib import Path

__all__ = ["RECIPES_DIR", "FIDELITY_DIR", "shipped_recipes", "DEMO_METHODS", "recipe_header", "recipe_method",
           "fidelity_tables"]

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"  # the shipped recipes (configs/ in the repository)

# method -> the shipped recipe the demo pretrains it with
DEMO_METHODS = {"parae": "parae_cpu", "crosspoint": "crosspoint_cpu"}


def shipped_recipes() -> list[str]:
    """The names of the shipped recipes (``--recipe NAME`` works anywhere)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


FIDELITY_DIR = RECIPES_DIR / "fidelity"  # per method: the paper's settings against the shipped paper recipes


def recipe_header(name: str) -> list[str]:
    """The comment lines at the top of a shipped recipe (its description), without the '#'."""
    lines = []
    for line in (RECIPES_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def recipe_method(name: str) -> str:
    """The ``method:`` a shipped recipe names (read from the text: no YAML parser, no torch)."""
    for line in (RECIPES_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
        if line.startswith("method:"):
            return line.split(":", 1)[1].split("#", 1)[0].strip()
    return "?"


def fidelity_tables() -> dict[str, Path]:
    """Method -> its fidelity table (``FIDELITY_DIR/<method>.yaml``)."""
    return {p.stem: p for p in sorted(FIDELITY_DIR.glob("*.yaml"))}
