"""A cache of extracted features, keyed by what determines them (weights, data, settings).

Keys hash: the checkpoint file's bytes (or, for a random initialisation, the backbone config,
init seed and BN-calibration settings), a fingerprint of the data (content hash of a file;
relative paths, sizes and modification times of a folder's files), every extraction setting
(split, points, subsampling, seed) and a digest of the package's own source, so that a code
change never returns features the current code would not compute. Entries are .npz files
written atomically.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pretext3d._version import __version__
from pretext3d.eval.features import Features
from pretext3d.utils.io import atomic_path, file_digest

__all__ = ["FeatureCache", "file_digest", "data_fingerprint", "default_cache_dir", "code_digest"]


def default_cache_dir() -> Path:
    root = os.environ.get("PRETEXT3D_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "pretext3d")
    return Path(root) / "features"


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """Hash of every .py file of the installed pretext3d package."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(__version__.encode())
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def data_fingerprint(path: str | Path, fmt: str) -> str:
    """Content hash of a file; for a folder (or a file of a multi-file format such as one
    ply_data_*.h5), a hash of (relative path, size, mtime) of the folder's files; for
    ScanObjectNN, the variant and (path, size, mtime) of its train and test files; for the
    built-in data, the spec (the generator's code is covered by ``code_digest``)."""
    if fmt == "builtin":
        return str(path)
    if fmt == "scanobjectnn":  # a folder or file with an optional ':variant' suffix
        from pretext3d.data.readers import scanobjectnn_files

        variant, files = scanobjectnn_files(path)
        h = hashlib.sha256(variant.encode())
        for split in sorted(files):
            st = files[split].stat()
            h.update(f"{split}|{files[split].resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode(errors="surrogateescape"))
        return h.hexdigest()
    p = Path(path)
    if p.is_file() and fmt == "ply_hdf5":
        p = p.parent
    if p.is_file():
        return file_digest(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        st = f.stat()
        # file names that are not UTF-8 arrive as surrogate escapes: hash their bytes
        h.update(f"{f.relative_to(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode(errors="surrogateescape"))
    return h.hexdigest()


class FeatureCache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    @staticmethod
    def key(**parts: Any) -> str:
        payload = json.dumps(dict(parts, code=code_digest()), sort_keys=True, default=str)
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
