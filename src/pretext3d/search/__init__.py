"""Cross-modal 3D asset search: index a collection with a trained run, query it by mesh, point
cloud, image or indexed object, from Python, the command line or a local web page.

    from pretext3d.search import open_index
    hits = open_index("my_index").query("photo.jpg", k=5)

``build`` makes and updates an index (``pretext3d index``), ``index`` opens one for queries,
``vectors`` holds the FAISS side, ``queries`` reads query files, ``server`` is ``pretext3d serve``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["open_index", "SearchIndex", "Hit", "build_search_index", "IndexOptions"]


def __getattr__(name: str) -> Any:
    # loaded on first use: `pretext3d --help` must not import torch or faiss
    if name in ("open_index", "SearchIndex", "Hit"):
        from pretext3d.search import index

        return getattr(index, name)
    if name in ("build_search_index", "IndexOptions"):
        from pretext3d.search import build

        return getattr(build, name)
    raise AttributeError(f"module 'pretext3d.search' has no attribute {name!r}")
