"""THE delivery state machine: the one place that changes a delivery's state.

A delivery is one broadcast on one terminal. Its state moves for four kinds of cause,
and the table below says which cause may make which move:

- ``TERMINAL``: the terminal's own report (or its refusal of a genuine command). The
  truth, and so it may overrule anything the controller only inferred.
- ``DISPATCH``: the controller sent (or fired) it, to a terminal it believes online
  (``sent``) or offline (``offline``); liveness moves a waiting delivery between the two.
- ``SWEEP``: time ran out. At expiry whatever still waits becomes ``expired``; a
  ``playing`` that outlived its audio by a margin without a word becomes ``unknown``.
- ``OPERATOR``: a person cancelled it before it reached the terminal, or resent it to
  a terminal it did not reach.
- ``SCHEDULE``: the schedule service planning, re-planning or withdrawing a coming
  occurrence (``scheduled`` <-> ``cancelled``).

Rules beyond the table, enforced by `apply`:

1. A terminal's report is applied only if its sequence number is newer than the last
   one applied (reports can arrive twice or out of order across reconnects), and only if
   it answers the current attempt (a late report on a superseded send is history).
2. A final state the terminal itself reported is never reopened by the terminal; only a
   resend (``OPERATOR``) starts a new attempt after ``failed``/``expired``/``unknown``.
3. A state the controller inferred (source ``controller``) is overruled by any later
   report from the terminal: ``unknown`` becomes ``done`` when the report that was lost
   arrives, ``expired`` becomes ``done`` when an offline play is finally reported.

Callers: `controller.ingest` (TERMINAL), `controller.broadcasts` (DISPATCH, SWEEP,
OPERATOR), `controller.schedules.store` (SCHEDULE, DISPATCH). Nothing else assigns
`Delivery.state`.

Concurrent writers (PostgreSQL): every path that reads deliveries to move them locks
them first, in id order: `load_rows` (the batch paths) and `for_update` (the ORM paths).
A move decided from a state another transaction is changing is a lost update.

Storage, and why (issue 15, 10,000 terminals). `apply` works on anything shaped like a
delivery (`DeliveryLike`): an ORM `Delivery` where a path touches a few (an operator's
cancel, a terminal back online), or a plain `DeliveryRow` where it touches thousands (a
batch of reports: `load_rows`, `apply` each, `save_rows` writes the changed ones with one
executemany UPDATE). Either way a transition is appended to `DeliveryTransition` (an
append-only table, read ordered by the terminal's `at` then id, so a report stored after
a newer one still lands where it happened) and the broadcast's count per state in
`BroadcastCount` moves by one. Both go through the session's `Ledger`, written in bulk
when the session flushes or commits, in the same transaction as the state change: the
counts a board reads are never out of step with the deliveries. `insert_new` creates a
broadcast's deliveries with Core executemany (no ORM object per terminal).
"""

from __future__ import annotations

import enum
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Protocol, cast

from sqlalchemy import event
from sqlalchemy import select as select_core
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import object_session
from sqlmodel import Session

from controller.models import BroadcastCount, Delivery, DeliveryTransition
from dalaba.protocol import DeliveryState

S = DeliveryState


class Cause(enum.StrEnum):
    TERMINAL = "terminal"
    DISPATCH = "dispatch"
    SWEEP = "sweep"
    OPERATOR = "operator"
    SCHEDULE = "schedule"


class Source(enum.StrEnum):
    """Who the current state comes from (stored as `Delivery.state_source`)."""

    DEVICE = "device"
    CONTROLLER = "controller"


class BroadcastStatus(enum.StrEnum):
    SCHEDULED = "scheduled"  # a coming schedule occurrence, not fired yet
    ACTIVE = "active"  # sent; deliveries may still move
    CANCELLED = "cancelled"
    FINISHED = "finished"  # expired and swept


class DispatchStatus(enum.StrEnum):
    PENDING = "pending"  # not (yet) confirmed by the broker
    PUBLISHED = "published"
    FAILED = "failed"


