"""Warnings from upstream, and places by administrative code.

0.3.0 (issue 11): the warning intake's sources and messages (controller/warnings), the
12-digit administrative codes of townships and villages and the 18-digit resource codes
of terminals (nullable: a database upgraded from before gets them from
`dalaba county import`, which fills codes on rows it finds without). The upper-level
platform's (EBM) tables belong to this same revision: add them below, one file.

Revision ID: 0005
Revises: 0004
Created: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "upstreammessage",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("source_id", sa.String(), nullable=False),
        sa.Column("protocol", sa.String(), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.Column("identifier", sa.String(), nullable=False),
        sa.Column("sender", sa.String(), nullable=False),
        sa.Column("sent", sa.String(), nullable=False),
        sa.Column("msg_type", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("references", sa.JSON(), nullable=True),
        sa.Column("mode", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("headline", sa.String(), nullable=False),
        sa.Column("text", sa.String(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=True),
        sa.Column("priority", sa.String(), nullable=True),
        sa.Column("drill", sa.Boolean(), nullable=False),
        sa.Column("village_ids", sa.JSON(), nullable=True),
        sa.Column("broadcast_id", sa.String(), nullable=True),
        sa.Column("approval_id", sa.String(), nullable=True),
        sa.Column("cancelled", sa.JSON(), nullable=True),
        sa.Column("starts_ms", sa.BigInteger(), nullable=True),
        sa.Column("expires_ms", sa.BigInteger(), nullable=True),
        sa.Column("content_type", sa.String(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("upstreammessage", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_upstreammessage_approval_id"), ["approval_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_upstreammessage_broadcast_id"), ["broadcast_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_upstreammessage_identifier"), ["identifier"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_upstreammessage_outcome"), ["outcome"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_upstreammessage_received_ms"), ["received_ms"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_upstreammessage_source_id"), ["source_id"], unique=False
        )

    op.create_table(
        "upstreamsource",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("mode", sa.String(), nullable=False),
        sa.Column("hold_levels", sa.JSON(), nullable=True),
        sa.Column("certificate_pem", sa.String(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resource_code", sa.String(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_device_resource_code"), ["resource_code"], unique=False
        )

    with op.batch_alter_table("township", schema=None) as batch_op:
        batch_op.add_column(sa.Column("code", sa.String(), nullable=True))
        batch_op.create_index(batch_op.f("ix_township_code"), ["code"], unique=False)

    with op.batch_alter_table("village", schema=None) as batch_op:
        batch_op.add_column(sa.Column("code", sa.String(), nullable=True))
        batch_op.create_index(batch_op.f("ix_village_code"), ["code"], unique=False)

    # --- upstream reports (controller/upstream/models.py; helper 11B) ---
    op.create_table(
        "upstreamreport",
        sa.Column("ebd_id", sa.String(), nullable=False),
        sa.Column("ebd_type", sa.String(), nullable=False),
        sa.Column("trigger", sa.String(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("period_start_ms", sa.BigInteger(), nullable=False),
        sa.Column("period_end_ms", sa.BigInteger(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("result_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("ebd_id"),
    )
    with op.batch_alter_table("upstreamreport", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_upstreamreport_created_ms"), ["created_ms"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_upstreamreport_ebd_type"), ["ebd_type"], unique=False)
    # --- end upstream reports ---


def downgrade() -> None:
    # --- upstream reports (helper 11B) ---
    with op.batch_alter_table("upstreamreport", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_upstreamreport_ebd_type"))
        batch_op.drop_index(batch_op.f("ix_upstreamreport_created_ms"))
    op.drop_table("upstreamreport")
    # --- end upstream reports ---
    with op.batch_alter_table("village", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_village_code"))
        batch_op.drop_column("code")

    with op.batch_alter_table("township", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_township_code"))
        batch_op.drop_column("code")

    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_resource_code"))
        batch_op.drop_column("resource_code")

    op.drop_table("upstreamsource")
    with op.batch_alter_table("upstreammessage", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_upstreammessage_source_id"))
        batch_op.drop_index(batch_op.f("ix_upstreammessage_received_ms"))
        batch_op.drop_index(batch_op.f("ix_upstreammessage_outcome"))
        batch_op.drop_index(batch_op.f("ix_upstreammessage_identifier"))
        batch_op.drop_index(batch_op.f("ix_upstreammessage_broadcast_id"))
        batch_op.drop_index(batch_op.f("ix_upstreammessage_approval_id"))

    op.drop_table("upstreammessage")
