"""ORM tables. They never leave the broker: routes answer with `broker.schemas` models."""

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from broker.db import Base, UTCDateTime


class Agent(Base):
    __tablename__ = "agents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # teachers: how many of its unrevoked keys must sign each packet and head (k-of-n; migration 0004)
    threshold: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    keys: Mapped[list["Key"]] = relationship(back_populates="agent", order_by="Key.created_at")


class Key(Base):
    __tablename__ = "keys"
    keyid: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    public_key: Mapped[str] = mapped_column(String(64))  # standard base64 of the raw 32 bytes
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    agent: Mapped[Agent] = relationship(back_populates="keys")


class Packet(Base):
    __tablename__ = "packets"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    teacher_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    keyid: Mapped[str] = mapped_column(ForeignKey("keys.keyid"))
    status: Mapped[str] = mapped_column(String(16))  # published | quarantined
    statement: Mapped[str] = mapped_column(Text)  # the signed statement bytes, UTF-8
    payload_sha256: Mapped[str] = mapped_column(String(64))
    payload_size: Mapped[int] = mapped_column(BigInteger)
    envelope_sha256: Mapped[str] = mapped_column(String(64))
    envelope_size: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # the manifest's created_at (NULL only for rows older than migration 0002 that could not be read)
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # the manifest's version (optional, strictly increasing per teacher and topic; NULL when unversioned)
    version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    teacher: Mapped[Agent] = relationship()
    key: Mapped[Key] = relationship()
    topics: Mapped[list["PacketTopic"]] = relationship(order_by="PacketTopic.topic")


class PacketTopic(Base):
    __tablename__ = "packet_topics"
    packet_id: Mapped[str] = mapped_column(ForeignKey("packets.id"), primary_key=True)
    topic: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (Index("ix_packet_topics_topic_seq", "topic", "seq"),)


class TeacherHead(Base):
    """The newest signed head each teacher put (m2kt.head): the envelope exactly as received."""

    __tablename__ = "teacher_heads"
    teacher_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    envelope: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Report(Base):
    __tablename__ = "reports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    packet_id: Mapped[str] = mapped_column(ForeignKey("packets.id"), index=True)
    student_id: Mapped[int] = mapped_column(ForeignKey("agents.id"))
    verdict: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)  # canonical JSON of the report as served
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    student: Mapped[Agent] = relationship()
    __table_args__ = (UniqueConstraint("packet_id", "student_id"),)


class Quarantine(Base):
    """History of quarantine and lift actions; the current state is `Packet.status`."""

    __tablename__ = "quarantines"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    packet_id: Mapped[str] = mapped_column(ForeignKey("packets.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))  # quarantine | lift
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class LogEntry(Base):
    __tablename__ = "log_entries"
    index: Mapped[int] = mapped_column("log_index", BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(128), index=True)
    body_sha256: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    at: Mapped[str] = mapped_column(String(40))  # the RFC 3339 string exactly as hashed
    body: Mapped[str] = mapped_column(Text)  # canonical JSON whose sha256 is body_sha256


class Head(Base):
    """One row: the last seq and log entry. Writers lock it to serialise the chain."""

    __tablename__ = "broker_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_index: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))


class DashboardSession(Base):
    """A signed-in dashboard visitor. The cookie holds a random id; only its SHA-256 is stored.

    The session remembers the hash of the token it was opened with, so rotating or revoking
    that token ends the session too.
    """

    __tablename__ = "dashboard_sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"), nullable=True)  # NULL: the admin
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64))
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
