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
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from controller.models import Delivery
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


def _from(*pairs: tuple[frozenset[DeliveryState] | DeliveryState, set[Cause]]) -> dict[
    DeliveryState, frozenset[Cause]
]:
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


def new_delivery(
    broadcast_id: str, device_id: str, state: DeliveryState, now: int, *, attempt: int = 0
) -> Delivery:
    """A delivery's first state: `scheduled`, `sent` or `offline`, chosen by its creator."""
    if state not in NOT_REACHED:
        raise ValueError(f"a delivery starts scheduled, sent or offline, not {state}")
    reason = OFFLINE_AT_SEND if state is S.OFFLINE else None
    first: dict[str, Any] = {"state": state.value, "at": now, "rx": now}
    if reason:
        first["reason"] = reason
    return Delivery(
        broadcast_id=broadcast_id,
        device_id=device_id,
        state=state.value,
        reason=reason,
        updated_ms=now,
        attempt=attempt,
        state_source=Source.CONTROLLER.value,
        transitions=[first],
    )


OFFLINE_AT_SEND = "the terminal was offline when it was sent; the broker keeps it until expiry"


def apply(
    delivery: Delivery,
    to: DeliveryState,
    cause: Cause,
    *,
    now: int,
    reason: str | None = None,
    at: int | None = None,
    seq: int | None = None,
    attempt: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Applied | None:
    """Move `delivery` to `to` if the table allows it; None (and no change) if not.

    Terminal reports give `seq` and `attempt`; `at` is when it happened by the
    terminal's clock (default `now`). An operator's resend gives the new `attempt`.
    """
    current = DeliveryState(delivery.state)
    source = Source(delivery.state_source)
    if cause is Cause.TERMINAL:
        if seq is not None and seq <= delivery.last_seq:
            return None  # rule 1: a duplicate or an older report
        if (attempt or 0) < delivery.attempt:
            return None  # rule 1: answers a send that was superseded by a resend
    if current is to and cause is not Cause.TERMINAL:
        return None
    # The terminal repeating its own state (a play resumed after an interruption says
    # `playing` again) is news for the history, not a transition the table lists.
    repeat = cause is Cause.TERMINAL and current is to and to in REPORTABLE
    if not repeat and not allowed(current, source, to, cause):
        return None
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
    entry: dict[str, Any] = {"state": to.value, "at": now if at is None else at, "rx": now}
    if reason:
        entry["reason"] = reason
    if cause is not Cause.TERMINAL:
        entry["inferred"] = True
        entry["cause"] = cause.value
    if extra:
        entry.update(extra)
    # A new list, so SQLAlchemy sees the JSON column change.
    delivery.transitions = [*delivery.transitions, entry]
    return Applied(
        broadcast_id=delivery.broadcast_id,
        device_id=delivery.device_id,
        previous=current,
        state=to,
        reason=reason,
        at=entry["at"],
        cause=cause,
    )


def played(delivery: Delivery) -> bool:
    """The terminal itself said it played (some or all of) it."""
    return any(
        t.get("state") in (S.PLAYING.value, S.DONE.value) and not t.get("inferred")
        for t in delivery.transitions
    )


def reached(delivery: Delivery) -> bool:
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
