"""Voice (issue 12): live paging sessions, phone-call broadcast, proof of sound.

Shared by the two halves of issue 12; each keeps to its marked section. Phone-call
broadcast (controller/phone.py) adds two tables: whitelists per township, village or
terminal (personal numbers, the PIN only as a salted digest) and the calls terminals
report; proof of sound (controller/clips.py) adds the requests for a terminal's clip.
Nothing in the older tables changes; `silent` is a new value of the existing delivery
state column.

Revision ID: 0007_voice
Revises: 0008
Created: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_voice"
down_revision: str | Sequence[str] | None = "0008_console"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # --- phone calls and terminal clips (12B) ---
    op.create_table(
        "phonecall",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("village_id", sa.String(), nullable=False),
        sa.Column("township_id", sa.String(), nullable=False),
        sa.Column("caller", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("rang_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("ended_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("played_ms", sa.Integer(), nullable=False),
        sa.Column("rx_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("phonecall", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_phonecall_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_phonecall_rang_at_ms"), ["rang_at_ms"], unique=False)
        batch_op.create_index(batch_op.f("ix_phonecall_township_id"), ["township_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_phonecall_village_id"), ["village_id"], unique=False)

    op.create_table(
        "phonewhitelist",
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("scope_id", sa.String(), nullable=False),
        sa.Column("numbers", sa.JSON(), nullable=True),
        sa.Column("pin_salt", sa.String(), nullable=True),
        sa.Column("pin_sha256", sa.String(), nullable=True),
        sa.Column("pin_length", sa.Integer(), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_by", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "scope_id"),
    )
    op.create_table(
        "cliprequest",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("township_id", sa.String(), nullable=False),
        sa.Column("requested_by", sa.String(), nullable=False),
        sa.Column("requested_ms", sa.BigInteger(), nullable=False),
        sa.Column("max_ms", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("media_sha256", sa.String(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("received_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("cliprequest", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cliprequest_device_id"), ["device_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_cliprequest_township_id"), ["township_id"], unique=False
        )
    # --- end phone calls and terminal clips (12B) ---


def downgrade() -> None:
    # --- phone calls and terminal clips (12B) ---
    with op.batch_alter_table("cliprequest", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cliprequest_township_id"))
        batch_op.drop_index(batch_op.f("ix_cliprequest_device_id"))
    op.drop_table("cliprequest")
    op.drop_table("phonewhitelist")
    with op.batch_alter_table("phonecall", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_phonecall_village_id"))
        batch_op.drop_index(batch_op.f("ix_phonecall_township_id"))
        batch_op.drop_index(batch_op.f("ix_phonecall_rang_at_ms"))
        batch_op.drop_index(batch_op.f("ix_phonecall_device_id"))

    op.drop_table("phonecall")
    # --- end phone calls and terminal clips (12B) ---
