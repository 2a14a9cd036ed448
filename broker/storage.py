"""Blob stores: content-addressed payload and envelope bytes, behind one small interface.

`BlobStore` is what the broker needs from storage: spool an upload to a local temp
file (the checks read it there), make finished blobs durable at their content
addresses (`commit_all`), open or stream one back, and sweep orphans. Two stores
implement it, chosen by `M2KT_BLOB_URL` (`open_store`): `FileStore` here (the
default, files under the data directory) and `broker.s3store.S3Store` (an
S3-compatible bucket, which replicas on many hosts can share).

Both keep one rule: a blob is durable at its address *before* the database rows
that reference it commit. So a crash leaves either an unreferenced blob (swept
later, once older than `M2KT_ORPHAN_GRACE_SECONDS`) or a complete packet; never a
row pointing at a missing or partial blob. A store that fails raises
`ServiceUnavailable` (503 `unavailable`), never half a blob at an address.

FileStore: a blob is written to `tmp/`, fsynced, then renamed to
`blobs/<aa>/<sha256>` and the directory fsynced. The fsyncs wait until a packet
has passed its checks (a refused or repeated packet costs none) and never run on
the event loop. `commit_all` syncs a packet's blobs at the same time and then each
directory once, also at the same time: the same fsyncs, in the same order
relative to the renames and the commit, in two rounds of disk latency instead of
four.
"""

import functools
import hashlib
import logging
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

from broker.settings import BrokerSettings
from m2kt.errors import ServiceUnavailable
from m2kt.fsutil import fsync_dir

logger = logging.getLogger(__name__)


@contextmanager
def storage_errors(doing: str = "store the packet") -> Iterator[None]:
    """A full disk, a quota or an I/O error is the service's problem, not the client's: 503, nothing kept."""
    try:
        yield
    except OSError as exc:
        logger.error("storage failed: %s", exc)
        raise ServiceUnavailable(f"the broker cannot {doing} now ({exc.strerror or exc}); try again later") from exc


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


def run_at_once(pool: ThreadPoolExecutor, calls: list[Callable[[], None]]) -> None:
    """Run ``calls`` concurrently (the last in this thread); return once every one has, raising the first error."""
    futures = [pool.submit(call) for call in calls[:-1]]
    try:
        calls[-1]()
    finally:
        errors = [f.exception() for f in futures]  # waits: nothing still touches a file the caller may discard
    for error in errors:
        if error is not None:
            raise error


class BlobStore(ABC):
    """Where payloads and envelopes live, by sha256; uploads spool to ``spool_dir`` on local disk first."""

    def __init__(self, spool_dir: Path) -> None:
        self.tmp = spool_dir
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="m2kt-blobs")

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

    @abstractmethod
    def commit_all(self, blobs: Sequence[SpooledBlob]) -> None:
        """Make finished spooled blobs durable at their content addresses; idempotent.

        Raises:
            ServiceUnavailable: the store failed; no address holds part of a blob.
        """

    @abstractmethod
    def open(self, sha256: str) -> AbstractContextManager[IO[bytes]]:
        """The blob as a file to read from its start (only the first bytes may be read)."""

    @abstractmethod
    def stream(self, sha256: str) -> Iterator[bytes]:
        """The blob in chunks. The blob is opened before this returns, so a store that fails raises here
        (`ServiceUnavailable`), before a response has started; the iterator closes it when done or closed."""

    @abstractmethod
    def old_blobs(self, cutoff: float) -> dict[str, str]:
        """The blobs last written at or before ``cutoff`` (epoch seconds): sha256 -> where (for `remove`)."""

    @abstractmethod
    def remove(self, where: list[str]) -> None:
        """Delete these blobs (as `old_blobs` named them)."""

    def sweep(self, referenced: Callable[[], set[str]], grace_seconds: float) -> int:
        """Remove temp files, and blobs no packet references, older than the grace period; return the count.

        The grace period spares what another replica (or this one) may be about to reference: its
        blob is written before its rows commit, and that window is far shorter than the grace. The
        references are read after the old blobs are listed, so a packet that committed meanwhile keeps
        its blobs even when they were old orphans it adopted.
        """
        cutoff = time.time() - grace_seconds
        removed = 0
        for path in list(self.tmp.iterdir()):
            try:
                old_enough = path.stat().st_mtime <= cutoff
            except FileNotFoundError:  # an upload beside this sweep finished or discarded it
                continue
            if old_enough:
                path.unlink(missing_ok=True)
                removed += 1
        old = self.old_blobs(cutoff)
        if old:
            keep = referenced()
            doomed = [where for sha, where in old.items() if sha not in keep]
            self.remove(doomed)
            removed += len(doomed)
        if removed:
            logger.info("removed unreferenced files", extra={"count": removed})
        return removed


