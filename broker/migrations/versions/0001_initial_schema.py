"""Initial schema: agents, keys, packets, topics, reports, quarantines, the event log and its head.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 09:22:20.234936
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
        sa.UniqueConstraint("name", name=op.f("uq_agents_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_agents_token_hash")),
    )
    op.create_table(
        "broker_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_index", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broker_head")),
    )
    op.create_table(
        "log_entries",
        sa.Column("log_index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("at", sa.String(length=40), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("log_index", name=op.f("pk_log_entries")),
        sa.UniqueConstraint("hash", name=op.f("uq_log_entries_hash")),
    )
    with op.batch_alter_table("log_entries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_log_entries_subject"), ["subject"], unique=False)

    op.create_table(
        "keys",
        sa.Column("keyid", sa.String(length=64), nullable=False),
        sa.Column("agent_id", sa.Integer(), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["agent_id"], ["agents.id"], name=op.f("fk_keys_agent_id_agents")),
        sa.PrimaryKeyConstraint("keyid", name=op.f("pk_keys")),
    )
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_keys_agent_id"), ["agent_id"], unique=False)

    op.create_table(
        "packets",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("teacher_id", sa.Integer(), nullable=False),
        sa.Column("keyid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("statement", sa.Text(), nullable=False),
        sa.Column("payload_sha256", sa.String(length=64), nullable=False),
        sa.Column("payload_size", sa.BigInteger(), nullable=False),
        sa.Column("envelope_sha256", sa.String(length=64), nullable=False),
        sa.Column("envelope_size", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["keyid"], ["keys.keyid"], name=op.f("fk_packets_keyid_keys")),
        sa.ForeignKeyConstraint(["teacher_id"], ["agents.id"], name=op.f("fk_packets_teacher_id_agents")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_packets")),
        sa.UniqueConstraint("seq", name=op.f("uq_packets_seq")),
    )
    with op.batch_alter_table("packets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_packets_teacher_id"), ["teacher_id"], unique=False)

    op.create_table(
        "packet_topics",
        sa.Column("packet_id", sa.String(length=64), nullable=False),
        sa.Column("topic", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["packet_id"], ["packets.id"], name=op.f("fk_packet_topics_packet_id_packets")),
        sa.PrimaryKeyConstraint("packet_id", "topic", name=op.f("pk_packet_topics")),
    )
    with op.batch_alter_table("packet_topics", schema=None) as batch_op:
        batch_op.create_index("ix_packet_topics_topic_seq", ["topic", "seq"], unique=False)

    op.create_table(
        "quarantines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("packet_id", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["packet_id"], ["packets.id"], name=op.f("fk_quarantines_packet_id_packets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantines")),
    )
    with op.batch_alter_table("quarantines", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_quarantines_packet_id"), ["packet_id"], unique=False)

    op.create_table(
        "reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("packet_id", sa.String(length=64), nullable=False),
        sa.Column("student_id", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["packet_id"], ["packets.id"], name=op.f("fk_reports_packet_id_packets")),
        sa.ForeignKeyConstraint(["student_id"], ["agents.id"], name=op.f("fk_reports_student_id_agents")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reports")),
        sa.UniqueConstraint("packet_id", "student_id", name=op.f("uq_reports_packet_id")),
    )
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reports_packet_id"), ["packet_id"], unique=False)

    # The chain's head starts empty: no packet, no entry, and 64 zeros as the first prev_hash.
    head = sa.table(
        "broker_head",
        sa.column("id", sa.Integer()),
        sa.column("last_seq", sa.BigInteger()),
        sa.column("last_index", sa.BigInteger()),
        sa.column("last_hash", sa.String()),
    )
    op.bulk_insert(head, [{"id": 1, "last_seq": 0, "last_index": 0, "last_hash": "0" * 64}])


def downgrade() -> None:
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reports_packet_id"))

    op.drop_table("reports")
    with op.batch_alter_table("quarantines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_quarantines_packet_id"))

    op.drop_table("quarantines")
    with op.batch_alter_table("packet_topics", schema=None) as batch_op:
        batch_op.drop_index("ix_packet_topics_topic_seq")

    op.drop_table("packet_topics")
    with op.batch_alter_table("packets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_packets_teacher_id"))

    op.drop_table("packets")
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_keys_agent_id"))

    op.drop_table("keys")
    with op.batch_alter_table("log_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_log_entries_subject"))

    op.drop_table("log_entries")
    op.drop_table("broker_head")
    op.drop_table("agents")
