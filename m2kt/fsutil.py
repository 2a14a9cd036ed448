"""Atomic file replacement: after a crash a reader finds the old file or the new one, never half of either.

The bytes go to ``<name>.tmp`` beside the target, are fsynced, renamed over the target, and
the folder is fsynced so that the rename itself survives a power cut. The temp name is fixed:
each of these files has one writer (one agent per state directory), and a crash's leftover is
overwritten by the next write or swept (`student_agent.cal.checkpoint.CheckpointStore.sweep`).

The broker's blob store (`broker.storage`) writes its own way: it batches the fsyncs of a
packet's blobs and folders, and content-addresses them instead of replacing a file.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_dir", "fsync_path"]


def fsync_path(path: Path) -> None:
    """fsync a file, or a folder (which makes its entries, such as a rename into it, durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


fsync_dir = fsync_path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path`` to write (e.g. by a library's ``save_file``); then replace ``path``.

    On leaving the block normally the temp file is fsynced and renamed over ``path``, and the
    folder fsynced; on an exception the temp file is removed and ``path`` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (creating its folder if needed)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically and durably."""
    atomic_write_bytes(path, text.encode("utf-8"))
