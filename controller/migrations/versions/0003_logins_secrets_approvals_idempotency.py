"""Console login limits, server secrets, approval reasons, idempotency keys.

0.2.0: failed logins are counted per user name and client (loginfailure replaces
loginthrottle, whose counters are only minutes of lockout and are dropped, not moved);
secrets the server generates for itself (serversecret); why an approval was asked for
(pendingbroadcast.why, {} for requests made before); the answers to POSTs that carried
an Idempotency-Key (idempotency_key).

Revision ID: 0003
Revises: 0002
Created: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_key",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user", sa.String(), nullable=False),
        sa.Column("fingerprint", sa.String(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("content_type", sa.String(), nullable=False),
        sa.Column("location", sa.String(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("idempotency_key") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_idempotency_key_expires_ms"), ["expires_ms"], unique=False
        )

    op.create_table(
        "loginfailure",
        sa.Column("name_key", sa.String(), nullable=False),
        sa.Column("client", sa.String(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_ms", sa.BigInteger(), nullable=False),
        sa.Column("blocked_until_ms", sa.BigInteger(), nullable=False),
        sa.Column("refused", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name_key", "client"),
    )
    with op.batch_alter_table("loginfailure") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_loginfailure_last_failure_ms"), ["last_failure_ms"], unique=False
        )
    op.drop_table("loginthrottle")

    op.create_table(
        "serversecret",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )

    with op.batch_alter_table("pendingbroadcast") as batch_op:
        batch_op.add_column(sa.Column("why", sa.JSON(), server_default=sa.text("'{}'")))


def downgrade() -> None:
    with op.batch_alter_table("pendingbroadcast") as batch_op:
        batch_op.drop_column("why")
    op.drop_table("serversecret")
    op.create_table(
        "loginthrottle",
        sa.Column("user_name", sa.String(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_ms", sa.BigInteger(), nullable=True),
        sa.Column("locked_until_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("user_name"),
    )
    with op.batch_alter_table("loginfailure") as batch_op:
        batch_op.drop_index(batch_op.f("ix_loginfailure_last_failure_ms"))
    op.drop_table("loginfailure")
    with op.batch_alter_table("idempotency_key") as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotency_key_expires_ms"))
    op.drop_table("idempotency_key")
