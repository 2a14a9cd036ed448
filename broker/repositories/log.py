"""The event log and the head row that serialises writers."""

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from broker.models import Head, LogEntry


def lock_head(*, session: Session) -> Head:
    """Take the writers' lock: FOR UPDATE on PostgreSQL; SQLite writers already hold BEGIN IMMEDIATE."""
    head = session.scalar(select(Head).where(Head.id == 1).with_for_update())
    if head is None:
        raise RuntimeError("broker_head row missing: run the migrations")
    return head


def add(*, session: Session, entry: LogEntry) -> None:
    session.add(entry)
    session.flush()


def page(*, session: Session, after: int, limit: int) -> list[LogEntry]:
    stmt = select(LogEntry).where(LogEntry.index > after).order_by(LogEntry.index).limit(limit)
    return list(session.scalars(stmt))


def about(*, session: Session, subject: str) -> list[LogEntry]:
    stmt = select(LogEntry).where(LogEntry.subject == subject).order_by(LogEntry.index)
    return list(session.scalars(stmt))


def lock_head_row(*, conn: Connection) -> tuple[int, int, str]:
    """`lock_head` for Core writers: (last_seq, last_index, last_hash) under the writers' lock."""
    row = conn.execute(select(Head.last_seq, Head.last_index, Head.last_hash).where(Head.id == 1).with_for_update())
    head = row.one_or_none()
    if head is None:
        raise RuntimeError("broker_head row missing: run the migrations")
    return int(head[0]), int(head[1]), str(head[2])
