"""Packets keep their manifest's created_at (freshness per teacher and topic); dashboard sessions live server-side.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 17:30:00.000000
"""

import json
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _created_at(statement: str) -> datetime | None:
    try:
        return datetime.fromisoformat(json.loads(statement)["predicate"]["created_at"].replace("z", "Z"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def upgrade() -> None:
    with op.batch_alter_table("packets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("created_at", sa.DateTime(timezone=True), nullable=True))
    packets = sa.table(
        "packets",
        sa.column("id", sa.String),
        sa.column("statement", sa.Text),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    conn = op.get_bind()
    for packet_id, statement in conn.execute(sa.select(packets.c.id, packets.c.statement)).all():
        created = _created_at(statement)
        if created is not None:
            conn.execute(packets.update().where(packets.c.id == packet_id).values(created_at=created))
    op.create_table(
        "dashboard_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("agent_id", sa.Integer(), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["agent_id"], ["agents.id"], name=op.f("fk_dashboard_sessions_agent_id_agents")),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_dashboard_sessions")),
    )


def downgrade() -> None:
    op.drop_table("dashboard_sessions")
    with op.batch_alter_table("packets", schema=None) as batch_op:
        batch_op.drop_column("created_at")
