"""The ingestor against a real SQLite file: what a batch of device messages does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from controller import deliveries as dm
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
        s.add(dm.new_delivery("b1", DEVICE, p.DeliveryState.SENT, 0, session=s))

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


# ------------------------------------------------------------ acknowledgement after commit


class Acks:
    """Stands in for the broker's acknowledgement of each message (paho manual ack)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, name: str):  # type: ignore[no-untyped-def]
        return lambda: self.sent.append(name)


def telemetry(volume: int = 70, device: str = DEVICE) -> bytes:
    data = {
        "v": 1, "device_id": device, "at": p.now_ms(), "firmware": "x", "uptime_s": 1,
        "amplifier_on": False, "amplifier_ok": True, "speaker_line_ok": True,
        "power_source": "mains", "temperature_c": 20.0, "signal_dbm": -70, "volume": volume,
        "cache_bytes": 0, "cache_items": 0, "interval_s": 10,
    }  # fmt: skip
    import json

    return json.dumps(data).encode()


async def test_reports_are_acknowledged_only_after_they_are_committed(db):
    ingestor = Ingestor(db)
    acks = Acks()
    ingestor.submit(DEVICE, "ack", ack("received", 1), acks("received"))
    ingestor.submit(DEVICE, "ack", b"{garbage", acks("garbage"))
    ingestor.submit(DEVICE, "ack", ack("done", 2), acks("done"))
    assert acks.sent == []  # nothing stored yet: a crash now leaves all three with the broker
    await ingestor.flush()
    assert acks.sent == ["received", "garbage", "done"]  # in arrival order
    assert delivery_state(db) == "done"


async def test_when_the_database_fails_nothing_is_acknowledged_and_nothing_is_lost(db):
    from controller.ingest import DatabaseUnavailable

    ingestor = Ingestor(db)
    acks = Acks()
    real_run = db.run

    async def broken(fn):  # type: ignore[no-untyped-def]
        raise OSError("disk gone")

    db.run = broken  # type: ignore[method-assign]
    ingestor.submit(DEVICE, "ack", ack("done", 2), acks("done"))
    with pytest.raises(DatabaseUnavailable):
        await ingestor.flush()
    assert acks.sent == []
    db.run = real_run  # type: ignore[method-assign]
    await ingestor.flush()  # the report waited in the ingestor (and with the broker)
    assert acks.sent == ["done"]
    assert delivery_state(db) == "done"


async def test_one_unstorable_report_is_isolated_and_the_rest_are_stored(db, monkeypatch):
    ingestor = Ingestor(db)
    acks = Acks()
    original = Ingestor._apply_telemetry

    def explode_on_13(self, session, device, t, rx):  # type: ignore[no-untyped-def]
        if t.volume == 13:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return original(self, session, device, t, rx)

    monkeypatch.setattr(Ingestor, "_apply_telemetry", explode_on_13)
    ingestor.submit(DEVICE, "ack", ack("received", 1), acks("received"))
    ingestor.submit(DEVICE, "telemetry", telemetry(volume=13), acks("poison"))
    ingestor.submit(DEVICE, "ack", ack("playing", 2), acks("playing"))
    ingestor.submit(DEVICE, "ack", ack("done", 3), acks("done"))
    await ingestor.flush()
    assert delivery_state(db) == "done"
    assert acks.sent == ["received", "poison", "playing", "done"]
    assert ingestor.counters["dropped_unstorable"] == 1
    events = db.run_sync(lambda s: s.exec(select(SecurityEvent)).all())
    assert [(e.device_id, e.kind) for e in events] == [(DEVICE, "bad_report")]
    assert "telemetry: unstorable" in (events[0].reason or "")


async def test_out_of_range_numbers_are_dropped_at_the_door_and_recorded(db):
    ingestor = Ingestor(db)
    acks = Acks()
    ingestor.submit(DEVICE, "telemetry", telemetry(volume=2**70), acks("huge"))
    ingestor.submit(DEVICE, "ack", ack("done", 2), acks("done"))
    await ingestor.flush()
    assert delivery_state(db) == "done"
    assert acks.sent == ["huge", "done"]
    assert ingestor.counters["dropped_malformed"] == 1
    events = db.run_sync(lambda s: s.exec(select(SecurityEvent)).all())
    assert [e.kind for e in events] == ["bad_report"]


