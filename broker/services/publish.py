"""Publishing: docs/protocol.md §2's ordered checks, then the all-or-nothing store.

Order of events for a new packet: every check passes on the spooled upload;
the payload and envelope blobs are made durable at their content addresses;
then one transaction, holding the head lock, assigns `seq`, inserts the rows
and appends the log entry. Readers see the packet only after that commit, and a
crash before it leaves only unreferenced blobs, which start-up sweeps.

The database work of a publish is one pool checkout (one transaction on
PostgreSQL, see `ReadThenWrite`): one read statement before the blobs (the
idempotence lookup and the freshness bound, so a refused or repeated packet
writes no file), then the writes: the head lock, the same read again (a racing
publish), and Core inserts with no ORM flush (on PostgreSQL one statement).

Publishes that reach the writers' lock while another holds it commit together
(`GroupCommit`): one transaction, one log run, one flush of the database's
log, each publish acknowledged only after that commit.
"""

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from broker import clock, events
from broker.db import ReadThenWrite, Sessions
from broker.models import Agent
from broker.repositories import log as log_repo
from broker.repositories import packets as packets_repo
from broker.services import eventlog
from broker.storage import BlobStore, SpooledBlob
from m2kt import keys
from m2kt.errors import Conflict, Forbidden, InvalidManifest, M2KTError, UnknownKey
from m2kt.packet import OpenedPacket, open_packet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishOutcome:
    id: str
    seq: int
    topics: list[str]
    created: bool


def _existing(
    conn: Connection, state: packets_repo.PublishState, packet_id: str, teacher: Agent
) -> PublishOutcome | None:
    """The stored packet as a `created=False` outcome; a packet stored under another teacher is a 409."""
    if state.owner_id is None or state.seq is None:
        return None
    if state.owner_id != teacher.id:
        raise Conflict("this packet is already published by another teacher")
    return PublishOutcome(packet_id, state.seq, packets_repo.topics_of(conn=conn, packet_id=packet_id), created=False)


def created_at(opened: OpenedPacket) -> datetime:
    """The manifest's created_at as an aware datetime (the manifest rules already checked its form)."""
    return datetime.fromisoformat(opened.manifest.created_at.replace("z", "Z"))


def check_threshold(signers: tuple[str, ...], teacher: Agent) -> None:
    """At least the teacher's threshold of its unrevoked keys signed (k-of-n; 1 unless the admin set it)."""
    if len(signers) < teacher.threshold:
        raise UnknownKey(f"signed by {len(signers)} of {teacher.name}'s keys; its threshold is {teacher.threshold}")


def _check_owner(opened: OpenedPacket, teacher: Agent) -> None:
    if opened.manifest.teacher.agent != teacher.name:
        raise Forbidden(f"the statement names teacher {opened.manifest.teacher.agent[:64]!r}; only it may publish it")


def _check_clock(created: datetime, window: timedelta) -> None:
    """created_at within ``window`` of the broker's clock."""
    now = clock.now()
    if not now - window <= created <= now + window:
        raise InvalidManifest(f"created_at is more than {window} away from the broker's clock ({clock.rfc3339(now)})")


def _check_newest(state: packets_repo.PublishState, created: datetime) -> None:
    """Not older than this teacher's newest packet on its topics."""
    if state.newest is not None and created < state.newest:
        raise InvalidManifest(f"created_at is older than this teacher's newest packet on its topics ({state.newest})")


def _check_key(state: packets_repo.PublishState) -> None:
    """The signing key is still unrevoked (the signature was checked against the keys read before the upload)."""
    if state.key_revoked is not False:
        raise UnknownKey("the signing key was revoked while the packet was being checked")


def _check_version(state: packets_repo.PublishState, opened: OpenedPacket) -> None:
    """A versioned packet must expire in the future and carry a version above this teacher's on its topics.

    Both fields are optional (v1 teachers omit them); the broker checks them so an honest broker
    never serves what every student would refuse (docs/protocol-choices.md, "Versions and expiry").
    """
    expires = opened.manifest.expires_at
    if expires is not None and expires <= clock.now():
        raise InvalidManifest(f"the packet expired at {opened.manifest.expires}")
    version = opened.manifest.version
    if version is not None and state.newest_version is not None and version <= state.newest_version:
        raise Conflict(f"version {version} is not above this teacher's version {state.newest_version} on its topics")


