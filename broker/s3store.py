"""S3Store: payloads and envelopes in an S3-compatible bucket (S3, MinIO, Ceph RGW, R2).

Replicas on different hosts share one bucket (and one PostgreSQL), each with its own
local data directory, which holds only the spooled uploads being checked. Objects are
content-addressed, `<prefix>blobs/<aa>/<sha256>`, exactly like the file store's paths.

Durability is S3's: a PUT that succeeded is stored, and a PUT is all or nothing, so no
key ever names part of a blob. Each PUT carries the blob's SHA-256 (`ChecksumSHA256`),
which the store checks against the bytes it received. A publish PUTs its blobs before
its rows commit; a PUT is never skipped because the object exists, so every publish
renews its objects' `LastModified` and an orphan sweep (by age, see `BlobStore.sweep`)
that lists after the PUT leaves an old unreferenced object that a publish is adopting (the
window left open is in docs/protocol-choices.md).

Endpoint, region and credentials come from the standard AWS environment
(`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...,
or an instance role): boto3's own chain, the only settings read outside
`BrokerSettings`. Any failure of the store is `ServiceUnavailable` (503 `unavailable`).
"""

import base64
import functools
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from broker.settings import BrokerSettings
from broker.storage import BlobStore, SpooledBlob, run_at_once, storage_errors
from m2kt.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys


@contextmanager
def s3_errors() -> Iterator[None]:
    """The object store not answering, refusing or erring is the service's problem: 503, nothing kept."""
    try:
        with storage_errors():  # the local spool file
            yield
    except (BotoCoreError, ClientError) as exc:
        logger.error("object store failed: %s", exc)
        raise ServiceUnavailable("the broker's object store is not answering; try again later") from exc


class S3Store(BlobStore):
    """Blobs as objects `<prefix>blobs/<aa>/<sha256>` in ``bucket``; uploads spool to ``spool_dir``."""

    def __init__(self, client: Any, bucket: str, prefix: str, spool_dir: Path) -> None:
        super().__init__(spool_dir)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str, settings: BrokerSettings) -> "S3Store":
        """``s3://bucket/prefix`` with boto3's client from the environment, sized to the broker's threads."""
        parts = urlsplit(url)
        prefix = parts.path.strip("/")
        config = Config(
            max_pool_connections=settings.worker_threads + 16,  # every request thread, plus the upload pool
            connect_timeout=5,
            read_timeout=60,
            retries={"mode": "standard", "max_attempts": 3},  # a blip is retried; an outage is a prompt 503
            s3={"addressing_style": settings.blob_s3_addressing_style},
        )
        client = boto3.session.Session().client("s3", config=config)
        return cls(client, parts.netloc, f"{prefix}/" if prefix else "", settings.data_dir / "tmp")

    def key(self, sha256: str) -> str:
        return f"{self.prefix}blobs/{sha256[:2]}/{sha256}"

    def commit_all(self, blobs: Sequence[SpooledBlob]) -> None:
        """PUT every blob (at the same time), then drop the local spool files."""
        if not blobs:
            return
        with s3_errors():
            run_at_once(self._pool, [functools.partial(self._put, blob) for blob in blobs])
        for blob in blobs:
            blob.discard()

    def _put(self, blob: SpooledBlob) -> None:
        blob.finish()  # flushed: readable by path (no fsync: the store's copy is the durable one)
        checksum = base64.b64encode(bytes.fromhex(blob.sha256)).decode()
        with blob.path.open("rb") as body:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(blob.sha256),
                Body=body,
                ContentLength=blob.size,
                ContentType="application/octet-stream",
                ChecksumSHA256=checksum,
            )

    def _body(self, sha256: str) -> Any:
        return self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"]

    @contextmanager
    def open(self, sha256: str) -> Iterator[IO[bytes]]:
        with s3_errors():
            body = self._body(sha256)
            try:
                yield cast(IO[bytes], body)  # botocore's StreamingBody is an io.IOBase with read(n)
            finally:
                body.close()

    def stream(self, sha256: str) -> Iterator[bytes]:
        with s3_errors():
            body = self._body(sha256)
        return _chunks(body)

    def old_blobs(self, cutoff: float) -> dict[str, str]:
        """Objects under `<prefix>blobs/` in this store's layout, last modified at or before ``cutoff``."""
        root = f"{self.prefix}blobs/"
        old: dict[str, str] = {}
        with s3_errors():
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root):
                for obj in page.get("Contents", []):
                    shard, _, name = obj["Key"][len(root) :].partition("/")
                    ours = len(name) == 64 and shard == name[:2]  # only keys this layout makes
                    if ours and obj["LastModified"].timestamp() <= cutoff:
                        old[name] = obj["Key"]
        return old

    def remove(self, where: list[str]) -> None:
        with s3_errors():
            for start in range(0, len(where), _DELETE_BATCH):
                batch = [{"Key": k} for k in where[start : start + _DELETE_BATCH]]
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                for error in answer.get("Errors", []):
                    logger.warning("object not deleted", extra={"key": error.get("Key"), "code": error.get("Code")})


def _chunks(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(_CHUNK)
    finally:
        body.close()
