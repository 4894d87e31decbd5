"""``pretext3d recipes``: the shipped recipes, one line each; ``recipes show NAME``: one recipe
with its fidelity notes (what differs from its paper, and why)."""

from __future__ import annotations

import argparse

from pretext3d.shipped import RECIPES_DIR, recipe_header, recipe_method, shipped_recipes

__all__ = ["add_recipes"]


def add_recipes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipes", help="list the shipped recipes; `recipes show NAME` prints one with its fidelity notes")
    rsub = p.add_subparsers(dest="recipes_command")
    show = rsub.add_parser("show", help="a shipped recipe, and how it differs from its paper")
    show.add_argument("name", choices=shipped_recipes(), metavar="NAME")
    show.set_defaults(func=_cmd_show)
    p.set_defaults(func=_cmd_list)


def _cmd_list(args: argparse.Namespace) -> int:
    names = shipped_recipes()
    width = max(map(len, names))
    for name in names:
        header = recipe_header(name)
        summary = header[0] if header else ""
        print(f"{name:{width}s}  {recipe_method(name):10s}  {summary}")
    print(f"\n`pretext3d recipes show NAME` prints one; `pretext3d pretrain --recipe NAME` runs it ({RECIPES_DIR})")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from pretext3d.fidelity import fidelity_notes

    print((RECIPES_DIR / f"{args.name}.yaml").read_text(encoding="utf-8").rstrip())
    notes = fidelity_notes(args.name)
    if notes:
        print()
        print("\n".join(notes))
    return 0
