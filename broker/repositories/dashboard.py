"""Read-only queries for the dashboard: each page is a fixed number of queries, never one per row."""

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, aliased, joinedload, selectinload

from broker.models import Agent, DashboardSession, LogEntry, Packet, PacketTopic, Report
from broker.repositories import packets as packets_repo


def recent_packets(*, session: Session, before: int | None, limit: int, include_quarantined: bool) -> list[Packet]:
    """The newest packets (by seq, descending), paged with ``before`` = the last seq of the previous page."""
    stmt = (
        select(Packet)
        .options(joinedload(Packet.teacher), joinedload(Packet.key), selectinload(Packet.topics))
        .order_by(Packet.seq.desc())
    )
    if before is not None:
        stmt = stmt.where(Packet.seq < before)
    if not include_quarantined:
        stmt = stmt.where(Packet.status == "published")
    return list(session.scalars(stmt.limit(limit)))


def topic_activity(*, session: Session, include_quarantined: bool) -> list[tuple[str, int, int, object]]:
    """(topic, packets, last seq, last received_at) per topic: the topic counts plus one lookup by seq."""
    stats = packets_repo.topic_stats(session=session, include_quarantined=include_quarantined)
    last = select(Packet.seq, Packet.received_at).where(Packet.seq.in_({s for _, _, s in stats}))
    at = {seq: when for seq, when in session.execute(last)}
    return [(t, n, s, at.get(s)) for t, n, s in stats]


def verdicts_by_teacher(*, session: Session) -> list[tuple[str, str, int]]:
    teacher = aliased(Agent)
    stmt = (
        select(teacher.name, Report.verdict, func.count())
        .join(Packet, Packet.id == Report.packet_id)
        .join(teacher, teacher.id == Packet.teacher_id)
        .group_by(teacher.name, Report.verdict)
        .order_by(teacher.name)
    )
    return [(t, v, int(n)) for t, v, n in session.execute(stmt)]


def verdicts_by_topic(*, session: Session) -> list[tuple[str, str, int]]:
    stmt = (
        select(PacketTopic.topic, Report.verdict, func.count())
        .join(Report, Report.packet_id == PacketTopic.packet_id)
        .group_by(PacketTopic.topic, Report.verdict)
        .order_by(PacketTopic.topic)
    )
    return [(t, v, int(n)) for t, v, n in session.execute(stmt)]


def report_bodies(*, session: Session, limit: int) -> list[tuple[str, str, str]]:
    """(student, teacher, report body JSON) of the newest ``limit`` reports."""
    student, teacher = aliased(Agent), aliased(Agent)
    stmt = (
        select(student.name, teacher.name, Report.body)
        .join(student, student.id == Report.student_id)
        .join(Packet, Packet.id == Report.packet_id)
        .join(teacher, teacher.id == Packet.teacher_id)
        .order_by(Report.id.desc())
        .limit(limit)
    )
    return [(s, t, b) for s, t, b in session.execute(stmt)]


def verdicts_of(*, session: Session, packet_ids: Collection[str]) -> dict[str, dict[str, int]]:
    """{packet id: {verdict: reports}} for the given packets, in one query."""
    stmt = (
        select(Report.packet_id, Report.verdict, func.count())
        .where(Report.packet_id.in_(list(packet_ids)))
        .group_by(Report.packet_id, Report.verdict)
    )
    out: dict[str, dict[str, int]] = {}
    for packet_id, verdict, n in session.execute(stmt):
        out.setdefault(packet_id, {})[verdict] = int(n)
    return out


def reports_of(*, session: Session, packet_id: str, limit: int) -> list[Report]:
    """The newest ``limit`` reports on a packet, oldest first."""
    stmt = (
        select(Report)
        .where(Report.packet_id == packet_id)
        .options(joinedload(Report.student))
        .order_by(Report.id.desc())
        .limit(limit)
    )
    return list(reversed(list(session.scalars(stmt))))


def log_window(*, session: Session, first: int, last: int) -> list[LogEntry]:
    stmt = select(LogEntry).where(LogEntry.index >= first, LogEntry.index <= last).order_by(LogEntry.index)
    return list(session.scalars(stmt))


def add_session(*, session: Session, row: DashboardSession) -> None:
    session.add(row)
    session.flush()


def get_session(*, session: Session, id_hash: str) -> tuple[DashboardSession, Agent | None] | None:
    """The session row and its agent (None for the admin's), or None."""
    row = session.get(DashboardSession, id_hash)
    if row is None:
        return None
    return row, session.get(Agent, row.agent_id) if row.agent_id is not None else None


def delete_session(*, session: Session, id_hash: str) -> None:
    session.execute(delete(DashboardSession).where(DashboardSession.id_hash == id_hash))


def delete_expired_sessions(*, session: Session, now: datetime) -> None:
    session.execute(delete(DashboardSession).where(DashboardSession.expires_at <= now))
