"""Resends and the terminals' telemetry interval.

Delivery truth (0.2.0): Broadcast.attempt, Broadcast.resends, Delivery.attempt, and the
telemetry interval each terminal reports (Device.telemetry_interval_s).

Rows that exist already get the values a new row gets: attempt 0 (the first send) and
no resends. The server defaults stay: they are what an existing row means, and they
let SQLite add a NOT NULL column without copying the table.

Revision ID: 0002
Revises: 0001
Created: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("broadcast") as batch_op:
        batch_op.add_column(
            sa.Column("attempt", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch_op.add_column(sa.Column("resends", sa.JSON(), server_default=sa.text("'[]'")))
    with op.batch_alter_table("delivery") as batch_op:
        batch_op.add_column(
            sa.Column("attempt", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
    with op.batch_alter_table("device") as batch_op:
        batch_op.add_column(sa.Column("telemetry_interval_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("device") as batch_op:
        batch_op.drop_column("telemetry_interval_s")
    with op.batch_alter_table("delivery") as batch_op:
        batch_op.drop_column("attempt")
    with op.batch_alter_table("broadcast") as batch_op:
        batch_op.drop_column("resends")
        batch_op.drop_column("attempt")
