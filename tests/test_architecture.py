"""The package's rooms and doors, held by a test: no import cycles between files, and the
layering rules of docs/layout.md.

Every import statement of every file counts, wherever it stands (module level, inside a
function, under ``TYPE_CHECKING``): a lazy import is still a dependency. ``from pkg import name``
counts as an import of the module ``pkg.name`` when that is a file, else of ``pkg``'s
``__init__``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pretext3d"


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``root`` (a package named ``package``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([package, *parts])] = path
    return modules


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The package modules one import statement reaches."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: resolve against this module's package
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    return [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source for alias in node.names]


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in the file)."""
    files = module_files(root, package)
    known = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            for target in _imported(node, module, path.name == "__init__.py", known):
                while target and target not in known and "." in target:  # import a.b.c of a module a.b
                    target = target.rsplit(".", 1)[0]
                if target in known and target != module:
                    targets.add(target)
        graph[module] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _in(module: str, rooms: tuple[str, ...]) -> bool:
    return any(module == f"pretext3d.{room}" or module.startswith(f"pretext3d.{room}.") for room in rooms)


CLI = ("cli", "cli_evaluate", "cli_options", "cli_prepare", "cli_pretrain", "cli_recipes", "cli_search")
RECIPES = ("config", "pretraining")
ABOVE_GROUND = ("data", "pretext", "engine", "eval", "report", "runs", "search", *RECIPES, *CLI)
# room -> the rooms it must not import (see docs/layout.md)
FORBIDDEN: dict[tuple[str, ...], tuple[str, ...]] = {
    ("geometry", "models", "utils"): ABOVE_GROUND,
    ("data",): ("models", "pretext", "engine", "eval", "report", "runs", "search", *RECIPES, *CLI),
    ("pretext",): ("engine", "eval", "report", "runs", "search", "data", *RECIPES, *CLI),
    ("engine",): ("models", "pretext", "data", "eval", "report", "runs", "search", *RECIPES, *CLI),
    # evaluation, the report and search reach a trained method through runs.py only
    ("eval", "report", "search"): ("pretext", *RECIPES, *CLI),
    ("runs",): ("eval", "report", "search", *CLI),
}


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import that breaks ``FORBIDDEN`` or makes the library import the CLI."""
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            rules = [forbidden for rooms, forbidden in FORBIDDEN.items() if _in(module, rooms)]
            library = not _in(module, CLI)
            if any(_in(target, forbidden) for forbidden in rules) or (library and _in(target, CLI)):
                bad.append(f"{module} -> {target}")
    return bad


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE, "pretext3d")


def test_the_package_has_no_import_cycles(graph):
    assert len(graph) > 50  # the whole package was read
    assert import_cycles(graph) == []


def test_every_room_imports_only_what_lies_below_it(graph):
    assert layering_violations(graph) == []


def test_only_runs_opens_a_trained_method(graph):
    """Nothing outside runs.py (and the recipe layer that writes runs) reads a run's training
    checkpoints: the engine's state format is the engine's and runs.py's."""
    readers = sorted(m for m, targets in graph.items() if "pretext3d.engine.checkpoint" in targets)
    assert readers == ["pretext3d.engine.trainer", "pretext3d.pretraining", "pretext3d.runs"]


def test_the_checker_finds_cycles_and_broken_layers(tmp_path):
    """The rules can fail: a package with a cycle through a lazy import and a ground-floor file
    that imports evaluation."""
    root = tmp_path / "pretext3d"
    for folder in ("models", "eval"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "models" / "a.py").write_text("from pretext3d.eval import b\n")
    (root / "eval" / "b.py").write_text("def f():\n    from pretext3d.models.a import g\n")
    (root / "eval" / "c.py").write_text("from . import b\n")
    fake = import_graph(root, "pretext3d")
    assert fake["pretext3d.eval.c"] == {"pretext3d.eval.b"}  # relative imports resolve
    assert import_cycles(fake) == [["pretext3d.eval.b", "pretext3d.models.a"]]
    assert layering_violations(fake) == ["pretext3d.models.a -> pretext3d.eval.b"]


def test_the_command_line_loads_without_the_heavy_libraries():
    """`pretext3d --help` must be quick: the CLI imports torch, trimesh and numba only when a
    command runs (geometry's names load their submodule on first use)."""
    import subprocess
    import sys

    code = ("import contextlib, io, sys\nfrom pretext3d.cli import main\n"
            "for argv in (['--help'], ['evaluate', 'linear-svm', '--help'], ['prepare', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        main(argv)\n"
            "print(','.join(m for m in ('torch', 'trimesh', 'numba', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"`pretext3d --help` loaded {out}"
    from pretext3d import geometry

    assert geometry.knn.__module__ == "pretext3d.geometry.neighbors" and "knn" in dir(geometry)
