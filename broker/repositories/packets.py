"""Packets and their topics."""

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload, selectinload

from broker.models import Packet, PacketTopic, Report


def get(*, session: Session, packet_id: str) -> Packet | None:
    stmt = select(Packet).where(Packet.id == packet_id).options(joinedload(Packet.teacher), selectinload(Packet.topics))
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
        .options(joinedload(Packet.teacher), selectinload(Packet.topics))
    )
    if not include_quarantined:
        stmt = stmt.where(Packet.status == "published")
    return list(session.scalars(stmt))


def topic_stats(*, session: Session, include_quarantined: bool) -> list[tuple[str, int, int]]:
    """(topic, packet count, last seq) for every topic with a visible packet."""
    stmt = (
        select(PacketTopic.topic, func.count(), func.max(PacketTopic.seq))
        .join(Packet, Packet.id == PacketTopic.packet_id)
        .group_by(PacketTopic.topic)
        .order_by(PacketTopic.topic)
    )
    if not include_quarantined:
        stmt = stmt.where(Packet.status == "published")
    return [(t, int(n), int(s)) for t, n, s in session.execute(stmt)]


def max_seq(*, session: Session) -> int:
    return int(session.scalar(select(func.coalesce(func.max(Packet.seq), 0))) or 0)


def referenced_blobs(*, session: Session) -> set[str]:
    rows = session.execute(select(Packet.payload_sha256, Packet.envelope_sha256))
    return {sha for pair in rows for sha in pair}


def report_counts(*, session: Session, packet_id: str) -> dict[str, int]:
    stmt = select(Report.verdict, func.count()).where(Report.packet_id == packet_id).group_by(Report.verdict)
    return {verdict: int(n) for verdict, n in session.execute(stmt)}
