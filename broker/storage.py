"""BlobStore: content-addressed payload and envelope files.

A blob is written to `tmp/`, fsynced, then renamed to `blobs/<aa>/<sha256>` and
the directory fsynced, all *before* the database rows that reference it commit.
So a crash leaves either an unreferenced blob (swept at start) or a complete
packet; never a row pointing at a missing or partial file.

The fsyncs wait until a packet has passed its checks (a refused or repeated
packet costs none) and never run on the event loop. `commit_all` syncs a
packet's blobs at the same time and then each directory once, also at the same
time: the same fsyncs, in the same order relative to the renames and the
commit, in two rounds of disk latency instead of four.
"""

import functools
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from m2kt.errors import ServiceUnavailable

logger = logging.getLogger(__name__)


@contextmanager
def storage_errors() -> Iterator[None]:
    """A full disk, a quota or an I/O error is the service's problem, not the client's: 503, nothing kept."""
    try:
        yield
    except OSError as exc:
        logger.error("storage failed: %s", exc)
        raise ServiceUnavailable(
            f"the broker cannot store the packet now ({exc.strerror or exc}); try again later"
        ) from exc


_CHUNK = 1024 * 1024


@dataclass
class SpooledBlob:
    """A blob being received: bytes go to a temp file while its digest and size are counted."""

    path: Path
    fh: IO[bytes]
    sha: "hashlib._Hash"
    size: int = 0

    def write(self, data: bytes) -> None:
        with storage_errors():
            self.fh.write(data)
        self.sha.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self.sha.hexdigest()

    def finish(self) -> None:
        """Every byte is in: readable by path. Durable only once `BlobStore.commit_all` syncs it."""
        with storage_errors():
            self.fh.flush()

    def sync(self) -> None:
        """fsync and close (the caller maps OSError)."""
        if not self.fh.closed:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()

    def discard(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        self.path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._fsyncs = ThreadPoolExecutor(max_workers=16, thread_name_prefix="m2kt-fsync")

    def path(self, sha256: str) -> Path:
        return self.blobs / sha256[:2] / sha256

    def spool(self) -> SpooledBlob:
        path = self.tmp / f"{uuid.uuid4().hex}.part"
        with storage_errors():
            return SpooledBlob(path=path, fh=path.open("xb"), sha=hashlib.sha256())

    def spool_bytes(self, data: bytes) -> SpooledBlob:
        blob = self.spool()
        try:
            blob.write(data)
            blob.finish()
        except ServiceUnavailable:
            blob.discard()
            raise
        return blob

    def commit_all(self, blobs: Sequence[SpooledBlob]) -> None:
        """Move finished spooled blobs to their content addresses, durably; idempotent.

        Every file is fsynced before any rename, and each directory touched is fsynced once after
        all of them: a packet's payload and envelope cost one fsync each plus one per directory.
        A blob already at its address was made durable by whoever put it there.
        """
        todo = []
        for blob in blobs:
            if self.path(blob.sha256).exists():
                blob.discard()
            else:
                todo.append(blob)
        if not todo:
            return
        with storage_errors():
            self._at_once([blob.sync for blob in todo])
            dirs: set[Path] = set()
            for blob in todo:
                final = self.path(blob.sha256)
                if not final.parent.is_dir():
                    final.parent.mkdir(exist_ok=True)
                    dirs.add(self.blobs)  # the new shard's own entry
                os.replace(blob.path, final)
                dirs.add(final.parent)
            self._at_once([functools.partial(_fsync_dir, d) for d in sorted(dirs)])

    def _at_once(self, calls: list[Callable[[], None]]) -> None:
        """Run ``calls`` concurrently (the last in this thread); return once every one has, raising the first error."""
        futures = [self._fsyncs.submit(call) for call in calls[:-1]]
        try:
            calls[-1]()
        finally:
            errors = [f.exception() for f in futures]  # waits: nothing still syncs a file the caller may discard
        for error in errors:
            if error is not None:
                raise error

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def iter_chunks(self, sha256: str) -> Iterable[bytes]:
        with self.path(sha256).open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                yield chunk

    def sweep(self, referenced: set[str], grace_seconds: float) -> int:
        """Remove temp files and unreferenced blobs older than the grace period; return the count."""
        cutoff = time.time() - grace_seconds
        removed = 0
        candidates = list(self.tmp.iterdir()) + [p for d in self.blobs.iterdir() if d.is_dir() for p in d.iterdir()]
        for path in candidates:
            is_tmp = path.parent == self.tmp
            if (is_tmp or path.name not in referenced) and path.stat().st_mtime <= cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            logger.info("removed unreferenced files", extra={"count": removed})
        return removed
