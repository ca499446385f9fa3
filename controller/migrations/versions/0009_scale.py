"""Province scale (issue 15): delivery transitions in their own append-only table, and
each broadcast's count of deliveries per state kept beside it.

`delivery_transition` gets one row per element of every `delivery.transitions` JSON list
(in list order, so ids keep each delivery's order), then the column is dropped.
`broadcast_count` is built from the deliveries as they stand: a count per state, and the
pseudo-state "~reached" for deliveries the terminal answered (last_seq > 0). Rows move
in chunks, so a year of a province's deliveries does not sit in memory at once. The
downgrade puts the lists back the same way.

Revision ID: 0009_scale
Revises: 0007_voice
Created: 2026-11-30
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0009_scale"
down_revision: str | Sequence[str] | None = "0007_voice"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK = 5000
REACHED = "~reached"  # controller.deliveries.REACHED
_KNOWN = {"state", "at", "rx", "reason", "inferred", "cause", "offset_ms"}


def _transition_table() -> Any:
    return sa.table(
        "delivery_transition",
        sa.column("broadcast_id", sa.String()),
        sa.column("device_id", sa.String()),
        sa.column("state", sa.String()),
        sa.column("at_ms", sa.BigInteger()),
        sa.column("rx_ms", sa.BigInteger()),
        sa.column("reason", sa.String()),
        sa.column("inferred", sa.Boolean()),
        sa.column("cause", sa.String()),
        sa.column("seq", sa.BigInteger()),
        sa.column("offset_ms", sa.BigInteger()),
        sa.column("extra", sa.JSON()),
    )


def _delivery_table(with_transitions: bool) -> Any:
    columns: list[Any] = [
        sa.column("id", sa.Integer()),
        sa.column("broadcast_id", sa.String()),
        sa.column("device_id", sa.String()),
        sa.column("updated_ms", sa.BigInteger()),
    ]
    if with_transitions:
        columns.append(sa.column("transitions", sa.JSON()))
    return sa.table("delivery", *columns)


def _chunks(conn: Any, query: Any) -> Iterator[list[Any]]:
    """Keyset pages by delivery id (never OFFSET: a province's table is millions)."""
    after = 0
    while True:
        rows = conn.execute(query.where(sa.column("id") > after).order_by("id").limit(CHUNK)).all()
        if not rows:
            return
        yield rows
        after = rows[-1].id


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def upgrade() -> None:
    op.create_table(
        "delivery_transition",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("broadcast_id", sa.String(), nullable=False),
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("rx_ms", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("inferred", sa.Boolean(), nullable=False),
        sa.Column("cause", sa.String(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("offset_ms", sa.BigInteger(), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("broadcast_id", "device_id", "seq", name="uq_delivery_transition_seq"),
    )
    op.create_table(
        "broadcast_count",
        sa.Column("broadcast_id", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("broadcast_id", "state"),
    )
    conn = op.get_bind()
    delivery = _delivery_table(with_transitions=True)
    transition = _transition_table()
    query = sa.select(
        delivery.c.id,
        delivery.c.broadcast_id,
        delivery.c.device_id,
        delivery.c.updated_ms,
        delivery.c.transitions,
    )
    for rows in _chunks(conn, query):
        out: list[dict[str, Any]] = []
        for row in rows:
            items = row.transitions
            if isinstance(items, str):  # a driver that hands JSON back as text
                items = json.loads(items)
            for t in items or []:
                if not isinstance(t, dict) or not t.get("state"):
                    continue
                at = _int(t.get("at"))
                at = row.updated_ms if at is None else at
                rx = _int(t.get("rx"))
                extra = {k: v for k, v in t.items() if k not in _KNOWN}
                out.append(
                    {
                        "broadcast_id": row.broadcast_id,
                        "device_id": row.device_id,
                        "state": str(t["state"]),
                        "at_ms": at,
                        "rx_ms": at if rx is None else rx,
                        "reason": t.get("reason"),
                        "inferred": bool(t.get("inferred")),
                        "cause": t.get("cause"),
                        "seq": None,
                        "offset_ms": _int(t.get("offset_ms")),
                        "extra": extra or None,
                    }
                )
        if out:
            conn.execute(sa.insert(transition), out)
    conn.execute(
        sa.text(
            "INSERT INTO broadcast_count (broadcast_id, state, n) "
            "SELECT broadcast_id, state, COUNT(*) FROM delivery GROUP BY broadcast_id, state"
        )
    )
    conn.execute(
        sa.text(
            "INSERT INTO broadcast_count (broadcast_id, state, n) "
            "SELECT broadcast_id, :reached, COUNT(*) FROM delivery WHERE last_seq > 0 "
            "GROUP BY broadcast_id"
        ),
        {"reached": REACHED},
    )
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_column("transitions")


def downgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("transitions", sa.JSON(), nullable=True))
    conn = op.get_bind()
    delivery = _delivery_table(with_transitions=True)
    t = _transition_table()
    query = sa.select(delivery.c.id, delivery.c.broadcast_id, delivery.c.device_id)
    for rows in _chunks(conn, query):
        lists: dict[tuple[str, str], list[dict[str, Any]]] = {}
        keys = {(r.broadcast_id, r.device_id): r.id for r in rows}
        for b in {r.broadcast_id for r in rows}:
            devices = [d for (bb, d) in keys if bb == b]
            for start in range(0, len(devices), 500):
                for tr in conn.execute(
                    sa.select(t)
                    .where(t.c.broadcast_id == b)
                    .where(t.c.device_id.in_(devices[start : start + 500]))
                    .order_by(sa.column("at_ms"), sa.column("id"))
                ):
                    entry: dict[str, Any] = {"state": tr.state, "at": tr.at_ms, "rx": tr.rx_ms}
                    if tr.reason:
                        entry["reason"] = tr.reason
                    if tr.inferred:
                        entry["inferred"] = True
                    if tr.cause:
                        entry["cause"] = tr.cause
                    if tr.offset_ms is not None:
                        entry["offset_ms"] = tr.offset_ms
                    entry.update(tr.extra or {})
                    lists.setdefault((tr.broadcast_id, tr.device_id), []).append(entry)
        conn.execute(
            sa.update(delivery).where(delivery.c.id == sa.bindparam("_id")),
            [{"_id": i, "transitions": lists.get(k, [])} for k, i in keys.items()],
        )
    op.drop_table("broadcast_count")
    op.drop_table("delivery_transition")
