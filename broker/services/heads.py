"""Teachers' signed heads (m2kt.head): accept a newer one, serve the newest.

The broker checks a head as strictly as a packet so that what it serves is what students can
use: signed by an unrevoked key of the calling teacher, naming that teacher, not expired, newer
than the stored one, and naming only packets this broker has from this teacher at the versions
the head claims. A student then knows that a packet the head names and the broker does not list
was withheld. Each head stored is an entry of the event log (kind ``head.put``, subject the
teacher), so the history of what the teacher claimed stays checkable.
"""

import hashlib
import json
import logging
from typing import Any

from broker import clock
from broker.db import Sessions
from broker.models import Agent, Packet, TeacherHead
from broker.repositories import agents as agents_repo
from broker.repositories import log as log_repo
from broker.repositories import packets as packets_repo
from broker.services import eventlog
from broker.services.publish import check_threshold
from m2kt import keys
from m2kt.errors import Conflict, Forbidden, InvalidManifest, NotFound
from m2kt.head import Head, open_head

__all__ = ["get_head", "put_head"]

logger = logging.getLogger(__name__)


def _check_packets(sessions: Sessions, teacher: Agent, head: Head) -> None:
    with sessions.reader() as session:
        for topic, named in head.topics.items():
            packet: Packet | None = packets_repo.get(session=session, packet_id=named.packet)
            if packet is None or packet.teacher_id != teacher.id:
                raise InvalidManifest(
                    f"the head names packet {named.packet} for {topic}, which this teacher did not publish here"
                )
            if packet.version != named.version or topic not in {t.topic for t in packet.topics}:
                raise InvalidManifest(
                    f"the head names packet {named.packet} as version {named.version} of {topic}; it is not"
                )


def put_head(*, sessions: Sessions, teacher: Agent, envelope: dict[str, Any]) -> tuple[Head, bool]:
    """Store ``envelope`` as the teacher's head; (head, stored) where the same version again is not stored.

    Raises:
        UnknownKey, BadSignature, InvalidEnvelope, InvalidManifest: the head does not verify or parse;
        Forbidden: it names another teacher; InvalidManifest: it expired or names packets this
        broker does not have; Conflict: its version is below the stored one (or equal with other bytes).
    """
    raw = json.dumps(envelope, separators=(",", ":")).encode()
    with sessions.reader() as session:
        trusted = {
            k.keyid: keys.public_from_b64(k.public_key)
            for k in agents_repo.active_keys(session=session, agent_id=teacher.id)
        }
    head = open_head(raw, trusted)
    check_threshold(head.signers, teacher)
    if head.teacher != teacher.name:
        raise Forbidden(f"the head names teacher {head.teacher[:64]!r}; only it may put it")
    if head.expires <= clock.now():
        raise InvalidManifest(f"the head expired at {head.expires.isoformat()}")
    _check_packets(sessions, teacher, head)
    with sessions.writer() as session, session.begin():
        lock = log_repo.lock_head(session=session)  # one writer at a time: versions compare against the latest
        stored = session.get(TeacherHead, teacher.id)
        if stored is not None and stored.version >= head.version:
            if stored.version == head.version and stored.envelope == raw.decode():
                return head, False
            raise Conflict(f"head version {head.version} is not above the stored version {stored.version}")
        row = stored or TeacherHead(teacher_id=teacher.id)
        row.version, row.expires_at, row.envelope, row.received_at = (
            head.version,
            head.expires,
            raw.decode(),
            clock.now(),
        )
        session.add(row)
        body = {
            "teacher": teacher.name,
            "version": head.version,
            "expires": clock.rfc3339(head.expires),
            "topics": {t: {"version": h.version, "packet": h.packet} for t, h in sorted(head.topics.items())},
            "envelope_sha256": hashlib.sha256(raw).hexdigest(),
        }
        eventlog.append(
            session=session, head=lock, kind="head.put", subject=teacher.name, body=body, at=row.received_at
        )
    logger.info("head stored", extra={"teacher": teacher.name, "version": head.version})
    return head, True


def get_head(*, sessions: Sessions, name: str) -> bytes:
    """The newest head envelope of teacher ``name``, byte for byte as stored.

    Raises:
        NotFound: no such agent, or it never put a head.
    """
    with sessions.reader() as session:
        agent = agents_repo.get_by_name(session=session, name=name)
        row = None if agent is None else session.get(TeacherHead, agent.id)
        if row is None:
            raise NotFound(f"no head for {name!r}")
        return row.envelope.encode()
