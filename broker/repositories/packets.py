"""Packets and their topics."""

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload, selectinload

from broker.models import Agent, Packet, PacketTopic, Quarantine, Report


def get(*, session: Session, packet_id: str) -> Packet | None:
    stmt = (
        select(Packet)
        .where(Packet.id == packet_id)
        .options(joinedload(Packet.teacher), joinedload(Packet.key), selectinload(Packet.topics))
    )
    return session.scalar(stmt)


def teachers_of(*, session: Session, packet_ids: list[str]) -> dict[str, str]:
    """Packet id -> its teacher's name for those of ``packet_ids`` this broker holds: one query."""
    if not packet_ids:
        return {}
    stmt = select(Packet.id, Agent.name).join(Agent, Agent.id == Packet.teacher_id).where(Packet.id.in_(packet_ids))
    return {pid: name for pid, name in session.execute(stmt)}


def newest_created_at(*, session: Session, teacher_id: int, topics: list[str]) -> datetime | None:
    """The newest manifest created_at among this teacher's packets on any of ``topics``."""
    stmt = (
        select(func.max(Packet.created_at))
        .join(PacketTopic, PacketTopic.packet_id == Packet.id)
        .where(Packet.teacher_id == teacher_id, PacketTopic.topic.in_(topics))
    )
    value = session.scalar(stmt)
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def newest_version(*, session: Session, teacher_id: int, topics: list[str]) -> int | None:
    """The highest manifest version among this teacher's packets on any of ``topics``."""
    stmt = (
        select(func.max(Packet.version))
        .join(PacketTopic, PacketTopic.packet_id == Packet.id)
        .where(Packet.teacher_id == teacher_id, PacketTopic.topic.in_(topics))
    )
    return session.scalar(stmt)


def insert(*, session: Session, packet: Packet, topics: list[str]) -> None:
    session.add(packet)
    session.add_all(PacketTopic(packet_id=packet.id, topic=t, seq=packet.seq) for t in topics)
    session.flush()


def topic_page(*, session: Session, topic: str, after: int, limit: int, include_quarantined: bool) -> list[Packet]:
    stmt = (
        select(Packet)
        .join(PacketTopic, PacketTopic.packet_id == Packet.id)
        .where(PacketTopic.topic == topic, PacketTopic.seq > after)
        .order_by(PacketTopic.seq)
        .limit(limit)
        .options(joinedload(Packet.teacher), joinedload(Packet.key), selectinload(Packet.topics))
    )
    if not include_quarantined:
        stmt = stmt.where(Packet.status == "published")
    return list(session.scalars(stmt))


def topic_stats(*, session: Session, include_quarantined: bool) -> list[tuple[str, int, int]]:
    """(topic, packet count, last seq) for every topic with a visible packet.

    Counted from the (topic, seq) index alone, without a join to every packet row: the dashboard
    refetches this on every publish. Quarantined packets, few and each with a history row in
    `quarantines`, are then taken out for callers who may not see them.
    """
    rows = session.execute(
        select(PacketTopic.topic, func.count(), func.max(PacketTopic.seq)).group_by(PacketTopic.topic)
    )
    stats = {t: [int(n), int(s)] for t, n, s in rows}
    if not include_quarantined:
        hidden = session.execute(
            select(PacketTopic.topic, PacketTopic.seq)
            .join(Packet, Packet.id == PacketTopic.packet_id)
            .where(Packet.id.in_(select(Quarantine.packet_id)), Packet.status != "published")
        ).all()
        newest_hidden = set()
        for topic, seq in hidden:
            stats[topic][0] -= 1
            if seq == stats[topic][1]:
                newest_hidden.add(topic)
        if newest_hidden:  # the newest packet of a topic is hidden: its last visible seq, from those topics only
            visible = (
                select(PacketTopic.topic, func.max(PacketTopic.seq))
                .join(Packet, Packet.id == PacketTopic.packet_id)
                .where(PacketTopic.topic.in_(newest_hidden), Packet.status == "published")
                .group_by(PacketTopic.topic)
            )
            last = {topic: seq for topic, seq in session.execute(visible)}
            for topic in newest_hidden:
                stats[topic][1] = int(last.get(topic, 0))
    return [(t, n, s) for t, (n, s) in sorted(stats.items()) if n > 0]


def max_seq(*, session: Session) -> int:
    return int(session.scalar(select(func.coalesce(func.max(Packet.seq), 0))) or 0)


def referenced_blobs(*, session: Session) -> set[str]:
    rows = session.execute(select(Packet.payload_sha256, Packet.envelope_sha256))
    return {sha for pair in rows for sha in pair}


def report_counts(*, session: Session, packet_id: str) -> dict[str, int]:
    stmt = select(Report.verdict, func.count()).where(Report.packet_id == packet_id).group_by(Report.verdict)
    return {verdict: int(n) for verdict, n in session.execute(stmt)}
