"""Atomic file writes: write under a temporary name next to the target, then move it into place.

``os.replace`` is a rename on one file system, so a reader sees either the old file or the complete new one, never
a truncated one; an interrupted run leaves at most a ``*.tmp<pid>`` file behind, which the next run overwrites.
Folders (checkpoints, converted models) are written under a temporary name and swapped in with
:func:`replace_folder`, which moves the previous folder aside first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
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


def replace_folder(staged: str | os.PathLike, final: str | os.PathLike, aside: str | os.PathLike) -> None:
    """Move the finished folder ``staged`` onto ``final``; an existing ``final`` is first renamed to ``aside``.

    All three live on one file system (same parent, typically), so each step is one rename: at any moment ``final``
    is either the complete old folder or the complete new one. ``aside`` is deleted once the new folder is in
    place; a run killed in between leaves it behind under the caller's naming pattern, for the caller's clean-up.
    """
    moved_aside = False
    if os.path.exists(final):
        os.replace(final, aside)
        moved_aside = True
    os.replace(staged, final)
    if moved_aside:
        shutil.rmtree(aside, ignore_errors=True)


__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "replace_folder"]
