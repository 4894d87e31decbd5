"""The fidelity tables: for each method, every setting of its paper next to the official code's
value and the shipped paper recipe's (``recipes/fidelity/<method>.yaml``; the pages for users are
``docs/methods/<method>.md``). ``check_recipe`` compares a shipped recipe with its table, so that
a recipe and its documentation cannot drift apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pretext3d.shipped import fidelity_tables

__all__ = ["STATUSES", "load_table", "table_for_recipe", "recipe_rows", "check_recipe", "fidelity_notes",
           "settings_markdown", "differences_markdown", "replace_generated", "GENERATED_BLOCKS"]

STATUSES = ("matches", "differs", "paper_silent", "paper_code_disagree", "not_expressible")


def load_table(method: str) -> dict[str, Any]:
    """The fidelity table of ``method`` (ValueError when there is none)."""
    tables = fidelity_tables()
    if method not in tables:
        raise ValueError(f"no fidelity table for method {method!r} (tables: {', '.join(tables)})")
    return yaml.safe_load(Path(tables[method]).read_text(encoding="utf-8"))


def table_for_recipe(name: str) -> dict[str, Any] | None:
    """The fidelity table that lists shipped recipe ``name`` among its paper recipes, if any."""
    for method in fidelity_tables():
        table = load_table(method)
        if name in (table.get("paper_recipes") or []):
            return table
    return None


def recipe_rows(table: dict[str, Any], recipe: str) -> list[dict[str, Any]]:
    """The rows of ``table`` that concern ``recipe`` (a row with ``recipe.file`` concerns only that one)."""
    rows = []
    for row in table.get("settings") or []:
        only = (row.get("recipe") or {}).get("file")
        if only is None or only == recipe:
            rows.append(row)
    return rows


def _at(recipe: dict[str, Any], key: str) -> Any:
    node: Any = recipe
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def check_recipe(name: str, recipe: dict[str, Any], table: dict[str, Any]) -> list[str]:
    """Where the completed shipped recipe ``name`` differs from what its fidelity table says it
    holds (rows whose recipe key is a dotted recipe key); empty when they agree."""
    problems = []
    for row in recipe_rows(table, name):
        key = str((row.get("recipe") or {}).get("key", ""))
        if not key or key.startswith("code:"):
            continue
        held = _at(recipe, key)
        claimed = row["recipe"].get("value")
        if held is _MISSING and claimed is None:
            continue
        if held is _MISSING or not _same(held, claimed):
            problems.append(f"{row['name']}: the table says {key} = {claimed!r}, the recipe holds "
                            f"{'nothing' if held is _MISSING else repr(held)}")
    return problems


def fidelity_notes(name: str) -> list[str]:
    """Lines for ``pretext3d recipes show``: every setting of a paper recipe that is not the
    paper's (or that the paper leaves open), with its resolution."""
    table = table_for_recipe(name)
    if table is None:
        return []
    lines = [f"fidelity to {table.get('paper')} (official code: {table.get('official_code') or 'none found'}); "
             f"the full table: docs/methods/{table.get('method')}.md"]
    for row in recipe_rows(table, name):
        if row.get("status") == "matches":
            continue
        paper = row.get("paper") or {}
        recipe = row.get("recipe") or {}
        lines.append(f"  {row['name']} [{row.get('status')}]: paper {paper.get('value')!r} ({paper.get('where', '')}); "
                     f"recipe {recipe.get('key')} = {recipe.get('value')!r}")
        if row.get("resolution"):
            lines.append(f"      {row['resolution']}")
    matching = sum(1 for row in recipe_rows(table, name) if row.get("status") == "matches")
    lines.append(f"  ({matching} more settings match the paper)")
    return lines


# --- the generated parts of docs/methods/<method>.md ---------------------------------------

_BLOCK_BEGIN = ("<!-- {block}: generated from src/pretext3d/recipes/fidelity/{method}.yaml by "
                "scripts/fidelity_pages.py; edit the YAML, not this part -->")
_BLOCK_END = "<!-- end of the generated {block} -->"
_GROUP_TITLES = {
    "not_expressible": "Not expressible in pretext3d today",
    "paper_code_disagree": "Paper and official code disagree",
    "differs": "The library differs from the paper",
    "paper_silent": "The paper is silent (the value comes from the code, or is the library's)",
}


def _shown(value: Any) -> str:
    """A table value in Markdown: yes/no, numbers compactly, lists and mappings as YAML flow."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return "`" + yaml.safe_dump(value, default_flow_style=True, width=10_000).strip() + "`"
    return str(value)


def _source_cell(source: dict[str, Any] | None, silent: str) -> str:
    source = source or {}
    value, where, quote = source.get("value"), source.get("where"), source.get("quote")
    text = silent if value is None else _shown(value)
    if where:
        text += f" ({where})"
    if quote:
        text += f": “{quote}”"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_markdown(table: dict[str, Any]) -> str:
    """The settings table: the count of each status, then one row per setting (paper,
    official code, recipe, status, resolution)."""
    rows = table.get("settings") or []
    counts = {status: sum(1 for r in rows if r.get("status") == status) for status in STATUSES}
    lines = [f"Counts over {len(rows)} settings: " + ", ".join(f"{s} {n}" for s, n in counts.items()) + ".", "",
             "| setting | paper (where) | official code | pretext3d recipe | status | resolution |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        recipe = row.get("recipe") or {}
        only = f" (only {recipe['file']})" if recipe.get("file") else ""
        cells = [row["name"], _source_cell(row.get("paper"), "silent"), _source_cell(row.get("code"), "none found"),
                 f"`{recipe.get('key')}` = {_shown(recipe.get('value'))}{only}", f"**{row.get('status')}**",
                 row.get("resolution") or ""]
        lines.append("| " + " | ".join(_cell(str(c)) for c in cells) + " |")
    return "\n".join(lines)


def differences_markdown(table: dict[str, Any]) -> str:
    """Every row whose status is not ``matches``, with its resolution, grouped by status."""
    rows = table.get("settings") or []
    parts = []
    for status, title in _GROUP_TITLES.items():
        group = [r for r in rows if r.get("status") == status]
        if group:
            parts.append(f"### {title} ({len(group)})\n\n" +
                         "\n".join(f"- **{r['name']}**: {r.get('resolution', '')}" for r in group))
    return "\n\n".join(parts)


GENERATED_BLOCKS = {"settings table": settings_markdown, "differences by status": differences_markdown}


def replace_generated(page: str, table: dict[str, Any]) -> str:
    """``page`` with each generated block it holds (between its markers) made afresh from
    ``table``; ValueError when the page lacks the settings table's markers."""
    for block, render in GENERATED_BLOCKS.items():
        begin = _BLOCK_BEGIN.format(block=block, method=table["method"])
        end = _BLOCK_END.format(block=block)
        if begin not in page or end not in page:
            if block == "settings table":
                raise ValueError(f"the page of {table['method']} has no generated settings table")
            continue
        head, rest = page.split(begin, 1)
        _, tail = rest.split(end, 1)
        page = f"{head}{begin}\n\n{render(table)}\n\n{end}{tail}"
    return page
