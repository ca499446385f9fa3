"""The ingestor against a real SQLite file: what a batch of device messages does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from controller.db import Database
from controller.ingest import Ingestor
from controller.models import Broadcast, Delivery, Device, Media, SecurityEvent, Township, Village
from dalaba import protocol as p

DEVICE = "d-t01-v01-1"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'test.db'}")
    database.start()

    def seed(s):  # type: ignore[no-untyped-def]
        s.add(Township(id="t01", name="城关镇", lat=0, lon=0))
        s.flush()
        s.add(Village(id="t01-v01", township_id="t01", name="东坪村", lat=0, lon=0))
        s.flush()
        s.add(Device(id=DEVICE, village_id="t01-v01", township_id="t01", name="东坪村"))
        s.add(
            Media(
                sha256="a" * 64,
                mime="audio/ogg",
                size=1,
                duration_ms=1,
                source="speech",
                created_ms=0,
            )
        )
        s.flush()
        s.add(
            Broadcast(
                id="b1",
                created_ms=0,
                created_by="x",
                media_sha256="a" * 64,
                category="flood",
                priority="notice",
                targets={},
                target={},
                start_at_ms=0,
                expires_at_ms=p.now_ms() + 60_000,
                command_id="c1",
            )
        )
        s.flush()
        s.add(
            Delivery(
                broadcast_id="b1",
                device_id=DEVICE,
                updated_ms=0,
                transitions=[{"state": "sent", "at": 0}],
            )
        )

    database.run_sync(seed)
    yield database
    database.stop()


def ack(state: str, seq: int) -> bytes:
    return p.DeliveryReport(
        device_id=DEVICE,
        broadcast_id="b1",
        command_id="c1",
        state=p.DeliveryState(state),
        at=p.now_ms(),
        seq=seq,
    ).to_bytes()


def rejection(reason: str, command_id: str = "c1") -> bytes:
    return p.DeviceEvent(
        device_id=DEVICE,
        kind=p.EventKind.COMMAND_REJECTED,
        at=p.now_ms(),
        reason=reason,
        command_id=command_id,
        broadcast_id="b1",
    ).to_bytes()


def delivery_state(db: Database) -> str:
    return db.run_sync(lambda s: s.exec(select(Delivery)).one().state)


async def test_a_replay_report_in_the_same_batch_does_not_settle_the_delivery(db):
    ingestor = Ingestor(db)
    # A broker duplicate: the terminal reports "replayed" next to its real progress.
    ingestor.submit(DEVICE, "event", rejection("replayed"))
    ingestor.submit(DEVICE, "ack", ack("received", 1))
    ingestor.submit(DEVICE, "event", rejection("bad_signature"))
    ingestor.submit(DEVICE, "ack", ack("done", 2))
    await ingestor.flush()
    assert delivery_state(db) == "done"
    events = db.run_sync(lambda s: s.exec(select(SecurityEvent)).all())
    assert sorted(e.reason for e in events) == ["bad_signature", "replayed"]
    assert all(e.known_command for e in events)


async def test_a_genuine_command_refused_as_expired_ends_the_delivery(db):
    ingestor = Ingestor(db)
    ingestor.submit(DEVICE, "event", rejection("expired"))
    await ingestor.flush()
    assert delivery_state(db) == "expired"


async def test_a_forged_command_id_changes_nothing(db):
    ingestor = Ingestor(db)
    ingestor.submit(DEVICE, "event", rejection("expired", command_id="never-issued"))
    await ingestor.flush()
    assert delivery_state(db) == "sent"


async def test_garbage_and_impostors_are_counted_and_dropped(db):
    ingestor = Ingestor(db)
    ingestor.submit(DEVICE, "ack", b"{not json")
    ingestor.submit(DEVICE, "ack", b"x" * (p.MAX_REPORT_BYTES + 1))
    ingestor.submit(DEVICE, "whatever", b"{}")
    # A payload claiming to be another terminal than the topic's.
    ingestor.submit("d-t01-v02-1", "ack", ack("done", 5))
    # A terminal the database does not know.
    other = p.DeviceStatus(device_id="d-unknown", online=True, at=1).to_bytes()
    ingestor.submit("d-unknown", "status", other)
    await ingestor.flush()
    assert ingestor.counters["dropped"] == 5
    assert ingestor.counters["dropped_device_mismatch"] == 1
    assert ingestor.counters["dropped_unknown_device"] == 1
    assert delivery_state(db) == "sent"
