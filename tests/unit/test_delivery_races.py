"""Two writers of the same delivery at once, on PostgreSQL (where the controller has
several database threads and READ COMMITTED): the second must not overwrite the first's
move with one decided from the state before it (controller.deliveries.for_update).

Each race is made deterministic: writer A moves the delivery and keeps its transaction
open; writer B starts in a thread and is let run until PostgreSQL shows it waiting on a
lock; then A commits and B finishes. Without the locking rule B has read the old state
before A committed and writes its move over A's (the lost updates seen in the schedule
and power-cut tests: a played delivery ended `sent`, `offline` or `expired`).
SQLite has one writer at a time (one database thread), so these are PostgreSQL's only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from controller import deliveries as dm
from controller.broadcasts import sweep_expired
from controller.db import Database
from controller.ingest import Ingestor, _release_offline
from controller.models import Broadcast, Delivery, Device, Media, Township, Village
from dalaba import protocol as p

pytestmark = pytest.mark.postgres

DEVICE = "d-t01-v01-1"
LONG_AGO = 1_000  # ms since the epoch: far beyond any liveness window


@pytest.fixture
def db(pg_database: Database) -> Database:
    return pg_database


def seed(db: Database, state: p.DeliveryState, *, expires_at_ms: int, online: bool) -> None:
    def run(s: Session) -> None:
        s.add(Township(id="t01", name="城关镇", lat=0, lon=0))
        s.flush()
        s.add(Village(id="t01-v01", township_id="t01", name="东坪村", lat=0, lon=0))
        s.flush()
        s.add(
            Device(
                id=DEVICE,
                village_id="t01-v01",
                township_id="t01",
                name="东坪村",
                online=online,
                last_seen_ms=LONG_AGO,
                status_changed_ms=LONG_AGO,
            )
        )
        s.add(
            Media(
                sha256="a" * 64, mime="audio/ogg", size=1, duration_ms=1, source="speech",
                created_ms=0,
            )
        )  # fmt: skip
        s.flush()
        s.add(
            Broadcast(
                id="b1", created_ms=0, created_by="x", media_sha256="a" * 64, category="flood",
                priority="notice", targets={}, target={}, start_at_ms=0,
                expires_at_ms=expires_at_ms, command_id="c1", status="active",
            )
        )  # fmt: skip
        s.flush()
        s.add(dm.new_delivery("b1", DEVICE, state, LONG_AGO, session=s))

    db.run_sync(run)


def report_done(ingestor: Ingestor, seq: int = 1) -> None:
    report = p.DeliveryReport(
        device_id=DEVICE, broadcast_id="b1", command_id="c1", state=p.DeliveryState.DONE,
        at=p.now_ms(), seq=seq, offline=True,
    )  # fmt: skip
    ingestor.submit(DEVICE, "ack", report.to_bytes())


def lock_waiters(db: Database) -> int:
    with db.session() as s:
        return int(
            s.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def race(db: Database, first: Callable[[Session], Any], second: Callable[[Session], Any]) -> None:
    """`first` runs and holds its transaction open (flushed) until `second`, started in
    a thread, waits on a row lock; then `first` commits and `second` finishes."""
    failure: list[BaseException] = []

    def run_second() -> None:
        try:
            db.run_sync(second)
        except BaseException as exc:  # reported in the test's thread
            failure.append(exc)

    with db.session() as a:
        first(a)
        a.flush()
        thread = threading.Thread(target=run_second)
        thread.start()
        deadline = time.monotonic() + 30
        # Either it waits on A's lock, or it did not need the row at all and finished.
        while lock_waiters(db) == 0 and thread.is_alive():
            assert time.monotonic() < deadline, "the second writer neither waited nor ended"
            time.sleep(0.02)
        a.commit()
    thread.join(30)
    assert not thread.is_alive()
    if failure:
        raise failure[0]


def delivery(db: Database) -> tuple[str, list[str]]:
    def read(s: Session) -> tuple[str, list[str]]:
        d = s.exec(select(Delivery)).one()
        return d.state, [t["state"] for t in dm.transitions_of(s, d)]

    return db.run_sync(read)


def counts(db: Database) -> dict[str, int]:
    return db.run_sync(lambda s: dm.counts(s, ["b1"])["b1"])


def test_liveness_does_not_undo_a_report_the_ingest_batch_is_committing(db: Database) -> None:
    # The terminal was silent (broker down) and its reports of what it played arrive
    # just as liveness gives up on it.
    seed(db, p.DeliveryState.SENT, expires_at_ms=p.now_ms() + 600_000, online=True)
    ingestor = Ingestor(db)
    # As if this controller had run for long: silence is counted from its start at the
    # earliest, and this terminal's last word was long ago.
    ingestor._started_ms = LONG_AGO
    report_done(ingestor)
    batch = list(ingestor._queue)
    race(db, lambda s: ingestor._write(s, batch), lambda s: ingestor.sweep_silent(s))
    state, states = delivery(db)
    assert state == "done", states
    assert states == ["sent", "done"]
    # The batch heard from it: liveness read its last_seen again, locked, and left it be.
    assert db.run_sync(lambda s: s.get(Device, DEVICE).online)  # type: ignore[union-attr]
    assert counts(db) == {"done": 1, dm.REACHED: 1}


def test_the_expiry_sweep_does_not_undo_a_report_the_ingest_batch_is_committing(
    db: Database,
) -> None:
    seed(db, p.DeliveryState.OFFLINE, expires_at_ms=p.now_ms() - 1, online=True)
    ingestor = Ingestor(db)
    report_done(ingestor)
    batch = list(ingestor._queue)
    race(db, lambda s: ingestor._write(s, batch), lambda s: sweep_expired(s))
    state, states = delivery(db)
    assert state == "done", states
    assert states == ["offline", "done"]
    assert counts(db) == {"done": 1, dm.REACHED: 1}


def test_a_terminal_back_online_does_not_undo_the_expiry_sweep(db: Database) -> None:
    seed(db, p.DeliveryState.OFFLINE, expires_at_ms=p.now_ms() - 1, online=True)

    def back_online(s: Session) -> None:
        device = s.get(Device, DEVICE)
        assert device is not None
        _release_offline(s, device, p.now_ms())

    race(db, lambda s: sweep_expired(s), back_online)
    state, states = delivery(db)
    assert state == "expired", states
    assert states == ["offline", "expired"]
    assert counts(db) == {"expired": 1}