def publish(
    *,
    sessions: Sessions,
    store: BlobStore,
    teacher: Agent,
    trusted: dict[str, str],
    envelope: bytes,
    payload: SpooledBlob,
    broadcaster: events.Broadcaster,
    window: timedelta = timedelta(days=1),
) -> PublishOutcome:
    """Check and store one packet; the same statement again answers `created=False`.

    ``trusted``: the teacher's unrevoked keys (keyid -> base64), as read before the upload.
    After the checks of docs/protocol.md come ours (docs/protocol-choices.md): the statement's `teacher.agent`
    must be the caller (403 `forbidden`), a packet stored under another teacher is 409 `conflict`,
    and a new packet's `created_at` must lie within ``window`` of the broker's clock and not be
    older than the caller's newest packet on any of its topics (422 `invalid-manifest`); an
    `expires` in the past is 422 `invalid-manifest` and a `version` not above the caller's
    highest on its topics is 409 `conflict`. The same statement again is still 200 `created=False`, whenever it comes.
    A new packet wakes this process's event streams of its topics once committed.

    Raises:
        M2KTError subclasses: the first check that fails; nothing is stored then.
    """
    public = {keyid: keys.public_from_b64(b64) for keyid, b64 in trusted.items()}
    opened = open_packet(envelope, payload.path, public, payload_sha256=payload.sha256, payload_size=payload.size)
    check_threshold(opened.signers, teacher)
    _check_owner(opened, teacher)
    topics = sorted(opened.manifest.topics)
    created = created_at(opened)
    with sessions.read_then_write() as unit:
        with unit.reading() as conn:
            state = packets_repo.publish_state(
                conn=conn, packet_id=opened.id, teacher_id=teacher.id, topics=topics, keyid=opened.keyid
            )
            seen = _existing(conn, state, opened.id, teacher)
            if seen is None:
                _check_clock(created, window)
                _check_newest(state, created)
                _check_version(state, opened)
                _check_key(state)
        if seen is not None:
            payload.discard()
            return seen
        envelope_blob = store.spool_bytes(envelope)
        try:
            store.commit_all([payload, envelope_blob])
        finally:
            envelope_blob.discard()  # no-op once committed; a committed payload left alone is swept as an orphan
        pending = _Pending(opened, teacher, topics, created, payload, envelope_blob)
        outcome = _group(sessions).commit(pending, lambda batch: _write(unit, batch))
    if outcome.created:
        logger.info("packet published", extra={"packet": opened.id, "seq": outcome.seq, "teacher": teacher.name})
        broadcaster.notify(outcome.topics)  # only the streams of its topics can have something new
    return outcome


@dataclass
class _Pending:
    """A checked packet whose blobs are durable, waiting for the writers' transaction."""

    opened: OpenedPacket
    teacher: Agent
    topics: list[str]
    created: datetime
    payload: SpooledBlob
    envelope: SpooledBlob
    result: PublishOutcome | BaseException | None = field(default=None)


Writer = Callable[[list[_Pending]], list[PublishOutcome | M2KTError]]


class GroupCommit:
    """Publishes that wait for the writers' lock commit together, in one transaction.

    The head lock serialises commits, each with its flush of the database's log, while
    independent transactions would share flushes. So the first publish to find no commit
    running writes, in one transaction, its own packet and every one that queued meanwhile,
    and hands each its outcome after the commit (a failed commit fails them all). `seq` stays
    gapless and in commit order, and no publish is acknowledged before its commit.
    """

    def __init__(self) -> None:
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._leader = threading.Lock()

    def commit(self, pending: _Pending, write: Writer) -> PublishOutcome:
        with self._queue_lock:
            self._queue.append(pending)
        with self._leader:
            if pending.result is None:  # nobody took it yet: lead, with whatever queued behind the last commit
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                try:
                    results: list[PublishOutcome | M2KTError] | None = write(batch)
                except BaseException as exc:
                    results = None
                    for item in batch:
                        item.result = exc
                if results is not None:
                    for item, result in zip(batch, results, strict=True):
                        item.result = result
        outcome = pending.result
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        return outcome


_groups: "weakref.WeakKeyDictionary[Sessions, GroupCommit]" = weakref.WeakKeyDictionary()
_groups_lock = threading.Lock()