# States a terminal may report, and the controller-only ones.
REPORTABLE = frozenset(
    {S.RECEIVED, S.FETCHED, S.PLAYING, S.DONE, S.SILENT, S.FAILED, S.REJECTED, S.PREEMPTED,
     S.EXPIRED, S.CANCELLED}
)  # fmt: skip
CONTROLLER_ONLY = frozenset({S.SCHEDULED, S.SENT, S.OFFLINE, S.UNKNOWN})

# Waiting on a terminal that has not said anything yet.
NOT_REACHED = frozenset({S.SCHEDULED, S.SENT, S.OFFLINE})
# Still able to play before expiry (the sweep expires these).
WAITING = frozenset({S.SCHEDULED, S.SENT, S.OFFLINE, S.RECEIVED, S.FETCHED, S.PREEMPTED})
# Ended without (all of its) sound, which a resend may still fix.
RESENDABLE = frozenset({S.FAILED, S.SILENT, S.EXPIRED, S.UNKNOWN})

_T, _D, _W, _O, _S = Cause.TERMINAL, Cause.DISPATCH, Cause.SWEEP, Cause.OPERATOR, Cause.SCHEDULE


def _from(
    *pairs: tuple[frozenset[DeliveryState] | DeliveryState, set[Cause]],
) -> dict[DeliveryState, frozenset[Cause]]:
    table: dict[DeliveryState, frozenset[Cause]] = {}
    for states, causes in pairs:
        for state in states if isinstance(states, frozenset) else (states,):
            table[state] = table.get(state, frozenset()) | frozenset(causes)
    return table


_IN_FLIGHT = frozenset({S.RECEIVED, S.FETCHED, S.PLAYING, S.PREEMPTED})

# TRANSITIONS[to][from] = the causes that may make that move. Terminal reports are also
# bound by rules 1-3 in `apply`.
TRANSITIONS: dict[DeliveryState, dict[DeliveryState, frozenset[Cause]]] = {
    S.SCHEDULED: _from((S.CANCELLED, {_S})),  # a withdrawn occurrence planned again
    S.SENT: _from(
        (S.SCHEDULED, {_D}),  # fired
        (S.OFFLINE, {_D}),  # the terminal came back online
        (RESENDABLE, {_O}),  # resent
    ),
    S.OFFLINE: _from(
        (S.SCHEDULED, {_D}),  # fired while the terminal was offline
        (S.SENT, {_D}),  # the terminal went silent before it answered
        (RESENDABLE, {_O}),  # resent to a terminal that is offline now
    ),
    S.RECEIVED: _from((NOT_REACHED | {S.PREEMPTED} | RESENDABLE, {_T})),
    S.FETCHED: _from((NOT_REACHED | {S.RECEIVED, S.PREEMPTED} | RESENDABLE, {_T})),
    S.PLAYING: _from((NOT_REACHED | {S.RECEIVED, S.FETCHED, S.PREEMPTED} | RESENDABLE, {_T})),
    S.PREEMPTED: _from((NOT_REACHED | {S.RECEIVED, S.FETCHED, S.PLAYING} | RESENDABLE, {_T})),
    S.DONE: _from((NOT_REACHED | _IN_FLIGHT | RESENDABLE | {S.CANCELLED}, {_T})),
    S.FAILED: _from((NOT_REACHED | _IN_FLIGHT | {S.UNKNOWN, S.EXPIRED}, {_T})),
    # Played to its end with the output monitor finding seconds without sound: an ending
    # of its own, like `failed` (a resend may fix it once the line is mended).
    S.SILENT: _from((NOT_REACHED | _IN_FLIGHT | {S.UNKNOWN, S.EXPIRED}, {_T})),
    S.REJECTED: _from((NOT_REACHED | {S.EXPIRED}, {_T})),
    S.EXPIRED: _from(
        (NOT_REACHED | _IN_FLIGHT - {S.PLAYING}, {_T}),
        (WAITING, {_W}),
    ),
    S.CANCELLED: _from(
        (NOT_REACHED | _IN_FLIGHT, {_T}),
        (NOT_REACHED, {_O}),
        (S.SCHEDULED, {_S}),
    ),
    S.UNKNOWN: _from((S.PLAYING, {_W})),
}


