"""Crash-safe file writes: write to a temporary name in the same folder, then rename."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "file_digest", "save_tensors",
           "describe_os_error", "naming",
           "check_writable", "folder_bytes"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically, on
    error it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); the result gets the permissions any new file
        # would get (0666 less the umask)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        raise naming(err, path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def naming(err: OSError, path: str | Path) -> OSError:
    """``err`` with ``path`` as its file name when it has none (a failed write names no file)."""
    if err.filename is None and err.errno is not None:
        return OSError(err.errno, err.strerror, str(path))
    return err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def folder_bytes(folder: str | Path) -> int:
    """The bytes of every file under ``folder`` (0 when it does not exist)."""
    folder = Path(folder)
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_tensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' ``save_file``, with its I/O failures raised as the OSError they are (a full
    disk is ENOSPC naming ``path``, not a SafetensorError)."""
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except OSError:
        raise
    except Exception as err:  # safetensors reports I/O as "... (os error N)" or "IoError(Os { code: N, ... })"
        code = re.search(r"(?:code: |os error )(\d+)", str(err))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), str(path)) from None


# what to do about the OS errors a user can meet, by errno
_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free space or write elsewhere; nothing half-written was kept",
    errno.EROFS: "a read-only file system: write elsewhere",
    errno.EACCES: "permission denied",
    errno.EISDIR: "a folder where a file is expected",
    errno.ENOTDIR: "a file where a folder is expected",
    errno.EDQUOT: "the disk quota is exceeded",
}


def describe_os_error(err: OSError) -> str:
    """One line naming the path and the problem of an OSError."""
    where = err.filename if err.filename is not None else "?"
    if isinstance(where, bytes):
        where = os.fsdecode(where)
    reason = err.strerror or str(err)
    hint = _OS_HINTS.get(err.errno)
    return f"{where!s}: {reason}" + (f" ({hint})" if hint and hint.lower() != reason.lower() else "")


def check_writable(path: str | Path) -> Path:
    """Make sure a file can be written at ``path`` before any work is done for it: not a folder,
    its folder made and writable (a probe file is created and removed). Raises the OSError."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
    except OSError as err:
        raise naming(err, path.parent) from None
    os.close(fd)
    os.unlink(probe)
    return path
