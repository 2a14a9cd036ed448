"""Publishing: docs/protocol.md §2's ordered checks, then the all-or-nothing store.

Order of events for a new packet: every check passes on the spooled upload;
the payload and envelope blobs are made durable at their content addresses;
then one transaction, holding the head lock, assigns `seq`, inserts the rows
and appends the log entry. Readers see the packet only after that commit, and a
crash before it leaves only unreferenced blobs, which start-up sweeps.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from broker import clock, events
from broker.db import Sessions
from broker.models import Agent, Packet
from broker.repositories import agents as agents_repo
from broker.repositories import log as log_repo
from broker.repositories import packets as packets_repo
from broker.services import eventlog
from broker.storage import BlobStore, SpooledBlob
from m2kt import keys
from m2kt.errors import Conflict, Forbidden, InvalidManifest, UnknownKey
from m2kt.packet import OpenedPacket, open_packet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishOutcome:
    id: str
    seq: int
    topics: list[str]
    created: bool


def _existing(session: Session, packet_id: str, teacher: Agent) -> PublishOutcome | None:
    """The stored packet as a `created=False` outcome; a packet stored under another teacher is a 409."""
    packet = packets_repo.get(session=session, packet_id=packet_id)
    if packet is None:
        return None
    if packet.teacher_id != teacher.id:
        raise Conflict("this packet is already published by another teacher")
    return PublishOutcome(packet.id, packet.seq, [t.topic for t in packet.topics], created=False)


def created_at(opened: OpenedPacket) -> datetime:
    """The manifest's created_at as an aware datetime (the manifest rules already checked its form)."""
    return datetime.fromisoformat(opened.manifest.created_at.replace("z", "Z"))


def _check_owner(opened: OpenedPacket, teacher: Agent) -> None:
    if opened.manifest.teacher.agent != teacher.name:
        raise Forbidden(f"the statement names teacher {opened.manifest.teacher.agent[:64]!r}; only it may publish it")


def _check_fresh(session: Session, teacher: Agent, topics: list[str], created: datetime, window: timedelta) -> None:
    """created_at within ``window`` of the broker's clock, and not older than this teacher's newest on its topics."""
    now = clock.now()
    if not now - window <= created <= now + window:
        raise InvalidManifest(f"created_at is more than {window} away from the broker's clock ({clock.rfc3339(now)})")
    newest = packets_repo.newest_created_at(session=session, teacher_id=teacher.id, topics=topics)
    if newest is not None and created < newest:
        raise InvalidManifest(f"created_at is older than this teacher's newest packet on its topics ({newest})")


def _check_version(session: Session, teacher: Agent, opened: OpenedPacket, topics: list[str]) -> None:
    """A versioned packet must expire in the future and carry a version above this teacher's on its topics.

    Both fields are optional (v1 teachers omit them); the broker checks them so an honest broker
    never serves what every student would refuse (docs/protocol-choices.md, "Versions and expiry").
    """
    expires = opened.manifest.expires_at
    if expires is not None and expires <= clock.now():
        raise InvalidManifest(f"the packet expired at {opened.manifest.expires}")
    version = opened.manifest.version
    if version is None:
        return
    newest = packets_repo.newest_version(session=session, teacher_id=teacher.id, topics=topics)
    if newest is not None and version <= newest:
        raise Conflict(f"version {version} is not above this teacher's version {newest} on its topics")


def _check(sessions: Sessions, teacher: Agent, envelope: bytes, payload: SpooledBlob) -> OpenedPacket:
    with sessions.reader() as session:
        trusted = {
            k.keyid: keys.public_from_b64(k.public_key)
            for k in agents_repo.active_keys(session=session, agent_id=teacher.id)
        }
    return open_packet(envelope, payload.path, trusted, payload_sha256=payload.sha256, payload_size=payload.size)


def publish(
    *,
    sessions: Sessions,
    store: BlobStore,
    teacher: Agent,
    envelope: bytes,
    payload: SpooledBlob,
    window: timedelta = timedelta(days=1),
) -> PublishOutcome:
    """Check and store one packet; the same statement again answers `created=False`.

    After the checks of docs/protocol.md come ours (docs/protocol-choices.md): the statement's `teacher.agent`
    must be the caller (403 `forbidden`), a packet stored under another teacher is 409 `conflict`,
    and a new packet's `created_at` must lie within ``window`` of the broker's clock and not be
    older than the caller's newest packet on any of its topics (422 `invalid-manifest`); an
    `expires` in the past is 422 `invalid-manifest` and a `version` not above the caller's
    highest on its topics is 409 `conflict`. The same statement again is still 200 `created=False`, whenever it comes.

    Raises:
        M2KTError subclasses: the first check that fails; nothing is stored then.
    """
    opened = _check(sessions, teacher, envelope, payload)
    _check_owner(opened, teacher)
    topics = sorted(opened.manifest.topics)
    created = created_at(opened)
    with sessions.reader() as session:
        seen = _existing(session, opened.id, teacher)
        if seen is None:
            _check_fresh(session, teacher, topics, created, window)
            _check_version(session, teacher, opened, topics)
    if seen is not None:
        payload.discard()
        return seen
    envelope_blob = store.spool_bytes(envelope)
    try:
        store.commit(payload)
        store.commit(envelope_blob)
    finally:
        envelope_blob.discard()  # no-op once committed; a committed payload left alone is swept as an orphan
    with sessions.writer() as session, session.begin():
        head = log_repo.lock_head(session=session)
        seen = _existing(session, opened.id, teacher)
        if seen is not None:
            return seen
        _check_fresh(session, teacher, topics, created, window)  # again, under the lock: a racing publish
        _check_version(session, teacher, opened, topics)
        key = agents_repo.get_key(session=session, keyid=opened.keyid)
        if key is None or key.revoked:
            raise UnknownKey("the signing key was revoked while the packet was being checked")
        now = clock.now()
        seq = head.last_seq + 1
        head.last_seq = seq
        packet = Packet(
            id=opened.id,
            seq=seq,
            teacher_id=teacher.id,
            keyid=opened.keyid,
            status="published",
            statement=opened.statement_bytes.decode("utf-8"),
            payload_sha256=payload.sha256,
            payload_size=payload.size,
            envelope_sha256=envelope_blob.sha256,
            envelope_size=envelope_blob.size,
            received_at=now,
            created_at=created,
            version=opened.manifest.version,
        )
        packets_repo.insert(session=session, packet=packet, topics=topics)
        body = {
            "packet": opened.id,
            "seq": seq,
            "teacher": teacher.name,
            "keyid": opened.keyid,
            "topics": topics,
            "payload_sha256": payload.sha256,
            "envelope_sha256": envelope_blob.sha256,
        }
        eventlog.append(session=session, head=head, kind="packet.publish", subject=opened.id, body=body, at=now)
        events.announce(session, seq)
    logger.info("packet published", extra={"packet": opened.id, "seq": seq, "teacher": teacher.name})
    return PublishOutcome(opened.id, seq, topics, created=True)