def allowed(
    current: DeliveryState, current_source: Source, to: DeliveryState, cause: Cause
) -> bool:
    """May `cause` move a delivery from `current` to `to`? (Rule 2 and 3 included; the
    sequence and attempt checks of rule 1 need the report and live in `apply`.)"""
    if cause is Cause.TERMINAL and to not in REPORTABLE:
        return False
    if cause is not Cause.TERMINAL and to in REPORTABLE and to not in (S.EXPIRED, S.CANCELLED):
        return False
    if cause is Cause.TERMINAL and current.final and current_source is Source.DEVICE:
        return False  # rule 2: the terminal's own ending stands
    # Rule 3 needs no code: the table lets a terminal move on from every final state
    # the controller infers (expired, cancelled, unknown), and rule 2 above stops it only
    # where the terminal itself had the last word.
    return cause in TRANSITIONS.get(to, {}).get(current, frozenset())


class DeliveryLike(Protocol):
    """What `apply` reads and writes: an ORM `Delivery` (small paths) or a `DeliveryRow`
    (the batch paths, which write their changes back in bulk with `save_rows`)."""

    broadcast_id: str
    device_id: str
    state: str
    reason: str | None
    updated_ms: int
    last_seq: int
    state_source: str
    attempt: int


@dataclass(eq=False)
class DeliveryRow:
    """A delivery as a plain row: no ORM identity map, no unit of work. `changed` says
    whether `apply` moved it (only those are written back)."""

    id: int
    broadcast_id: str
    device_id: str
    state: str
    reason: str | None
    updated_ms: int
    last_seq: int
    state_source: str
    attempt: int
    changed: bool = False


# Pseudo-state in `BroadcastCount`: deliveries whose terminal has answered (last_seq > 0).
REACHED = "~reached"


@dataclass(frozen=True)
class Applied:
    """One transition that happened (for the event that tells the rest of the system)."""

    broadcast_id: str
    device_id: str
    previous: DeliveryState
    state: DeliveryState
    reason: str | None
    at: int
    cause: Cause


@dataclass
class Ledger:
    """What one transaction appends besides the deliveries themselves: their transition
    rows and the change of each broadcast's count per state. Kept on the session
    (`ledger`) and written in bulk, one executemany each, when the session flushes or
    commits: a batch of 5,000 reports is two statements here, not 5,000 JSON rewrites."""

    transitions: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def moved(self, broadcast_id: str, previous: str | None, state: str) -> None:
        if previous is not None:
            self.counts[(broadcast_id, previous)] -= 1
        self.counts[(broadcast_id, state)] += 1

    def write(self, session: Session) -> None:
        rows, self.transitions = self.transitions, []
        counts = sorted((k, n) for k, n in self.counts.items() if n)
        self.counts = Counter()
        if not rows and not counts:
            return
        conn = session.connection()
        dialect = conn.dialect.name
        if rows:
            # A report the broker delivered twice carries the same seq: stored once.
            executemany(conn, INSERT_TRANSITION, rows, suffix="ON CONFLICT DO NOTHING")
        if counts:
            # Sorted keys: two replicas' transactions take the count rows in one order
            # and cannot deadlock on them.
            table = BroadcastCount.__table__  # type: ignore[attr-defined]
            stmt = _dialect_insert(dialect, table)
            stmt = stmt.on_conflict_do_update(
                index_elements=[table.c.broadcast_id, table.c.state],
                set_={"n": table.c.n + stmt.excluded.n},
            )
            conn.execute(stmt, [{"broadcast_id": b, "state": st, "n": n} for (b, st), n in counts])


