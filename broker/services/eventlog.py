"""The hash-chained event log (docs/protocol.md §2, 'The event log').

hash = sha256(prev_hash_bytes || JCS(entry without hash)). Each entry's
`body_sha256` is the SHA-256 of the canonical JSON of what happened (the body is
kept, and served in provenance), so a client can check both the chain and what
each link claims. Appends happen only while the caller holds the head lock.
"""

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from broker.clock import rfc3339
from broker.db import Sessions
from broker.models import Head, LogEntry
from broker.repositories import log as log_repo
from m2kt.errors import M2KTError
from m2kt.jsonutil import canonical

GENESIS = "0" * 64
ENTRY_FIELDS = ("index", "kind", "subject", "body_sha256", "prev_hash", "hash", "at")


class ChainBroken(M2KTError):
    """The log does not verify; the message names the first bad entry. The broker's fault, not the caller's."""

    slug = "chain-broken"
    status = 500


def entry_hash(prev_hash: str, entry: dict[str, Any]) -> str:
    unsigned = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical(unsigned)).hexdigest()


def as_dict(entry: LogEntry) -> dict[str, Any]:
    return {
        "index": entry.index,
        "kind": entry.kind,
        "subject": entry.subject,
        "body_sha256": entry.body_sha256,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
        "at": entry.at,
    }


def next_entry(
    *, last_index: int, last_hash: str, kind: str, subject: str, body: dict[str, Any], at: datetime
) -> dict[str, Any]:
    """The entry after (last_index, last_hash): every field of `as_dict`, plus `body` as canonical JSON text."""
    body_bytes = canonical(body)
    fields: dict[str, Any] = {
        "index": last_index + 1,
        "kind": kind,
        "subject": subject,
        "body_sha256": hashlib.sha256(body_bytes).hexdigest(),
        "prev_hash": last_hash,
        "at": rfc3339(at),
    }
    return {**fields, "hash": entry_hash(last_hash, fields), "body": body_bytes.decode("utf-8")}


def append(*, session: Session, head: Head, kind: str, subject: str, body: dict[str, Any], at: datetime) -> LogEntry:
    """Append one entry after the locked head and move the head forward."""
    fields = next_entry(
        last_index=head.last_index, last_hash=head.last_hash, kind=kind, subject=subject, body=body, at=at
    )
    entry = LogEntry(**fields)
    log_repo.add(session=session, entry=entry)
    head.last_index, head.last_hash = entry.index, entry.hash
    return entry


def page(*, sessions: Sessions, after: int, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` log entries after index ``after``, as `as_dict` gives them."""
    with sessions.reader() as session:
        return [as_dict(e) for e in log_repo.page(session=session, after=after, limit=limit)]


def verify_chain(entries: list[dict[str, Any]], prev_hash: str = GENESIS, start: int = 1) -> str:
    """Check consecutive entries; return the last hash.

    Raises:
        ChainBroken: an index gap, a wrong prev_hash, or a hash that does not recompute.
    """
    for expected_index, entry in enumerate(entries, start=start):
        if entry["index"] != expected_index:
            raise ChainBroken(f"expected index {expected_index}, found {entry['index']}")
        if entry["prev_hash"] != prev_hash:
            raise ChainBroken(f"entry {expected_index}: prev_hash does not match the previous hash")
        if entry_hash(prev_hash, entry) != entry["hash"]:
            raise ChainBroken(f"entry {expected_index}: hash does not recompute")
        prev_hash = entry["hash"]
    return prev_hash
