"""The delivery state machine (controller/deliveries.py): every allowed transition, every
forbidden one refused, and the rules for terminal reports (sequence, attempt, who has
the last word)."""

from __future__ import annotations

from typing import Any

import pytest

from controller import deliveries as dm
from controller.deliveries import Cause, Source
from controller.models import Delivery
from dalaba.protocol import DeliveryReport, DeliveryState

T0 = 1_760_000_000_000
S = DeliveryState

# The specification, written out by hand: (cause, from) -> the states it may move to.
# The terminal's moves apply whatever the source of the current state, except that a
# final state the terminal itself reported is never reopened (FINAL_BY_TERMINAL below).
_REPORTED_FROM_WAITING = (
    "received fetched playing done silent failed rejected preempted expired cancelled"
)
SPEC: dict[tuple[Cause, str], str] = {
    (Cause.TERMINAL, "scheduled"): _REPORTED_FROM_WAITING,
    (Cause.TERMINAL, "sent"): _REPORTED_FROM_WAITING,
    (Cause.TERMINAL, "offline"): _REPORTED_FROM_WAITING,
    (Cause.TERMINAL, "received"): "fetched playing done silent failed preempted expired cancelled",
    (Cause.TERMINAL, "fetched"): "playing done silent failed preempted expired cancelled",
    (Cause.TERMINAL, "playing"): "done silent failed preempted cancelled",
    (Cause.TERMINAL, "preempted"): "received fetched playing done silent failed expired cancelled",
    # Only reachable when the controller inferred them (rule 3):
    (Cause.TERMINAL, "expired"): "received fetched playing done silent failed rejected preempted",
    (Cause.TERMINAL, "unknown"): "received fetched playing done silent failed preempted",
    (Cause.TERMINAL, "cancelled"): "done",
    (Cause.TERMINAL, "failed"): "received fetched playing done preempted",  # after a resend
    (Cause.TERMINAL, "silent"): "received fetched playing done preempted",  # after a resend
    (Cause.DISPATCH, "scheduled"): "sent offline",
    (Cause.DISPATCH, "sent"): "offline",
    (Cause.DISPATCH, "offline"): "sent",
    (Cause.SWEEP, "scheduled"): "expired",
    (Cause.SWEEP, "sent"): "expired",
    (Cause.SWEEP, "offline"): "expired",
    (Cause.SWEEP, "received"): "expired",
    (Cause.SWEEP, "fetched"): "expired",
    (Cause.SWEEP, "preempted"): "expired",
    (Cause.SWEEP, "playing"): "unknown",
    (Cause.OPERATOR, "scheduled"): "cancelled",
    (Cause.OPERATOR, "sent"): "cancelled",
    (Cause.OPERATOR, "offline"): "cancelled",
    (Cause.OPERATOR, "failed"): "sent offline",
    (Cause.OPERATOR, "silent"): "sent offline",
    (Cause.OPERATOR, "expired"): "sent offline",
    (Cause.OPERATOR, "unknown"): "sent offline",
    (Cause.SCHEDULE, "scheduled"): "cancelled",
    (Cause.SCHEDULE, "cancelled"): "scheduled",
}
FINAL_BY_TERMINAL = {"done", "silent", "failed", "rejected", "expired", "cancelled", "unknown"}


def expected(cause: Cause, current: S, source: Source) -> set[str]:
    if cause is Cause.TERMINAL and source is Source.DEVICE and current.value in FINAL_BY_TERMINAL:
        return set()
    return set(SPEC.get((cause, current.value), "").split())


@pytest.mark.parametrize("cause", list(Cause))
@pytest.mark.parametrize("source", list(Source))
@pytest.mark.parametrize("current", list(S))
def test_the_table_allows_exactly_the_specified_moves(
    cause: Cause, source: Source, current: S
) -> None:
    allowed = {to.value for to in S if dm.allowed(current, source, to, cause)}
    assert allowed == expected(cause, current, source)


@pytest.mark.parametrize("cause", list(Cause))
@pytest.mark.parametrize("current", list(S))
def test_apply_changes_the_row_only_when_the_table_allows(cause: Cause, current: S) -> None:
    for to in S:
        d = delivery(state=current.value, state_source="controller")
        result = apply(d, to, cause, now=T0, reason="r", seq=1)
        if to.value in expected(cause, current, Source.CONTROLLER):
            assert result is not None and d.state == to.value
            assert result.previous is current and result.cause is cause
        elif to is not current:
            assert result is None
            assert d.state == current.value and transitions(d) == []