@dataclass(frozen=True)
class Bulk:
    """One INSERT (`key` None) or UPDATE ... WHERE key = (`key` a column) of many rows,
    sent without SQLAlchemy's per-row parameter processing (which at 10,000 rows cost
    more than the database's work): on SQLite the driver's executemany of tuples, on
    PostgreSQL one statement over `unnest` of one array per column (one round trip;
    psycopg's executemany is one per row). `types` are the PostgreSQL column types."""

    table: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    key: str | None = None

    def sqlite(self, suffix: str) -> str:
        if self.key is None:
            marks = ", ".join("?" for _ in self.columns)
            return f"INSERT INTO {self.table} ({', '.join(self.columns)}) VALUES ({marks}) {suffix}"
        sets = ", ".join(f"{c} = ?" for c in self.columns if c != self.key)
        return f"UPDATE {self.table} SET {sets} WHERE {self.key} = ?"

    def postgresql(self, suffix: str) -> str:
        arrays = ", ".join(f"%s::{t}[]" for t in self.types)
        names = ", ".join(self.columns)
        if self.key is None:
            return f"INSERT INTO {self.table} ({names}) SELECT * FROM unnest({arrays}) {suffix}"
        sets = ", ".join(f"{c} = u.{c}" for c in self.columns if c != self.key)
        return (
            f"UPDATE {self.table} AS t SET {sets} FROM unnest({arrays}) AS u({names}) "
            f"WHERE t.{self.key} = u.{self.key}"
        )

    def order(self) -> tuple[str, ...]:
        """Parameter order on SQLite: an UPDATE's key comes last."""
        if self.key is None:
            return self.columns
        return (*(c for c in self.columns if c != self.key), self.key)


INSERT_TRANSITION = Bulk(
    "delivery_transition",
    ("broadcast_id", "device_id", "state", "at_ms", "rx_ms", "reason", "inferred", "cause",
     "seq", "offset_ms", "extra"),
    ("text", "text", "text", "bigint", "bigint", "text", "boolean", "text", "bigint", "bigint",
     "json"),
)  # fmt: skip
INSERT_DELIVERY = Bulk(
    "delivery",
    ("broadcast_id", "device_id", "state", "reason", "updated_ms", "last_seq", "state_source",
     "attempt"),
    ("text", "text", "text", "text", "bigint", "bigint", "text", "integer"),
)  # fmt: skip
UPDATE_DELIVERY = Bulk(
    "delivery",
    ("id", "state", "reason", "updated_ms", "last_seq", "state_source", "attempt"),
    ("integer", "text", "text", "bigint", "bigint", "text", "integer"),
    key="id",
)


def executemany(conn: Any, bulk: Bulk, rows: list[dict[str, Any]], *, suffix: str = "") -> None:
    """Run `bulk` for every row (dicts keyed by its columns): one statement."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "postgresql":
        arrays = []
        for column, kind in zip(bulk.columns, bulk.types, strict=True):
            values = [row[column] for row in rows]
            if kind == "json":
                values = [None if v is None else json.dumps(v) for v in values]
            arrays.append(values)
        conn.exec_driver_sql(bulk.postgresql(suffix), tuple(arrays))
        return
    if dialect != "sqlite":
        raise RuntimeError(f"deliveries: no bulk statement for {dialect}")
    order = bulk.order()
    params = [*map(itemgetter(*order), rows)]  # tuples made in C, no loop per value
    for i, column in enumerate(order):
        if bulk.types[bulk.columns.index(column)] == "json":
            params = [
                p if p[i] is None else (*p[:i], json.dumps(p[i]), *p[i + 1 :]) for p in params
            ]
    conn.exec_driver_sql(bulk.sqlite(suffix), params)


def _dialect_insert(dialect: str, table: Any) -> Any:
    if dialect == "postgresql":
        return pg_insert(table)
    if dialect == "sqlite":
        return sqlite_insert(table)
    raise RuntimeError(f"deliveries: no upsert known for {dialect}")


_LEDGER = "dalaba.delivery_ledger"


def ledger(session: Session) -> Ledger:
    """The session's pending transitions and counts (written at its next flush/commit)."""
    found = session.info.get(_LEDGER)
    if found is None:
        found = session.info[_LEDGER] = Ledger()
    return cast(Ledger, found)


def _write_ledger(session: Session, *_: Any) -> None:
    found = session.info.get(_LEDGER)
    if found is not None:
        found.write(session)


def _drop_ledger(session: Session, transaction: Any) -> None:
    if transaction.parent is None:  # the outermost transaction ended (commit or rollback)
        session.info.pop(_LEDGER, None)


