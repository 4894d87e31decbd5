"""Package names that load their submodule on first use (PEP 562).

A package ``__init__`` that re-exports from heavy submodules (torch, trimesh, numba) would make
every import of a light sibling pay for them: ``pretext3d --help`` took seconds for that. With
``lazy_exports`` the package lists its names and where they live, and imports a submodule only
when one of its names is first asked for.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Sequence

__all__ = ["lazy_exports"]


def lazy_exports(package: str, sources: Mapping[str, Sequence[str]]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """(``__all__``, ``__getattr__``, ``__dir__``) for ``package`` whose names are
    ``{submodule: (name, ...)}``; a name is imported from its submodule when first used and
    then kept in the package's namespace."""
    module_of = {name: module for module, names in sources.items() for name in names}
    namespace = importlib.import_module(package).__dict__

    def getattr_(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *module_of})

    return sorted(module_of), getattr_, dir_
