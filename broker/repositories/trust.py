"""Reads for teachers' trust overview: versions per topic and the students' trust reports in the log."""

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.models import LogEntry, Packet, PacketTopic, TeacherHead

TRUST_REPORT = "trust.report"


def find_entry(*, session: Session, kind: str, subject: str, body_sha256: str) -> LogEntry | None:
    """The log entry of this kind and subject whose body hashes to ``body_sha256`` (a repeat), if any."""
    stmt = select(LogEntry).where(
        LogEntry.subject == subject, LogEntry.kind == kind, LogEntry.body_sha256 == body_sha256
    )
    return session.scalars(stmt.limit(1)).first()


def trust_reports(*, session: Session, teacher: str, limit: int) -> list[LogEntry]:
    """The newest ``limit`` trust reports on ``teacher``, oldest first."""
    stmt = (
        select(LogEntry)
        .where(LogEntry.subject == teacher, LogEntry.kind == TRUST_REPORT)
        .order_by(LogEntry.index.desc())
        .limit(limit)
    )
    return list(reversed(list(session.scalars(stmt))))


def versions_by_topic(
    *, session: Session, teacher_id: int, include_quarantined: bool
) -> list[tuple[str, int, int | None]]:
    """(topic, packets, highest version) of one teacher's packets."""
    stmt = (
        select(PacketTopic.topic, func.count(), func.max(Packet.version))
        .join(Packet, Packet.id == PacketTopic.packet_id)
        .where(Packet.teacher_id == teacher_id)
        .group_by(PacketTopic.topic)
        .order_by(PacketTopic.topic)
    )
    if not include_quarantined:
        stmt = stmt.where(Packet.status == "published")
    return [(t, int(n), None if v is None else int(v)) for t, n, v in session.execute(stmt)]


def head_of(*, session: Session, teacher_id: int) -> TeacherHead | None:
    return session.get(TeacherHead, teacher_id)
