"""A real terminal (issue 13): enrolment, clocks, and over-the-air agent updates.

One revision for the whole issue; each part adds its tables in its own marked section
below and calls it from `upgrade`/`downgrade` (sections: agent updates, 13C; the
enrolment section belongs to 13B, who owns this file).

Agent updates (controller/updates.py): three new tables, nothing changed in the old
ones: `agentrelease` (an uploaded release: version, minimum version, sha256; its bytes
are stored with the media), `updaterollout` (a release sent to a target in waves) and
`updateterminal` (where one rollout stands on one terminal).

Revision ID: 0006
Revises: 0005
Created: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _upgrade_agent_updates()
    _upgrade_enrolment()


def downgrade() -> None:
    _downgrade_enrolment()
    _downgrade_agent_updates()


# ------------------------------------------------------------------ enrolment (13B)
# `enrolmentcode` (one-time codes, by their SHA-256) and `terminalrevocation` (lost
# terminals whose broker account was removed): controller/enrolment.py.


def _upgrade_enrolment() -> None:
    op.create_table(
        "enrolmentcode",
        sa.Column("code_sha256", sa.String(), nullable=False),
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.Column("used_ms", sa.BigInteger(), nullable=True),
        sa.Column("used_from", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("code_sha256"),
    )
    with op.batch_alter_table("enrolmentcode", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_enrolmentcode_device_id"), ["device_id"], unique=False)
    op.create_table(
        "terminalrevocation",
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("revoked_ms", sa.BigInteger(), nullable=False),
        sa.Column("revoked_by", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("device_id"),
    )


def _downgrade_enrolment() -> None:
    op.drop_table("terminalrevocation")
    with op.batch_alter_table("enrolmentcode", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_enrolmentcode_device_id"))
    op.drop_table("enrolmentcode")


# ------------------------------------------------------------------ agent updates (13C)


def _upgrade_agent_updates() -> None:
    op.create_table(
        "agentrelease",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("min_version", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(), nullable=False),
        sa.Column("notes", sa.String(), nullable=False),
        sa.Column("uploaded_by", sa.String(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("agentrelease", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_agentrelease_version"), ["version"], unique=True)

    op.create_table(
        "updaterollout",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("release_id", sa.String(), nullable=False),
        sa.Column("target", sa.JSON(), nullable=True),
        sa.Column("first_wave_percent", sa.Integer(), nullable=False),
        sa.Column("halt_failure_percent", sa.Integer(), nullable=False),
        sa.Column("self_test_s", sa.Integer(), nullable=False),
        sa.Column("wave_timeout_s", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("halt", sa.JSON(), nullable=True),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("wave_sent_ms", sa.BigInteger(), nullable=True),
        sa.Column("finished_ms", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["agentrelease.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("updaterollout", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_updaterollout_release_id"), ["release_id"], unique=False
        )

    op.create_table(
        "updateterminal",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.String(), nullable=False),
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("running", sa.String(), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["updaterollout.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("rollout_id", "device_id"),
    )
    with op.batch_alter_table("updateterminal", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_updateterminal_device_id"), ["device_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_updateterminal_rollout_id"), ["rollout_id"], unique=False
        )


def _downgrade_agent_updates() -> None:
    with op.batch_alter_table("updateterminal", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_updateterminal_rollout_id"))
        batch_op.drop_index(batch_op.f("ix_updateterminal_device_id"))

    op.drop_table("updateterminal")
    with op.batch_alter_table("updaterollout", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_updaterollout_release_id"))

    op.drop_table("updaterollout")
    with op.batch_alter_table("agentrelease", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_agentrelease_version"))

    op.drop_table("agentrelease")


# ------------------------------------------------------------------ end of agent updates (13C)