# Every session: after a flush (the deliveries a transition belongs to are in the
# database by then) and before a commit (batch paths that changed no ORM object).
event.listen(OrmSession, "after_flush", _write_ledger)
event.listen(OrmSession, "before_commit", _write_ledger)
event.listen(OrmSession, "after_transaction_end", _drop_ledger)


def _first_row(
    broadcast_id: str, device_id: str, state: DeliveryState, now: int, reason: str | None
) -> dict[str, Any]:
    return _transition_row(broadcast_id, device_id, state.value, now, now, reason, None, None)


def _transition_row(
    broadcast_id: str,
    device_id: str,
    state: str,
    at: int,
    rx: int,
    reason: str | None,
    cause: Cause | None,
    seq: int | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    rest = dict(extra or {})
    offset = rest.pop("offset_ms", None)
    return {
        "broadcast_id": broadcast_id,
        "device_id": device_id,
        "state": state,
        "at_ms": at,
        "rx_ms": rx,
        "reason": reason,
        "inferred": cause is not None and cause is not Cause.TERMINAL,
        "cause": None if cause is None or cause is Cause.TERMINAL else cause.value,
        "seq": seq,
        "offset_ms": offset,
        "extra": rest or None,
    }


def new_delivery(
    broadcast_id: str,
    device_id: str,
    state: DeliveryState,
    now: int,
    *,
    attempt: int = 0,
    session: Session | None = None,
    book: Ledger | None = None,
) -> Delivery:
    """A delivery's first state: `scheduled`, `sent` or `offline`, chosen by its creator.
    Its first transition and count go to `book`, else `session`'s ledger (the session it
    is added to); one of them is required."""
    if state not in NOT_REACHED:
        raise ValueError(f"a delivery starts scheduled, sent or offline, not {state}")
    reason = OFFLINE_AT_SEND if state is S.OFFLINE else None
    if book is None and session is None:
        raise ValueError("new_delivery: give the session (or ledger) that records it")
    book = book or ledger(cast(Session, session))
    book.transitions.append(_first_row(broadcast_id, device_id, state, now, reason))
    book.moved(broadcast_id, None, state.value)
    return Delivery(
        broadcast_id=broadcast_id,
        device_id=device_id,
        state=state.value,
        reason=reason,
        updated_ms=now,
        attempt=attempt,
        state_source=Source.CONTROLLER.value,
    )


def insert_new(
    session: Session,
    broadcast_id: str,
    states: Iterable[tuple[str, DeliveryState]],
    now: int,
) -> int:
    """Many new deliveries of one broadcast, `(device_id, first state)` each."""
    return insert_many(session, ((broadcast_id, d, st) for d, st in states), now)


def insert_many(
    session: Session,
    rows: Iterable[tuple[str, str, DeliveryState]],
    now: int,
    *,
    chunk: int = 5000,
) -> int:
    """New deliveries, `(broadcast_id, device_id, first state)` each, of any broadcasts,
    written with one bulk statement per chunk (10,000 ORM objects took 0.9 s of CPU;
    this a seventh of that). Their first transitions and counts are written with them."""
    count: Counter[tuple[str, str]] = Counter()
    written = 0
    deliveries: list[dict[str, Any]] = []
    firsts: list[dict[str, Any]] = []
    conn = session.connection()

    def flush() -> None:
        if deliveries:
            executemany(conn, INSERT_DELIVERY, deliveries)
            executemany(conn, INSERT_TRANSITION, firsts)
            deliveries.clear()
            firsts.clear()

    for broadcast_id, device_id, state in rows:
        if state not in NOT_REACHED:
            raise ValueError(f"a delivery starts scheduled, sent or offline, not {state}")
        reason = OFFLINE_AT_SEND if state is S.OFFLINE else None
        deliveries.append(
            {
                "broadcast_id": broadcast_id,
                "device_id": device_id,
                "state": state.value,
                "reason": reason,
                "updated_ms": now,
                "last_seq": 0,
                "state_source": Source.CONTROLLER.value,
                "attempt": 0,
            }
        )
        firsts.append(_first_row(broadcast_id, device_id, state, now, reason))
        count[(broadcast_id, state.value)] += 1
        written += 1
        if len(deliveries) >= chunk:
            flush()
    flush()
    ledger(session).counts.update(count)
    return written


OFFLINE_AT_SEND = "the terminal was offline when it was sent; the broker keeps it until expiry"


def apply(
    delivery: DeliveryLike,
    to: DeliveryState,
    cause: Cause,
    *,
    now: int,
    reason: str | None = None,
    at: int | None = None,
    seq: int | None = None,
    attempt: int | None = None,
    extra: dict[str, Any] | None = None,
    session: Session | None = None,
    ledger: Ledger | None = None,
) -> Applied | None:
    """Move `delivery` to `to` if the table allows it; None (and no change) if not.

    Terminal reports give `seq` and `attempt`; `at` is when it happened by the
    terminal's clock (default `now`). An operator's resend gives the new `attempt`.

    The transition row and the count change go to `ledger`, else the ledger of
    `session` (default: the session an ORM `Delivery` belongs to; a `DeliveryRow` needs
    one of them given). A
    terminal's report that is older than the current state (its seq is below the last
    applied, as two replicas' batches can store them) or answers a superseded attempt
    changes nothing but is still history: its row is appended, placed by its `at`.
    """
    book = ledger or _ledger_of(delivery, session)
    current = DeliveryState(delivery.state)
    source = Source(delivery.state_source)
    if cause is Cause.TERMINAL:
        stale = (seq is not None and seq <= delivery.last_seq) or (
            (attempt or 0) < delivery.attempt
        )
        if stale:
            # Rule 1: the state stays; the history keeps what the terminal said (a
            # duplicate of a stored report is the same seq, and stored once).
            if seq is not None and to in REPORTABLE:
                book.transitions.append(
                    _transition_row(
                        delivery.broadcast_id, delivery.device_id, to.value,
                        now if at is None else at, now, reason, cause, seq,
                        {**(extra or {}), "stale": True},
                    )
                )  # fmt: skip
            return None
    if current is to and cause is not Cause.TERMINAL:
        return None
    # The terminal repeating its own state (a play resumed after an interruption says
    # `playing` again) is news for the history, not a transition the table lists.
    repeat = cause is Cause.TERMINAL and current is to and to in REPORTABLE
    if not repeat and not allowed(current, source, to, cause):
        return None
    reached_now = cause is Cause.TERMINAL and seq is not None and delivery.last_seq <= 0
    delivery.state = to.value
    delivery.reason = reason
    delivery.updated_ms = now
    if cause is Cause.TERMINAL:
        delivery.state_source = Source.DEVICE.value
        if seq is not None:
            delivery.last_seq = seq
    else:
        delivery.state_source = Source.CONTROLLER.value
    if cause is Cause.OPERATOR and attempt is not None:
        delivery.attempt = attempt
    if isinstance(delivery, DeliveryRow):
        delivery.changed = True
    when = now if at is None else at
    book.transitions.append(
        _transition_row(
            delivery.broadcast_id, delivery.device_id, to.value, when, now, reason, cause,
            seq if cause is Cause.TERMINAL else None, extra,
        )
    )  # fmt: skip
    if current is not to:
        book.moved(delivery.broadcast_id, current.value, to.value)
    if reached_now:
        book.counts[(delivery.broadcast_id, REACHED)] += 1
    return Applied(
        broadcast_id=delivery.broadcast_id,
        device_id=delivery.device_id,
        previous=current,
        state=to,
        reason=reason,
        at=when,
        cause=cause,
    )


def _ledger_of(delivery: DeliveryLike, session: Session | None) -> Ledger:
    if session is None:
        session = cast("Session | None", object_session(delivery))
    if session is None:
        raise RuntimeError(
            "deliveries.apply: the delivery belongs to no session; pass session= to record it"
        )
    return ledger(session)


# ---------------------------------------------------------------------- concurrent writers


def for_update(session: Session, query: Any) -> Any:
    """`query` (a select of ORM `Delivery`, maybe joined to other tables) made safe for a
    writer that others may race: on PostgreSQL its delivery rows are locked in id order
    until the transaction ends, and read fresh.

    Why: PostgreSQL gives this controller several database threads, so the ingest batch,
    the expiry sweep, liveness, a terminal back online, cancel and the schedule service
    write deliveries at once, under READ COMMITTED. A plain SELECT sees the state before
    another writer's uncommitted change; the UPDATE then waits for that writer and
    overwrites its state with a move decided from the old one (a terminal's `done`
    turned back into `offline` by liveness, or into `expired` by the sweep, and its
    report already spent). With FOR UPDATE, PostgreSQL waits for the other writer and
    then checks the row's newest version against the WHERE again, so a delivery that
    moved on is no longer selected; `populate_existing` replaces what the session may
    already hold of it. Id order, as `load_rows` locks, so two writers cannot deadlock
    on deliveries. SQLite has one writer at a time (one database thread, the file lock):
    the query is left as it is there."""
    if session.get_bind().dialect.name != "postgresql":
        return query
    return (
        query.order_by(None)
        .order_by(Delivery.id)
        .with_for_update(of=Delivery)
        .execution_options(populate_existing=True)
    )


# ---------------------------------------------------------------------- batch paths

_ROW_COLUMNS = (
    "id", "broadcast_id", "device_id", "state", "reason", "updated_ms", "last_seq",
    "state_source", "attempt",
)  # fmt: skip


def load_rows(
    session: Session, keys: Iterable[tuple[str, str]], *, chunk: int = 400
) -> dict[tuple[str, str], DeliveryRow]:
    """The deliveries for `(broadcast_id, device_id)` keys as plain rows, no ORM objects:
    on PostgreSQL one SELECT joined to the keys as arrays (an IN list of hundreds is a
    filter on every row of the broadcast there, 200 ms a batch at 10,000 terminals); on
    SQLite one per broadcast and chunk of terminals (its IN lists use the index).
    On PostgreSQL the rows stay locked until the caller's transaction ends; SQLite has
    one writer at a time anyway."""
    by_broadcast: dict[str, list[str]] = {}
    for broadcast_id, device_id in keys:
        by_broadcast.setdefault(broadcast_id, []).append(device_id)
    found: dict[tuple[str, str], DeliveryRow] = {}
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        pairs = sorted({(b, d) for b, devices in by_broadcast.items() for d in devices})
        if pairs:
            sql = (
                f"SELECT {', '.join('d.' + c for c in _ROW_COLUMNS)} FROM delivery AS d "
                "JOIN unnest(%s::text[], %s::text[]) AS k(b, dv) "
                "ON d.broadcast_id = k.b AND d.device_id = k.dv "
                # Locked until the batch commits: two replicas share the report topics
                # and a terminal's reports of one broadcast may reach both, so each must
                # read the state the other committed, or both apply the same move from
                # the same old state (a transition twice, the counts off by one each
                # time). Locked in id order so two batches cannot deadlock each other.
                "ORDER BY d.id FOR UPDATE OF d"
            )
            result = conn.exec_driver_sql(sql, ([b for b, _ in pairs], [d for _, d in pairs]))
            for row in result:
                d = DeliveryRow(*row)
                found[(d.broadcast_id, d.device_id)] = d
        return found
    table = Delivery.__table__  # type: ignore[attr-defined]
    columns = [table.c[name] for name in _ROW_COLUMNS]
    for broadcast_id, devices in by_broadcast.items():
        unique = sorted(set(devices))
        for start in range(0, len(unique), chunk):  # within SQLite's bound-parameter limit
            query = (
                select_core(*columns)
                .where(table.c.broadcast_id == broadcast_id)
                .where(table.c.device_id.in_(unique[start : start + chunk]))
            )
            for row in session.execute(query):
                d = DeliveryRow(*row)
                found[(d.broadcast_id, d.device_id)] = d
    return found


def save_rows(session: Session, rows: Iterable[DeliveryRow]) -> int:
    """Writes back the rows `apply` changed: one executemany UPDATE."""
    rows = list(rows)
    changed = [
        {
            "id": d.id,
            "state": d.state,
            "reason": d.reason,
            "updated_ms": d.updated_ms,
            "last_seq": d.last_seq,
            "state_source": d.state_source,
            "attempt": d.attempt,
        }
        for d in rows
        if d.changed
    ]
    if not changed:
        return 0
    executemany(session.connection(), UPDATE_DELIVERY, changed)
    for d in rows:
        d.changed = False
    return len(changed)


# ---------------------------------------------------------------------- reading


def history(
    session: Session, broadcast_id: str, device_ids: Iterable[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Transitions per terminal of one broadcast, in the terminal's order (`at`, then
    the order stored), as the API shows them: {"state", "at", "rx", ...}. Many terminals
    are read as one range of the (broadcast, device) index, not as lists of ids."""
    t = DeliveryTransition.__table__  # type: ignore[attr-defined]
    query = select_core(t).where(t.c.broadcast_id == broadcast_id)
    wanted = None if device_ids is None else set(device_ids)
    if wanted is not None:
        if not wanted:
            return {}
        if len(wanted) <= 400:
            query = query.where(t.c.device_id.in_(sorted(wanted)))
        else:
            query = query.where(t.c.device_id.between(min(wanted), max(wanted)))
    out: dict[str, list[dict[str, Any]]] = {}
    for row in session.execute(query.order_by(t.c.device_id, t.c.at_ms, t.c.id)):
        if wanted is None or row.device_id in wanted:
            out.setdefault(row.device_id, []).append(entry_of(row))
    return out


def entry_of(row: Any) -> dict[str, Any]:
    """A transition row (a database row, or a ledger's dict) as the entry the API and
    readers use: {"state", "at", "rx"} and whatever else it has."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    entry: dict[str, Any] = {"state": get("state"), "at": get("at_ms"), "rx": get("rx_ms")}
    if get("reason"):
        entry["reason"] = get("reason")
    if get("inferred"):
        entry["inferred"] = True
    if get("cause"):
        entry["cause"] = get("cause")
    if get("offset_ms") is not None:
        entry["offset_ms"] = get("offset_ms")
    if get("extra"):
        entry.update(get("extra") or {})
    return entry


def transitions_of(session: Session, delivery: DeliveryLike) -> list[dict[str, Any]]:
    """One delivery's transitions, in the terminal's order."""
    return history(session, delivery.broadcast_id, [delivery.device_id]).get(delivery.device_id, [])


def counts(session: Session, broadcast_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per broadcast, its deliveries per state (and `REACHED`), from `BroadcastCount`."""
    ids = sorted(set(broadcast_ids))
    out: dict[str, dict[str, int]] = {b: {} for b in ids}
    c = BroadcastCount.__table__  # type: ignore[attr-defined]
    for start in range(0, len(ids), 400):
        for b, state, n in session.execute(
            select_core(c.c.broadcast_id, c.c.state, c.c.n).where(
                c.c.broadcast_id.in_(ids[start : start + 400])
            )
        ):
            if n:
                out[b][state] = n
    return out


def played(session: Session, delivery: DeliveryLike) -> bool:
    """The terminal itself said it played (some or all of) it."""
    if delivery.state == S.DONE.value and delivery.state_source == Source.DEVICE.value:
        return True
    t = DeliveryTransition.__table__  # type: ignore[attr-defined]
    return (
        session.execute(
            select_core(t.c.id)
            .where(t.c.broadcast_id == delivery.broadcast_id)
            .where(t.c.device_id == delivery.device_id)
            .where(t.c.state.in_((S.PLAYING.value, S.DONE.value)))
            .where(t.c.inferred == False)  # noqa: E712 - SQL
            .limit(1)
        ).first()
        is not None
    )


def reached(delivery: DeliveryLike) -> bool:
    """The terminal has answered about this broadcast at least once."""
    return delivery.last_seq > 0


def settled(states: dict[str, int]) -> bool:
    """A broadcast is no longer in progress when every delivery is final, or waits on a
    terminal that is offline (it may still play on return, but nobody should stare at
    the board waiting for it)."""
    return all(
        DeliveryState(state).final or state == S.OFFLINE.value
        for state, count in states.items()
        if count
    )