def test_controller_only_states_are_never_accepted_from_a_terminal() -> None:
    for to in dm.CONTROLLER_ONLY:
        d = delivery()
        assert apply_report(d, report(to.value, 1)) is False
        assert d.state == "sent"


# ---------------------------------------------------------------- terminal reports


# Each test delivery's ledger: what its transaction would append (controller/deliveries.py).
BOOKS: dict[int, dm.Ledger] = {}


def delivery(**fields: Any) -> Delivery:
    values: dict[str, Any] = {"broadcast_id": "b-1", "device_id": "d-1", "updated_ms": T0}
    values.update(fields)
    d = Delivery(**values)
    BOOKS[id(d)] = dm.Ledger()
    return d


def apply(d: Delivery, to: S, cause: Cause, **kw: Any) -> dm.Applied | None:
    return dm.apply(d, to, cause, ledger=BOOKS[id(d)], **kw)


def transitions(d: Delivery) -> list[dict[str, Any]]:
    """The delivery's history as the table gives it back: ordered by the terminal's
    `at` (stable: then as appended), a seq stored once (the table's unique key)."""
    seen: set[int] = set()
    rows = []
    for row in BOOKS[id(d)].transitions:
        if row["seq"] is not None and row["seq"] in seen:
            continue
        if row["seq"] is not None:
            seen.add(row["seq"])
        rows.append(row)
    return [dm.entry_of(r) for r in sorted(rows, key=lambda r: r["at_ms"])]


def report(state: str, seq: int, *, at: int | None = None, **fields: Any) -> DeliveryReport:
    return DeliveryReport.model_construct(
        device_id="d-1",
        broadcast_id="b-1",
        command_id="c-1",
        state=DeliveryState(state),
        at=T0 + seq if at is None else at,
        seq=seq,
        reason=fields.get("reason"),
        offline=fields.get("offline", False),
        attempt=fields.get("attempt", 0),
    )


def apply_report(d: Delivery, r: DeliveryReport, received_ms: int = T0) -> bool:
    extra = {"offline": True} if r.offline else None
    return (
        apply(
            d,
            r.state,
            Cause.TERMINAL,
            now=received_ms,
            at=r.at,
            reason=r.reason,
            seq=r.seq,
            attempt=r.attempt,
            extra=extra,
        )
        is not None
    )


def test_new_delivery_starts_in_a_controller_state_only() -> None:
    book = dm.Ledger()
    d = dm.new_delivery("b-1", "d-1", S.OFFLINE, T0, book=book)
    assert (d.state, d.state_source, d.last_seq) == ("offline", "controller", 0)
    assert d.reason == dm.OFFLINE_AT_SEND  # the board says why it waits
    assert [dm.entry_of(r) for r in book.transitions] == [
        {"state": "offline", "at": T0, "rx": T0, "reason": dm.OFFLINE_AT_SEND}
    ]
    assert book.counts == {("b-1", "offline"): 1}
    with pytest.raises(ValueError):
        dm.new_delivery("b-1", "d-1", S.DONE, T0, book=book)
    with pytest.raises(ValueError, match="session"):
        dm.new_delivery("b-1", "d-1", S.SENT, T0)  # nowhere to record its history


def test_normal_sequence_appends_each_transition() -> None:
    d = delivery()
    for seq, state in enumerate(["received", "fetched", "playing", "done"], start=1):
        assert apply_report(d, report(state, seq), received_ms=T0 + 100 + seq)
        assert d.state == state
        assert d.last_seq == seq
        assert d.updated_ms == T0 + 100 + seq
        assert d.state_source == "device"
    assert d.reason is None
    assert transitions(d) == [
        {"state": "received", "at": T0 + 1, "rx": T0 + 101},
        {"state": "fetched", "at": T0 + 2, "rx": T0 + 102},
        {"state": "playing", "at": T0 + 3, "rx": T0 + 103},
        {"state": "done", "at": T0 + 4, "rx": T0 + 104},
    ]


def test_counts_move_with_the_state_and_reached_counts_once() -> None:
    d = delivery()
    apply_report(d, report("received", 1))
    apply_report(d, report("playing", 2))
    apply_report(d, report("playing", 3))  # a repeat: history, not a move
    assert +BOOKS[id(d)].counts == {("b-1", "playing"): 1, ("b-1", dm.REACHED): 1}
    assert BOOKS[id(d)].counts[("b-1", "sent")] == -1


def test_apply_without_a_session_or_ledger_refuses() -> None:
    # Its history would be lost without a word: never.
    with pytest.raises(RuntimeError, match="session"):
        dm.apply(Delivery(broadcast_id="b", device_id="d", updated_ms=T0), S.DONE,
                 Cause.TERMINAL, now=T0, seq=1)  # fmt: skip


