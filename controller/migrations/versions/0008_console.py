"""The console as its people want it (issue 16): a correction names what it corrects,
and a broadcast held by the two-person rule names the officer who confirmed it.

Broadcast.corrects_id (indexed: an original's board lists its corrections) and
Broadcast.approved_by, both nullable: an existing broadcast corrects nothing and was
approved by nobody on record (its approval, if any, stays in the audit log).

Revision ID: 0008_console
Revises: 0006
Created: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_console"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("broadcast") as batch_op:
        batch_op.add_column(sa.Column("corrects_id", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("approved_by", sa.String(), nullable=True))
        batch_op.create_index(batch_op.f("ix_broadcast_corrects_id"), ["corrects_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("broadcast") as batch_op:
        batch_op.drop_index(batch_op.f("ix_broadcast_corrects_id"))
        batch_op.drop_column("approved_by")
        batch_op.drop_column("corrects_id")
