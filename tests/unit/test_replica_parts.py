"""The parts of controller replicas that need no server: the relay's event encoding, the
hub's relayed flag, and the SQLite single-process lock. The real processes are in
tests/integration/test_replicas.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.deliveries import BroadcastStatus, Cause
from controller.events import (
    EVENT_TYPES,
    ApprovalRequested,
    BroadcastChanged,
    DeliveryChanged,
    DeviceLiveness,
    DeviceReported,
    Event,
    EventHub,
)
from controller.replicas import SecondReplicaRefused, SqliteOwner, decode_event, encode_event
from dalaba.protocol import DeliveryState

SAMPLES: list[Event] = [
    DeliveryChanged(
        broadcast_id="b1",
        device_id="d1",
        village_id="v1",
        township_id="t1",
        state=DeliveryState.DONE,
        previous=DeliveryState.PLAYING,
        reason=None,
        at=1_760_000_000_000,
        cause=Cause.TERMINAL,
    ),
    DeviceLiveness(device_id="d1", village_id="v1", township_id="t1", online=False, why="will"),
    DeviceReported(device_id="d1", village_id="v1", township_id="t1", kind="fault_raised"),
    BroadcastChanged(
        broadcast_id="b1", change="cancelled", status=BroadcastStatus.CANCELLED, actor="王"
    ),
    ApprovalRequested(request_id="r1", change="approved"),
]


def test_every_event_type_survives_the_relay_as_it_was() -> None:
    assert {type(e) for e in SAMPLES} == set(EVENT_TYPES)
    for event in SAMPLES:
        wire = json.loads(json.dumps(encode_event(event), ensure_ascii=False))
        back = decode_event(wire)
        assert back == event
        assert type(back) is type(event)


@pytest.mark.parametrize(
    "item",
    [
        None,
        [],
        ["NoSuchEvent", {}],
        ["DeviceReported", {"device_id": "d1"}],
        ["DeliveryChanged", {**json.loads(json.dumps(encode_event(SAMPLES[0])))[1], "state": "x"}],
    ],
)
def test_a_malformed_relayed_event_is_refused(item: object) -> None:
    with pytest.raises(ValueError):
        decode_event(item)


def test_listeners_that_want_only_their_own_process_do_not_hear_relayed_events() -> None:
    hub = EventHub()
    everything: list[Event] = []
    own: list[Event] = []
    hub.on(DeviceReported, everything.append, owner="live")
    hub.on(DeviceReported, own.append, owner="metrics", relayed=False)
    local, remote = (
        SAMPLES[2],
        DeviceReported(device_id="d2", village_id="v1", township_id="t1", kind="fault_cleared"),
    )
    hub.emit(local)
    hub.emit(remote, relayed=True)
    assert everything == [local, remote]
    assert own == [local]


def test_a_second_controller_on_one_sqlite_database_is_refused(tmp_path: Path) -> None:
    database = tmp_path / "dalaba.db"
    first, second = SqliteOwner(database), SqliteOwner(database)
    first.acquire()
    try:
        with pytest.raises(SecondReplicaRefused, match="already runs on the SQLite database"):
            second.acquire()
    finally:
        first.release()
    second.acquire()  # the first is gone: the database is free again
    second.release()
