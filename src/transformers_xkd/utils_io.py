"""Atomic file writes: write under a temporary name next to the target, then move it into place.

``os.replace`` is a rename on one file system, so a reader sees either the old file or the complete new one, never
a truncated one; an interrupted run leaves at most a ``*.tmp<pid>`` file behind, which the next run overwrites.
Folder commits (checkpoints, converted models) keep their own logic: they also move the previous folder aside.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``, on error delete it.

    ``suffix`` is appended to the temporary name for writers that pick the format from the extension (PyAV) or
    add one themselves (``np.savez`` appends ``.npz`` to a name without it).
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}{suffix}"
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically; ``fsync`` also flushes it to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; ``fsync`` also flushes it to disk before the rename."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]
