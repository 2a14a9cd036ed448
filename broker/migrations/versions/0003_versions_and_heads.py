"""Packets keep their manifest's optional version (refused when not increasing); teachers' signed heads.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 21:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows published before this revision carry no version (the field did not exist): NULL.
    with op.batch_alter_table("packets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.BigInteger(), nullable=True))
    op.create_table(
        "teacher_heads",
        sa.Column("teacher_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("envelope", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["teacher_id"], ["agents.id"], name=op.f("fk_teacher_heads_teacher_id_agents")),
        sa.PrimaryKeyConstraint("teacher_id", name=op.f("pk_teacher_heads")),
    )


def downgrade() -> None:
    op.drop_table("teacher_heads")
    with op.batch_alter_table("packets", schema=None) as batch_op:
        batch_op.drop_column("version")
