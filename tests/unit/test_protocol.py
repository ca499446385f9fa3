"""The wire contract: topics, ids, priorities and payload models. The signed envelope
and the signature schemes are tests/unit/test_signing.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from dalaba import protocol as p
from dalaba.protocol import (
    MAX_REPORT_BYTES,
    DeliveryReport,
    DeliveryState,
    MediaRef,
    Priority,
    ProtocolError,
    RejectReason,
    Target,
    Topics,
    check_id,
    parse_report,
    priority_rank,
)
from tests.support import NOW, SHA, play_body

# --------------------------------------------------------------------------- helpers




# --------------------------------------------------------------------------- topics and ids


def test_topic_builders() -> None:
    assert Topics.command_township("t-01") == "dalaba/v1/cmd/township/t-01"
    assert Topics.command_village("v-001") == "dalaba/v1/cmd/village/v-001"
    assert Topics.command_device("d-1") == "dalaba/v1/cmd/device/d-1"
    assert Topics.device_status("d-1") == "dalaba/v1/device/d-1/status"
    assert Topics.device_ack("d-1") == "dalaba/v1/device/d-1/ack"
    assert Topics.device_telemetry("d-1") == "dalaba/v1/device/d-1/telemetry"
    assert Topics.device_event("d-1") == "dalaba/v1/device/d-1/event"
    assert Topics.COMMAND_ALL == "dalaba/v1/cmd/all"
    assert Topics.subscriptions_for("d-1", "v-001", "t-01") == [
        "dalaba/v1/cmd/all",
        "dalaba/v1/cmd/township/t-01",
        "dalaba/v1/cmd/village/v-001",
        "dalaba/v1/cmd/device/d-1",
    ]


@pytest.mark.parametrize(
    "builder",
    [
        Topics.command_township,
        Topics.command_village,
        Topics.command_device,
        Topics.device_status,
        Topics.device_ack,
        Topics.device_telemetry,
        Topics.device_event,
    ],
)
@pytest.mark.parametrize("bad", ["+", "#", "a/b", "", "x" * 65, ".hidden"])
def test_topic_builders_refuse_ids_that_would_change_the_topic(builder: Any, bad: str) -> None:
    with pytest.raises(ValueError):
        builder(bad)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("dalaba/v1/device/d-1/status", ("d-1", "status")),
        ("dalaba/v1/device/d-1/ack", ("d-1", "ack")),
        ("dalaba/v1/device/d-1/telemetry", ("d-1", "telemetry")),
        ("dalaba/v1/device/d-1/event", ("d-1", "event")),
    ],
)
def test_parse_device_topic(topic: str, expected: tuple[str, str]) -> None:
    assert Topics.parse_device_topic(topic) == expected


@pytest.mark.parametrize(
    "topic",
    [
        "dalaba/v2/device/d-1/status",
        "dalaba/v0/device/d-1/status",
        "other/v1/device/d-1/status",
        "dalaba/v1/cmd/d-1/status",
        "dalaba/v1/device/d-1",
        "dalaba/v1/device/d-1/status/extra",
        "/dalaba/v1/device/d-1/status",
        "dalaba/v1/cmd/all",
        "dalaba",
        "",
    ],
)
def test_parse_device_topic_refuses_other_roots_and_shapes(topic: str) -> None:
    assert Topics.parse_device_topic(topic) is None


@pytest.mark.parametrize("good", ["a", "v-001", "T_01", "d.1", "x" * 64, "a..b", "0"])
def test_check_id_accepts(good: str) -> None:
    assert check_id(good) == good


@pytest.mark.parametrize(
    "bad",
    ["", "+", "#", "a/b", "a+b", "a#", "x" * 65, ".", ".hidden", "..", "a b", "村", "a\n", "a\x00"],
)
def test_check_id_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid id"):
        check_id(bad)


# --------------------------------------------------------------------------- priorities


def test_priority_rank_order() -> None:
    ordered = [
        priority_rank(Priority.EMERGENCY, 1),
        priority_rank(Priority.EMERGENCY, 2),
        priority_rank(Priority.EMERGENCY, 3),
        priority_rank(Priority.EMERGENCY, 4),
        priority_rank(Priority.PAGING),
        priority_rank(Priority.NOTICE),
        priority_rank(Priority.ROUTINE),
    ]
    assert ordered == sorted(ordered, reverse=True)
    assert len(set(ordered)) == len(ordered)
    assert priority_rank("emergency", 1) == priority_rank(Priority.EMERGENCY, 1)
    assert priority_rank("routine") == priority_rank(Priority.ROUTINE)


def test_priority_rank_refuses_unknown_priority() -> None:
    with pytest.raises(ValueError):
        priority_rank("urgent")


def test_play_body_rank_follows_priority_and_level() -> None:
    assert play_body(level=1).rank > play_body(level=4).rank
    notice = play_body(priority=Priority.NOTICE, level=None)
    assert play_body(level=4).rank > notice.rank == priority_rank(Priority.NOTICE)


def test_play_body_refuses_a_level_on_a_notice() -> None:
    with pytest.raises(ValidationError, match="level"):
        play_body(priority=Priority.NOTICE, level=2)


def test_play_body_refuses_an_emergency_without_a_level() -> None:
    with pytest.raises(ValidationError, match="level"):
        play_body(level=None)


@pytest.mark.parametrize("level", [0, 5, -1])
def test_play_body_refuses_levels_outside_i_to_iv(level: int) -> None:
    with pytest.raises(ValidationError):
        play_body(level=level)


def scheduled_item(**overrides: Any) -> p.ScheduledItem:
    fields: dict[str, Any] = {
        "occurrence_id": "occ-1",
        "schedule_id": "s-1",
        "priority": Priority.NOTICE,
        "category": "fire_prevention",
        "media": MediaRef(sha256=SHA, url="media/x.ogg", size=1, duration_ms=1),
        "start_at": NOW,
        "expires_at": NOW + 60_000,
    }
    fields.update(overrides)
    return p.ScheduledItem(**fields)


def test_scheduled_item_becomes_a_valid_play_body() -> None:
    item = scheduled_item(priority=Priority.EMERGENCY, level=3)
    assert item.level == 3
    assert scheduled_item().level is None


@pytest.mark.parametrize(
    "fields",
    [{"priority": Priority.NOTICE, "level": 2}, {"priority": Priority.EMERGENCY, "level": None}],
)
def test_scheduled_item_refuses_what_play_body_refuses(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="level"):
        scheduled_item(**fields)


def test_play_body_refuses_bad_media_hash_and_volume() -> None:
    with pytest.raises(ValidationError):
        MediaRef(sha256="AB" * 32, url="x", size=1, duration_ms=1)
    with pytest.raises(ValidationError):
        play_body(volume=101)


def test_payloads_are_immutable() -> None:
    body = play_body()
    with pytest.raises(ValidationError):
        body.title = "changed"  # type: ignore[misc]


# --------------------------------------------------------------------------- target


def test_target_covers() -> None:
    args = ("d-1", "v-001", "t-01")
    assert Target(all=True).covers(*args)
    assert Target(townships=("t-02", "t-01")).covers(*args)
    assert Target(villages=("v-001",)).covers(*args)
    assert Target(devices=("d-1",)).covers(*args)
    assert not Target().covers(*args)
    assert not Target(townships=("t-02",), villages=("v-002",), devices=("d-2",)).covers(*args)
    # Ids are matched whole, never as prefixes or across kinds.
    assert not Target(villages=("v-00",)).covers(*args)
    assert not Target(villages=("t-01",), townships=("v-001",)).covers(*args)


# --------------------------------------------------------------------------- reports


def report_json(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "v": 1,
        "device_id": "d-1",
        "broadcast_id": "b-1",
        "command_id": "c-1",
        "state": "playing",
        "at": NOW,
        "seq": 7,
    }
    data.update(changes)
    return data


def test_delivery_report_with_unknown_fields_parses() -> None:
    raw = json.dumps(report_json(battery_voltage=12.1, new_thing={"a": [1]})).encode()
    report = parse_report("ack", raw)
    assert isinstance(report, DeliveryReport)
    assert report.state is DeliveryState.PLAYING
    assert report.seq == 7
    assert report.offline is False
    assert not hasattr(report, "battery_voltage")


def test_parse_report_each_kind() -> None:
    status = parse_report(
        "status", json.dumps({"device_id": "d-1", "online": False, "at": NOW}).encode()
    )
    assert isinstance(status, p.DeviceStatus)
    assert status.online is False

    ack = parse_report("ack", json.dumps(report_json(state="done", offline=True)).encode())
    assert isinstance(ack, DeliveryReport)
    assert ack.state is DeliveryState.DONE and ack.offline

    event = parse_report(
        "event",
        json.dumps(
            {
                "device_id": "d-1",
                "kind": "command_rejected",
                "at": NOW,
                "reason": "bad_signature",
                "command_id": "c-9",
            }
        ).encode(),
    )
    assert isinstance(event, p.DeviceEvent)
    assert event.kind is p.EventKind.COMMAND_REJECTED
    assert event.detail == {}

    telemetry = parse_report(
        "telemetry",
        json.dumps(
            {
                "device_id": "d-1",
                "at": NOW,
                "firmware": "1.2.3",
                "uptime_s": 3600,
                "amplifier_on": False,
                "amplifier_ok": True,
                "speaker_line_ok": True,
                "power_source": "battery",
                "battery_pct": 80,
                "temperature_c": 31.5,
                "signal_dbm": -71,
                "volume": 60,
                "cache_bytes": 1024,
                "cache_items": 2,
                "faults": ["on_battery"],
            }
        ).encode(),
    )
    assert isinstance(telemetry, p.Telemetry)
    assert telemetry.faults == (p.Fault.ON_BATTERY,)
    assert telemetry.playing is None


def test_report_round_trips_through_to_bytes() -> None:
    report = DeliveryReport(**report_json(state="failed", reason="media: 404"))
    assert parse_report("ack", report.to_bytes()) == report
    assert b"null" not in report.to_bytes()  # absent optionals are left out


@pytest.mark.parametrize("kind", ["", "acks", "cmd", "Status", "telemetry/x"])
def test_parse_report_refuses_unknown_kinds(kind: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_report(kind, json.dumps(report_json()).encode())
    assert info.value.reason is RejectReason.MALFORMED


def test_parse_report_refuses_oversized_reports() -> None:
    padded = json.dumps(report_json(reason="x" * MAX_REPORT_BYTES)).encode()
    with pytest.raises(ProtocolError) as info:
        parse_report("ack", padded)
    assert info.value.reason is RejectReason.OVERSIZED


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        json.dumps(report_json(state="exploded")).encode(),
        json.dumps(report_json(seq="seven")).encode(),
        json.dumps({k: v for k, v in report_json().items() if k != "device_id"}).encode(),
    ],
)
def test_parse_report_refuses_malformed_reports(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_report("ack", raw)
    assert info.value.reason is RejectReason.MALFORMED


def test_delivery_state_final() -> None:
    final = {s for s in DeliveryState if s.final}
    assert final == {
        DeliveryState.DONE,
        DeliveryState.SILENT,
        DeliveryState.FAILED,
        DeliveryState.REJECTED,
        DeliveryState.EXPIRED,
        DeliveryState.CANCELLED,
        DeliveryState.UNKNOWN,
    }
    # Preempted can return to playing when replayed; scheduled/sent/... are in flight.
    for state in ("scheduled", "sent", "received", "fetched", "playing", "preempted"):
        assert not DeliveryState(state).final
