"""History that is kept: online intervals, fault episodes, work orders, telemetry rollups.

0.2.0 (issue 14): four new tables (controller/history.py), nothing changed in the old
ones. A database upgraded from before has no history yet: at its first start the
controller opens an interval for each terminal shown online and an episode for each
fault shown on a terminal (`controller.history.repair`), so the history begins at the
upgrade and never contradicts the terminals' state.

Revision ID: 0004
Revises: 0003
Created: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "faultepisode",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("village_id", sa.String(), nullable=False),
        sa.Column("township_id", sa.String(), nullable=False),
        sa.Column("fault", sa.String(), nullable=False),
        sa.Column("start_ms", sa.BigInteger(), nullable=False),
        sa.Column("end_ms", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("faultepisode", schema=None) as batch_op:
        batch_op.create_index("ix_faultepisode_device_fault", ["device_id", "fault"], unique=False)
        batch_op.create_index(batch_op.f("ix_faultepisode_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_faultepisode_end_ms"), ["end_ms"], unique=False)
        batch_op.create_index(batch_op.f("ix_faultepisode_start_ms"), ["start_ms"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_faultepisode_township_id"), ["township_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_faultepisode_village_id"), ["village_id"], unique=False
        )

    op.create_table(
        "onlineinterval",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("village_id", sa.String(), nullable=False),
        sa.Column("township_id", sa.String(), nullable=False),
        sa.Column("start_ms", sa.BigInteger(), nullable=False),
        sa.Column("end_ms", sa.BigInteger(), nullable=True),
        sa.Column("end_reason", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("onlineinterval", schema=None) as batch_op:
        batch_op.create_index("ix_onlineinterval_device_end", ["device_id", "end_ms"], unique=False)
        batch_op.create_index(
            "ix_onlineinterval_device_start", ["device_id", "start_ms"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_onlineinterval_end_ms"), ["end_ms"], unique=False)
        batch_op.create_index(batch_op.f("ix_onlineinterval_start_ms"), ["start_ms"], unique=False)

    op.create_table(
        "telemetryrollup",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("period", sa.String(), nullable=False),
        sa.Column("start_ms", sa.BigInteger(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("telemetryrollup", schema=None) as batch_op:
        batch_op.create_index(
            "ix_telemetryrollup_device_period", ["device_id", "period", "start_ms"], unique=True
        )
        batch_op.create_index(
            "ix_telemetryrollup_period_start", ["period", "start_ms"], unique=False
        )

    op.create_table(
        "workorder",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("village_id", sa.String(), nullable=False),
        sa.Column("township_id", sa.String(), nullable=False),
        sa.Column("fault", sa.String(), nullable=False),
        sa.Column("episode_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("opened_ms", sa.BigInteger(), nullable=False),
        sa.Column("assigned_to", sa.String(), nullable=True),
        sa.Column("notes", sa.JSON(), nullable=True),
        sa.Column("fault_cleared_ms", sa.BigInteger(), nullable=True),
        sa.Column("closed_ms", sa.BigInteger(), nullable=True),
        sa.Column("closed_by", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("workorder", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workorder_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_workorder_episode_id"), ["episode_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_workorder_opened_ms"), ["opened_ms"], unique=False)
        batch_op.create_index(batch_op.f("ix_workorder_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_workorder_township_id"), ["township_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_workorder_village_id"), ["village_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("workorder", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workorder_village_id"))
        batch_op.drop_index(batch_op.f("ix_workorder_township_id"))
        batch_op.drop_index(batch_op.f("ix_workorder_status"))
        batch_op.drop_index(batch_op.f("ix_workorder_opened_ms"))
        batch_op.drop_index(batch_op.f("ix_workorder_episode_id"))
        batch_op.drop_index(batch_op.f("ix_workorder_device_id"))

    op.drop_table("workorder")
    with op.batch_alter_table("telemetryrollup", schema=None) as batch_op:
        batch_op.drop_index("ix_telemetryrollup_period_start")
        batch_op.drop_index("ix_telemetryrollup_device_period")

    op.drop_table("telemetryrollup")
    with op.batch_alter_table("onlineinterval", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_onlineinterval_start_ms"))
        batch_op.drop_index(batch_op.f("ix_onlineinterval_end_ms"))
        batch_op.drop_index("ix_onlineinterval_device_start")
        batch_op.drop_index("ix_onlineinterval_device_end")

    op.drop_table("onlineinterval")
    with op.batch_alter_table("faultepisode", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_faultepisode_village_id"))
        batch_op.drop_index(batch_op.f("ix_faultepisode_township_id"))
        batch_op.drop_index(batch_op.f("ix_faultepisode_start_ms"))
        batch_op.drop_index(batch_op.f("ix_faultepisode_end_ms"))
        batch_op.drop_index(batch_op.f("ix_faultepisode_device_id"))
        batch_op.drop_index("ix_faultepisode_device_fault")

    op.drop_table("faultepisode")
