"""Packets and their topics."""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.orm import Session, joinedload, selectinload

from broker.db import Base
from broker.models import Agent, Key, Packet, PacketTopic, Quarantine, Report

_PACKETS = Base.metadata.tables["packets"]
_TOPICS = Base.metadata.tables["packet_topics"]
_LOG = Base.metadata.tables["log_entries"]
_HEAD = Base.metadata.tables["broker_head"]


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


def _aware(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PublishState:
    """What a publish must know before it writes: one statement, one round trip."""

    owner_id: int | None  # the teacher of the stored packet with this id; None: not stored
    seq: int | None
    newest: datetime | None  # the teacher's newest created_at on the packet's topics
    key_revoked: bool | None  # the signing key; None: no such key
    newest_version: int | None = None  # the teacher's highest signed version on the packet's topics


def publish_state(*, conn: Connection, packet_id: str, teacher_id: int, topics: list[str], keyid: str) -> PublishState:
    """The idempotence lookup, the freshness bound and the key's state together (scalar subqueries)."""
    stored = select(Packet.teacher_id, Packet.seq).where(Packet.id == packet_id)
    newest = (
        select(func.max(Packet.created_at))
        .join(PacketTopic, PacketTopic.packet_id == Packet.id)
        .where(Packet.teacher_id == teacher_id, PacketTopic.topic.in_(topics))
    )
    version = (
        select(func.max(Packet.version))
        .join(PacketTopic, PacketTopic.packet_id == Packet.id)
        .where(Packet.teacher_id == teacher_id, PacketTopic.topic.in_(topics))
    )
    stmt = select(
        stored.with_only_columns(Packet.teacher_id).scalar_subquery(),
        stored.with_only_columns(Packet.seq).scalar_subquery(),
        newest.scalar_subquery(),
        select(Key.revoked).where(Key.keyid == keyid).scalar_subquery(),
        version.scalar_subquery(),
    )
    owner, seq, newest_at, revoked, top = conn.execute(stmt).one()
    return PublishState(owner, seq, _aware(newest_at), None if revoked is None else bool(revoked), top)


def topics_of(*, conn: Connection, packet_id: str) -> list[str]:
    return list(
        conn.scalars(select(PacketTopic.topic).where(PacketTopic.packet_id == packet_id).order_by(PacketTopic.topic))
    )


def insert_published(
    *,
    conn: Connection,
    packets: list[dict[str, Any]],
    topics: list[dict[str, Any]],
    entries: list[dict[str, Any]],
    head: tuple[int, int, str],
    notify: tuple[str, str],
) -> None:
    """New packets' rows, their log entries, and the head moved to ``head`` (last seq, index, hash).

    The caller holds the head lock. Core statements, no ORM unit of work. On PostgreSQL they are
    one statement (data-modifying CTEs, the NOTIFY ``(channel, payload)`` in its RETURNING): the
    writers' lock is held across one round trip instead of five. SQLite runs them in turn,
    in-process; it has no NOTIFY.
    """
    new_packets = insert(_PACKETS).values(packets)
    new_topics = insert(_TOPICS).values(topics)
    new_entries = insert(_LOG).values(
        [{"log_index": e["index"], **{k: v for k, v in e.items() if k != "index"}} for e in entries]
    )
    last_seq, last_index, last_hash = head
    moved = update(_HEAD).where(_HEAD.c.id == 1).values(last_seq=last_seq, last_index=last_index, last_hash=last_hash)
    if conn.dialect.name != "postgresql":
        for stmt in (new_packets, new_topics, new_entries, moved):
            conn.execute(stmt)
        return
    channel, payload = notify
    ctes = (new_packets.cte("new_packets"), new_topics.cte("new_topics"), new_entries.cte("new_entries"))
    conn.execute(moved.add_cte(*ctes).returning(func.pg_notify(channel, payload)))


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
