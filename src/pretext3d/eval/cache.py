"""A cache of extracted features, keyed by what determines them (weights, data, settings).

Keys hash: the checkpoint file's bytes (or, for a random initialisation, the backbone config,
init seed and BN-calibration settings), a fingerprint of the data (content hash of a file;
relative paths, sizes and modification times of a folder's files), and every extraction setting
(split, points, subsampling, seed, package version). Entries are .npz files written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pretext3d import __version__
from pretext3d.eval.features import Features
from pretext3d.utils.io import atomic_path

__all__ = ["FeatureCache", "file_digest", "data_fingerprint", "default_cache_dir"]


def default_cache_dir() -> Path:
    root = os.environ.get("PRETEXT3D_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "pretext3d")
    return Path(root) / "features"


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def data_fingerprint(path: str | Path) -> str:
    """Content hash of a file; for a folder, a hash of (relative path, size, mtime) of its files;
    for a built-in spec, the spec itself."""
    text = str(path)
    if text.startswith("builtin"):
        return f"{text}@{__version__}"
    p = Path(path)
    if p.is_file():
        return file_digest(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class FeatureCache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    @staticmethod
    def key(**parts: Any) -> str:
        payload = json.dumps(dict(parts, version=__version__), sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def get(self, key: str) -> Features | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as d:
                return Features(d["features"], d["labels"], d["indices"], [str(s) for s in d["skipped"]],
                                float(d["seconds"]))
        except (OSError, ValueError, KeyError):
            return None  # a damaged entry is recomputed and overwritten

    def put(self, key: str, feats: Features) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, features=feats.features, labels=feats.labels, indices=feats.indices,
                         skipped=np.array(feats.skipped, dtype=str), seconds=feats.seconds)