class FileStore(BlobStore):
    """Blobs as files `blobs/<aa>/<sha256>` under ``root``; uploads spool to ``root/tmp`` (one file system)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root / "tmp")
        self.root = root
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.blobs / sha256[:2] / sha256

    def commit_all(self, blobs: Sequence[SpooledBlob]) -> None:
        """Move finished spooled blobs to their content addresses, durably; idempotent.

        Every file is fsynced before any rename, and each directory touched is fsynced once after
        all of them: a packet's payload and envelope cost one fsync each plus one per directory.
        A blob already at its address was made durable by whoever put it there; its mtime is renewed,
        so the orphan sweep, which goes by age, does not take an old orphan this packet is adopting.
        """
        todo = []
        with storage_errors():
            for blob in blobs:
                try:
                    os.utime(self.path(blob.sha256))  # there already: renew its age
                except FileNotFoundError:
                    todo.append(blob)
                else:
                    blob.discard()
            if not todo:
                return
            run_at_once(self._pool, [blob.sync for blob in todo])
            dirs: set[Path] = set()
            for blob in todo:
                final = self.path(blob.sha256)
                if not final.parent.is_dir():
                    final.parent.mkdir(exist_ok=True)
                    dirs.add(self.blobs)  # the new shard's own entry
                os.replace(blob.path, final)
                dirs.add(final.parent)
            run_at_once(self._pool, [functools.partial(fsync_dir, d) for d in sorted(dirs)])

    @contextmanager
    def open(self, sha256: str) -> Iterator[IO[bytes]]:
        with storage_errors("read the packet"):
            fh = self.path(sha256).open("rb")
        with fh:
            yield fh

    def stream(self, sha256: str) -> Iterator[bytes]:
        with storage_errors("read the packet"):
            fh = self.path(sha256).open("rb")
        return _chunks(fh)

    def old_blobs(self, cutoff: float) -> dict[str, str]:
        paths = [p for d in self.blobs.iterdir() if d.is_dir() for p in d.iterdir()]
        return {p.name: str(p) for p in paths if _mtime(p) <= cutoff}

    def remove(self, where: list[str]) -> None:
        for path in where:
            Path(path).unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    """A file's age stamp; one removed meanwhile counts as new (there is nothing left to sweep)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _chunks(fh: IO[bytes]) -> Iterator[bytes]:
    with fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def _file_store(url: str, settings: BrokerSettings) -> BlobStore:
    return FileStore(Path(unquote(urlsplit(url).path)))


def _s3_store(url: str, settings: BrokerSettings) -> BlobStore:
    from broker import s3store  # boto3 is the `s3` extra: only a broker configured for S3 needs it

    return s3store.S3Store.from_url(url, settings)


_STORES: dict[str, Callable[[str, BrokerSettings], BlobStore]] = {"file": _file_store, "s3": _s3_store}


def open_store(settings: BrokerSettings) -> BlobStore:
    """The blob store `M2KT_BLOB_URL` names (the settings validated its form)."""
    url = settings.blob_url
    return _STORES[urlsplit(url).scheme](url, settings)