def _group(sessions: Sessions) -> GroupCommit:
    """One queue per database (per `Sessions`): brokers in one process on different databases never mix."""
    with _groups_lock:
        group = _groups.get(sessions)
        if group is None:
            group = _groups[sessions] = GroupCommit()
        return group


def _write(unit: ReadThenWrite, batch: list[_Pending]) -> list[PublishOutcome | M2KTError]:
    """Under the head lock: each packet's checks again (against the database and the batch), then all rows at once."""
    results: list[PublishOutcome | M2KTError] = []
    with unit.writing() as conn:
        last_seq, last_index, last_hash = log_repo.lock_head_row(conn=conn)
        now = clock.now()
        rows: list[dict[str, Any]] = []
        entries: list[dict[str, Any]] = []
        taken: dict[str, PublishOutcome] = {}  # packet id -> its outcome, within this batch
        owners: dict[str, int] = {}
        newest: dict[tuple[int, str], datetime] = {}  # (teacher, topic) -> newest created_at within this batch
        versions: dict[tuple[int, str], int] = {}  # (teacher, topic) -> highest version within this batch
        for item in batch:
            opened, teacher = item.opened, item.teacher
            try:
                if opened.id in taken:
                    if owners[opened.id] != teacher.id:
                        raise Conflict("this packet is already published by another teacher")
                    first = taken[opened.id]
                    results.append(PublishOutcome(first.id, first.seq, first.topics, created=False))
                    continue
                state = packets_repo.publish_state(  # again, under the lock: a racing publish
                    conn=conn, packet_id=opened.id, teacher_id=teacher.id, topics=item.topics, keyid=opened.keyid
                )
                seen = _existing(conn, state, opened.id, teacher)
                if seen is not None:
                    results.append(seen)
                    continue
                _check_newest(state, item.created)
                if any(item.created < newest.get((teacher.id, t), item.created) for t in item.topics):
                    raise InvalidManifest("created_at is older than this teacher's newest packet on its topics")
                _check_version(state, opened)
                version = opened.manifest.version
                batch_top = max(
                    (versions[(teacher.id, t)] for t in item.topics if (teacher.id, t) in versions), default=None
                )
                if version is not None and batch_top is not None and version <= batch_top:
                    raise Conflict(f"version {version} is not above this teacher's version {batch_top} on its topics")
                _check_key(state)
            except M2KTError as exc:
                results.append(exc)
                continue
            last_seq += 1
            rows.append(
                {
                    "id": opened.id,
                    "seq": last_seq,
                    "teacher_id": teacher.id,
                    "keyid": opened.keyid,
                    "status": "published",
                    "statement": opened.statement_bytes.decode("utf-8"),
                    "payload_sha256": item.payload.sha256,
                    "payload_size": item.payload.size,
                    "envelope_sha256": item.envelope.sha256,
                    "envelope_size": item.envelope.size,
                    "received_at": now,
                    "created_at": item.created,
                    "version": opened.manifest.version,
                }
            )
            body = {
                "packet": opened.id,
                "seq": last_seq,
                "teacher": teacher.name,
                "keyid": opened.keyid,
                "topics": item.topics,
                "payload_sha256": item.payload.sha256,
                "envelope_sha256": item.envelope.sha256,
            }
            entry = eventlog.next_entry(
                last_index=last_index, last_hash=last_hash, kind="packet.publish", subject=opened.id, body=body, at=now
            )
            entries.append(entry)
            last_index, last_hash = entry["index"], entry["hash"]
            taken[opened.id] = PublishOutcome(opened.id, last_seq, item.topics, created=True)
            owners[opened.id] = teacher.id
            for t in item.topics:
                newest[(teacher.id, t)] = max(item.created, newest.get((teacher.id, t), item.created))
                if opened.manifest.version is not None:
                    versions[(teacher.id, t)] = max(opened.manifest.version, versions.get((teacher.id, t), 0))
            results.append(taken[opened.id])
        if rows:
            topic_rows: list[dict[str, Any]] = [
                {"packet_id": o.id, "topic": t, "seq": o.seq} for o in taken.values() for t in o.topics
            ]
            touched = sorted({row["topic"] for row in topic_rows})
            notify = (events.CHANNEL, events.notify_payload(last_seq, touched))
            packets_repo.insert_published(
                conn=conn,
                packets=rows,
                topics=topic_rows,
                entries=entries,
                head=(last_seq, last_index, last_hash),
                notify=notify,
            )
    return results