def test_stale_sequence_is_ignored() -> None:
    d = delivery()
    assert apply_report(d, report("received", 10), T0)
    assert apply_report(d, report("playing", 12), T0 + 1)
    # "fetched" was sent before "playing" but arrived after it (a reconnect reordering,
    # or two replicas' batches): the state stays, the history keeps it in its place.
    assert not apply_report(d, report("fetched", 11), T0 + 2)
    # The same report twice (QoS 1 redelivery after a controller crash) changes nothing.
    assert not apply_report(d, report("playing", 12), T0 + 3)
    assert d.state == "playing"
    assert d.last_seq == 12
    assert [t["state"] for t in transitions(d)] == ["received", "fetched", "playing"]
    assert transitions(d)[1].get("stale") is True


def test_report_after_a_device_reported_final_state_is_ignored() -> None:
    for final in ("done", "failed", "rejected", "expired", "cancelled"):
        d = delivery()
        assert apply_report(d, report(final, 2, reason="why"))
        assert not apply_report(d, report("playing", 3))
        assert d.state == final
        assert d.reason == "why"
        assert d.last_seq == 2


def test_controller_inferences_are_overruled_by_the_terminal() -> None:
    # Expired by the sweep while the terminal was offline; it played offline.
    d = delivery(state="expired", reason="never reached")
    assert apply_report(d, report("playing", 5, offline=True), T0 + 90)
    assert apply_report(d, report("done", 6, offline=True), T0 + 91)
    assert d.state == "done" and d.state_source == "device"
    assert not apply_report(d, report("failed", 7), T0 + 92)  # its own word stands
    # `unknown` (the done report was lost for a while) becomes done when it arrives.
    d = delivery(state="playing", state_source="device", last_seq=3)
    assert apply(d, S.UNKNOWN, Cause.SWEEP, now=T0) is not None
    assert d.state_source == "controller"
    assert apply_report(d, report("done", 4))
    assert d.state == "done"


def test_unknown_is_never_done_and_only_the_sweep_sets_it() -> None:
    d = delivery(state="playing", state_source="device")
    assert apply(d, S.UNKNOWN, Cause.OPERATOR, now=T0) is None
    assert apply(d, S.DONE, Cause.SWEEP, now=T0) is None
    assert apply(d, S.UNKNOWN, Cause.SWEEP, now=T0, reason="silent") is not None
    assert d.state == "unknown" and S.UNKNOWN.final
    assert transitions(d)[-1] == {
        "state": "unknown", "at": T0, "rx": T0, "reason": "silent", "inferred": True,
        "cause": "sweep",
    }  # fmt: skip


def test_a_resend_opens_a_new_attempt_and_old_reports_cannot_touch_it() -> None:
    d = delivery()
    assert apply_report(d, report("failed", 3, reason="media: HTTP 404"))
    assert apply(d, S.SENT, Cause.OPERATOR, now=T0, attempt=1) is not None
    assert d.attempt == 1 and d.state == "sent"
    # A late duplicate from the first attempt (higher seq, old attempt) is history.
    assert not apply_report(d, report("failed", 4, attempt=0))
    assert apply_report(d, report("playing", 5, attempt=1))
    assert apply_report(d, report("done", 6, attempt=1))
    assert d.state == "done"


def test_preempted_may_return_to_playing_without_keeping_its_reason() -> None:
    d = delivery()
    apply_report(d, report("playing", 1))
    assert apply_report(d, report("preempted", 2, reason="interrupted"))
    assert apply_report(d, report("playing", 3))
    assert d.state == "playing" and d.reason is None


def test_offline_flag_and_times_are_kept_in_the_transition() -> None:
    # An offline terminal reports an hour later: "at" is when it happened, "rx" when heard.
    d = delivery()
    assert apply_report(
        d, report("failed", 3, at=T0, reason="media: HTTP 404", offline=True), T0 + 3_600_000
    )
    assert transitions(d) == [
        {
            "state": "failed",
            "at": T0,
            "rx": T0 + 3_600_000,
            "reason": "media: HTTP 404",
            "offline": True,
        }
    ]


def test_settled_means_nothing_left_but_offline_terminals() -> None:
    assert dm.settled({"done": 30, "offline": 2, "failed": 1})
    assert not dm.settled({"done": 30, "playing": 1})
    assert not dm.settled({"done": 30, "sent": 1})
    assert dm.settled({"done": 3, "sent": 0})
