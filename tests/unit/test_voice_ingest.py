"""The ingestor and issue 12's reports: a `silent` ending with its seconds, and `call`
events kept as call records, a malformed one counted and dropped without the others."""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from controller import deliveries as dm
from controller.db import Database
from controller.ingest import Ingestor
from controller.models import Delivery
from controller.phone import PhoneCall
from dalaba import protocol as p
from tests.unit import test_ingest_batch as batch

db = batch.db  # the same seeded county: one terminal, one broadcast sent to it
DEVICE = batch.DEVICE


def call(**detail: Any) -> bytes:
    return p.DeviceEvent(
        device_id=DEVICE,
        kind=p.EventKind.CALL,
        at=p.now_ms(),
        reason=str(detail.get("outcome")),
        detail=detail,
    ).to_bytes()


async def test_a_silent_ending_is_kept_with_the_seconds_not_heard(db: Database) -> None:
    ingestor = Ingestor(db)
    ingestor.submit(DEVICE, "ack", batch.ack("playing", 1))
    report = p.DeliveryReport(
        device_id=DEVICE,
        broadcast_id="b1",
        command_id="c1",
        state=p.DeliveryState.SILENT,
        at=p.now_ms(),
        seq=2,
        reason="no sound on the speaker line for 4.2 s from 1.3 s (speaker_line)",
        offset_ms=1_300,
        silent_ms=4_200,
    )
    ingestor.submit(DEVICE, "ack", report.to_bytes())
    await ingestor.flush()
    delivery = db.run_sync(lambda s: s.exec(select(Delivery)).one())
    assert delivery.state == "silent" and delivery.reason == report.reason
    last = db.run_sync(lambda s: dm.transitions_of(s, delivery))[-1]
    assert (last["silent_ms"], last["offset_ms"]) == (4_200, 1_300)
    # Final and the terminal's own word: a late `done` for the same attempt cannot undo it.
    ingestor.submit(DEVICE, "ack", batch.ack("done", 3))
    await ingestor.flush()
    assert db.run_sync(lambda s: s.exec(select(Delivery)).one().state) == "silent"


async def test_calls_are_recorded_and_a_malformed_one_is_dropped_alone(db: Database) -> None:
    ingestor = Ingestor(db)
    now = p.now_ms()
    played = call(
        caller="13800138000", outcome="played", rang_at=now - 9_000, ended_at=now, played_ms=8_000
    )
    ingestor.submit(DEVICE, "event", played)
    ingestor.submit(DEVICE, "event", call(caller=12345, outcome="played"))  # not a caller
    ingestor.submit(DEVICE, "event", call(caller="13900139000", outcome="teleported"))
    ingestor.submit(DEVICE, "event", call(caller="", outcome="rejected"))  # withheld
    await ingestor.flush()
    rows = db.run_sync(lambda s: list(s.exec(select(PhoneCall).order_by(PhoneCall.id)).all()))
    assert [(r.caller, r.outcome, r.played_ms) for r in rows] == [
        ("13800138000", "played", 8_000),
        ("", "rejected", 0),
    ]
    assert rows[0].rang_at_ms == now - 9_000 and rows[0].township_id == "t01"
    assert ingestor.counters["call_events_malformed"] == 2
