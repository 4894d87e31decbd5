"""Each paper recipe against its fidelity table (the paper's settings, the official code's, the
recipe's): the table says what the recipe holds, so recipe and documentation cannot drift; and
the `pretext3d recipes` command that shows them."""

from __future__ import annotations

import copy

import pytest

from pretext3d.config import load_recipe
from pretext3d.fidelity import STATUSES, check_recipe, fidelity_notes, load_table, recipe_rows
from pretext3d.pretext import METHODS
from pretext3d.shipped import DEMO_METHODS, fidelity_tables, recipe_method, shipped_recipes
from tests.test_bad_inputs import run_cli

PAPER_METHODS = sorted(m for m in METHODS if m != "compose" and not m.endswith("-test"))


def test_every_paper_method_has_a_table_naming_shipped_recipes():
    assert sorted(fidelity_tables()) == PAPER_METHODS
    for method in PAPER_METHODS:
        table = load_table(method)
        assert table["method"] == method and table["paper"] and table["settings"]
        assert table["paper_recipes"], method
        for name in table["paper_recipes"]:
            assert name in shipped_recipes() and recipe_method(name) == method and not name.endswith("_cpu")
            assert load_recipe(name)["paper_setting"] is True, name  # a paper recipe says so (and is checked for it)
        for row in table["settings"]:
            assert row["status"] in STATUSES, (method, row["name"])
            assert {"name", "paper", "recipe", "status"} <= set(row), (method, row)
            assert row["status"] == "matches" or row.get("resolution"), (method, row["name"])  # every difference explained
        assert table.get("headline_numbers"), method


@pytest.mark.parametrize("method", PAPER_METHODS)
def test_each_paper_recipe_holds_what_its_table_says(method):
    table = load_table(method)
    for name in table["paper_recipes"]:
        assert check_recipe(name, load_recipe(name), table) == [], name


def test_the_method_pages_show_their_tables_as_they_are():
    """docs/methods/<method>.md's settings table is generated from the YAML (scripts/fidelity_pages.py)."""
    from pathlib import Path

    from pretext3d.fidelity import replace_generated

    docs = Path(__file__).resolve().parents[1] / "docs" / "methods"
    for method in PAPER_METHODS:
        page = (docs / f"{method}.md").read_text(encoding="utf-8")
        assert replace_generated(page, load_table(method)) == page, f"{method}: run python scripts/fidelity_pages.py"
    table = load_table("crosspoint")
    table["settings"][0]["resolution"] = "changed"
    assert "changed" in replace_generated((docs / "crosspoint.md").read_text(encoding="utf-8"), table)


def test_a_drifted_recipe_is_caught():
    table = load_table("parae")
    name = table["paper_recipes"][0]
    recipe = copy.deepcopy(load_recipe(name))
    checked = [r for r in recipe_rows(table, name) if str(r["recipe"]["key"]).startswith("optimizer.")]
    assert checked, "the table has optimizer rows"
    recipe["optimizer"][checked[0]["recipe"]["key"].split(".", 1)[1]] = "drifted"
    problems = check_recipe(name, recipe, table)
    assert len(problems) == 1 and checked[0]["name"] in problems[0] and "drifted" in problems[0]


def test_the_recipes_command_lists_and_shows(capsys):
    status, out, _ = run_cli(["recipes"])
    assert status == 0
    for name in shipped_recipes():
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    status, out, _ = run_cli(["recipes", "show", "parae"])
    assert status == 0 and "method: parae" in out and "fidelity to" in out and "docs/methods/parae.md" in out
    assert fidelity_notes(DEMO_METHODS["parae"]) == []  # a CPU reduction has no paper table of its own
    assert all(not load_recipe(n)["paper_setting"] for n in shipped_recipes() if n.endswith("_cpu"))
    status, _, err = run_cli(["recipes", "show", "nope"])
    assert status == 2 and "invalid choice" in err