# ------------------------------------------------------------------------------ liveness


def device_row(db: Database) -> Device:
    return db.run_sync(lambda s: s.get(Device, DEVICE))


async def test_a_silent_terminal_is_shown_offline_and_its_waiting_deliveries_too(db):
    ingestor = Ingestor(db, liveness_intervals=3, default_telemetry_interval_s=60)
    ingestor.submit(DEVICE, "telemetry", telemetry())  # interval_s=10, and it is alive
    await ingestor.flush()
    row = device_row(db)
    assert row.online and row.telemetry_interval_s == 10
    heard = row.last_seen_ms
    assert heard is not None

    # 29 s of silence is within three 10 s intervals; 31 s is not.
    assert db.run_sync(lambda s: ingestor.sweep_silent(s, heard + 29_000)) == []
    events = db.run_sync(lambda s: ingestor.sweep_silent(s, heard + 31_000))
    assert not device_row(db).online
    assert delivery_state(db) == "offline"
    kinds = sorted(type(e).__name__ for e in events)
    assert kinds == ["DeliveryChanged", "DeviceLiveness"]

    # Whatever it says next proves it alive, and what waited on it is `sent` again.
    ingestor.submit(DEVICE, "telemetry", telemetry())
    await ingestor.flush()
    assert device_row(db).online
    assert delivery_state(db) == "sent"


def ack_at(state: str, seq: int, at: int) -> bytes:
    return p.DeliveryReport(
        device_id=DEVICE,
        broadcast_id="b1",
        command_id="c1",
        state=p.DeliveryState(state),
        at=at,
        seq=seq,
    ).to_bytes()


async def test_history_keeps_a_late_report_in_its_place_and_a_duplicate_once(db):
    """Two replicas (or a reconnect) can store `fetched` after `playing`: the state stays
    `playing`, and the history still has `fetched`, ordered by when it happened. The
    broker's redelivery of a stored report adds nothing. The counts follow the state."""
    ingestor = Ingestor(db)
    t = p.now_ms()
    ingestor.submit(DEVICE, "ack", ack_at("received", 10, t + 1))
    ingestor.submit(DEVICE, "ack", ack_at("playing", 12, t + 3))
    await ingestor.flush()
    ingestor.submit(DEVICE, "ack", ack_at("fetched", 11, t + 2))  # late
    ingestor.submit(DEVICE, "ack", ack_at("playing", 12, t + 3))  # a redelivery
    await ingestor.flush()
    assert delivery_state(db) == "playing"
    d = db.run_sync(lambda s: s.exec(select(Delivery)).one())
    history = db.run_sync(lambda s: dm.transitions_of(s, d))
    assert [h["state"] for h in history] == ["sent", "received", "fetched", "playing"]
    counts = db.run_sync(lambda s: dm.counts(s, ["b1"]))["b1"]
    assert counts == {"playing": 1, dm.REACHED: 1}


async def test_a_batch_that_loses_a_deadlock_to_another_replica_is_written_again_whole(
    db, monkeypatch
):
    """PostgreSQL aborts one of two replicas' batches that wait on each other's rows
    (SQLSTATE 40P01). Nothing is wrong with those reports: the batch runs again, and no
    report is quarantined as unstorable."""
    import psycopg.errors

    ingestor = Ingestor(db)
    acks = Acks()
    original = Ingestor._write
    failures = iter([psycopg.errors.DeadlockDetected("deadlock detected")])

    def lose_once(self, session, batch):  # type: ignore[no-untyped-def]
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return original(self, session, batch)

    monkeypatch.setattr(Ingestor, "_write", lose_once)
    ingestor.submit(DEVICE, "ack", ack("received", 1), acks("received"))
    ingestor.submit(DEVICE, "ack", ack("done", 2), acks("done"))
    await ingestor.flush()
    assert delivery_state(db) == "done"
    assert acks.sent == ["received", "done"]
    assert ingestor.counters["batches_retried"] == 1
    assert ingestor.counters["dropped_unstorable"] == 0
