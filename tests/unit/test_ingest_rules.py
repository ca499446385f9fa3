"""How a terminal's delivery reports move a delivery's state on the controller."""

from __future__ import annotations

from typing import Any

from controller.ingest import apply_report
from controller.models import Delivery
from dalaba.protocol import DeliveryReport, DeliveryState

T0 = 1_760_000_000_000


def delivery(**fields: Any) -> Delivery:
    values: dict[str, Any] = {"broadcast_id": "b-1", "device_id": "d-1", "updated_ms": T0}
    values.update(fields)
    return Delivery(**values)


def report(state: str, seq: int, *, at: int | None = None, **fields: Any) -> DeliveryReport:
    return DeliveryReport(
        device_id="d-1",
        broadcast_id="b-1",
        command_id="c-1",
        state=DeliveryState(state),
        at=T0 + seq if at is None else at,
        seq=seq,
        **fields,
    )


def test_a_new_delivery_starts_as_sent_by_the_controller() -> None:
    d = delivery()
    assert d.state == "sent"
    assert d.state_source == "controller"
    assert d.last_seq == 0
    assert d.transitions == []


def test_normal_sequence_appends_each_transition() -> None:
    d = delivery()
    for seq, state in enumerate(["received", "fetched", "playing", "done"], start=1):
        assert apply_report(d, report(state, seq), received_ms=T0 + 100 + seq)
        assert d.state == state
        assert d.last_seq == seq
        assert d.updated_ms == T0 + 100 + seq
        assert d.state_source == "device"

    assert d.reason is None
    assert d.transitions == [
        {"state": "received", "at": T0 + 1, "rx": T0 + 101},
        {"state": "fetched", "at": T0 + 2, "rx": T0 + 102},
        {"state": "playing", "at": T0 + 3, "rx": T0 + 103},
        {"state": "done", "at": T0 + 4, "rx": T0 + 104},
    ]


def test_transitions_list_is_replaced_not_mutated() -> None:
    # SQLAlchemy notices a JSON column change only when the attribute is reassigned.
    d = delivery()
    before = d.transitions
    apply_report(d, report("received", 1), received_ms=T0)
    assert d.transitions is not before
    assert before == []


def test_stale_sequence_is_ignored() -> None:
    d = delivery()
    assert apply_report(d, report("received", 10), T0)
    assert apply_report(d, report("playing", 12), T0 + 1)

    # "fetched" was sent before "playing" but arrived after it (a reconnect reordering).
    assert not apply_report(d, report("fetched", 11), T0 + 2)
    # The same report twice (QoS 1 redelivery) changes nothing either.
    assert not apply_report(d, report("playing", 12), T0 + 3)

    assert d.state == "playing"
    assert d.last_seq == 12
    assert d.updated_ms == T0 + 1
    assert [t["state"] for t in d.transitions] == ["received", "playing"]


def test_report_after_a_device_reported_final_state_is_ignored() -> None:
    for final in ("done", "failed", "rejected", "expired", "cancelled"):
        d = delivery()
        assert apply_report(d, report("playing", 1), T0)
        assert apply_report(d, report(final, 2, reason="why"), T0 + 1)
        assert not apply_report(d, report("playing", 3), T0 + 2)
        assert d.state == final
        assert d.reason == "why"
        assert d.last_seq == 2
        assert len(d.transitions) == 2


def test_controller_inferred_final_state_is_overridden_by_the_terminal() -> None:
    # The controller gave up on a terminal that was offline past the expiry...
    d = delivery(
        state="expired",
        state_source="controller",
        reason="no acknowledgement before expiry",
        transitions=[{"state": "expired", "at": T0 + 50, "rx": T0 + 50}],
    )
    # ...which then comes back with what really happened while it was offline.
    assert apply_report(d, report("playing", 5, offline=True), T0 + 90)
    assert d.state == "playing"
    assert d.state_source == "device"
    assert d.reason is None
    assert apply_report(d, report("done", 6, offline=True), T0 + 91)
    assert d.state == "done"
    assert [t["state"] for t in d.transitions] == ["expired", "playing", "done"]
    # And from now on the terminal's own final word stands.
    assert not apply_report(d, report("failed", 7), T0 + 92)
    assert d.state == "done"


def test_preempted_may_return_to_playing() -> None:
    d = delivery()
    apply_report(d, report("playing", 1), T0)
    assert apply_report(
        d, report("preempted", 2, reason="interrupted by a higher priority broadcast"), T0 + 1
    )
    assert d.state == "preempted"
    assert d.reason == "interrupted by a higher priority broadcast"

    assert apply_report(d, report("playing", 3), T0 + 2)
    assert d.state == "playing"
    assert d.reason is None  # the interruption's reason does not stick to the replay
    assert apply_report(d, report("done", 4), T0 + 3)
    assert [t["state"] for t in d.transitions] == ["playing", "preempted", "playing", "done"]


def test_offline_flag_and_reason_are_recorded_in_the_transition() -> None:
    d = delivery()
    assert apply_report(d, report("failed", 3, reason="media: HTTP 404", offline=True), T0 + 7)
    assert d.state == "failed"
    assert d.reason == "media: HTTP 404"
    assert d.transitions == [
        {
            "state": "failed",
            "at": T0 + 3,
            "rx": T0 + 7,
            "reason": "media: HTTP 404",
            "offline": True,
        }
    ]


def test_terminal_clock_and_receive_time_are_both_kept() -> None:
    # An offline terminal reports hours later: "at" is when it happened, "rx" when heard.
    d = delivery()
    apply_report(d, report("done", 1, at=T0, offline=True), received_ms=T0 + 3_600_000)
    assert d.transitions[-1]["at"] == T0
    assert d.transitions[-1]["rx"] == T0 + 3_600_000
    assert d.updated_ms == T0 + 3_600_000
