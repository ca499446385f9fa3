"""Occurrences in the database: planning into rows, edits, pauses, quiet hours, downtime
and outcomes, on a real SQLite file (no broker, no clock: `now` is given)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session, select

from controller import deliveries as dm
from controller.county import County, seed
from controller.db import Database
from controller.models import Broadcast, Delivery, Media, Township
from controller.schedules import store
from controller.schedules.models import Occurrence, Schedule
from controller.schedules.plan import occurrence_id, to_ms
from dalaba import protocol as p
from tests.support import throwaway_postgres_url

TZ = "Asia/Shanghai"
SHA = "a" * 64
SHA2 = "b" * 64
HOUR = 3600_000


def local_ms(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> int:
    return to_ms(datetime.datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(TZ)))


NOW = local_ms(2026, 6, 1, 6, 0)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        yield from _database(f"sqlite:///{tmp_path / 'dalaba.db'}")
    else:
        for url in throwaway_postgres_url():
            yield from _database(url)


def _database(url: str) -> Iterator[Database]:
    database = Database(url)
    database.start()
    database.run_sync(lambda s: seed(s, County.for_size(20)))  # t01 (16 villages), t02 (4)

    def media(session: Session) -> None:
        for sha in (SHA, SHA2):
            session.add(
                Media(
                    sha256=sha,
                    mime="audio/ogg",
                    size=1000,
                    duration_ms=3000,
                    source="speech",
                    created_ms=0,
                )
            )

    database.run_sync(media)
    yield database
    database.stop()


def add_schedule(db: Database, sid: str = "sch-1", **kw: Any) -> Schedule:
    fields: dict[str, Any] = {
        "id": sid,
        "name": "防火提醒",
        "created_ms": NOW - HOUR,
        "created_by": "clerk",
        "updated_ms": NOW - HOUR,
        "updated_by": "clerk",
        "township_ids": ["t01"],
        "recurrence": {"kind": "daily", "times": ["07:00", "18:00"], "start_date": "2026-01-01"},
        "text": "天干物燥，小心火烛。",
        "media_sha256": SHA,
        "category": "fire_prevention",
        "priority": "notice",
        "targets": {"villages": ["t01-v01", "t01-v02"]},
        "target": p.Target(villages=("t01-v01", "t01-v02")).model_dump(mode="json"),
        "expires_in_s": 1800,
        "misfire_grace_s": 60,
    }
    fields.update(kw)
    row = Schedule(**fields)

    def insert(session: Session) -> Schedule:
        session.add(row)
        return row

    return db.run_sync(insert)


def edit(db: Database, sid: str, **kw: Any) -> None:
    def change(session: Session) -> None:
        row = session.get(Schedule, sid)
        assert row is not None
        for k, v in kw.items():
            setattr(row, k, v)
        row.version += 1
        row.updated_by = "editor"

    db.run_sync(change)


def reconcile(db: Database, now: int = NOW, hours: int = 72) -> store.Changes:
    def run(session: Session) -> store.Changes:
        return store.reconcile(
            session,
            list(session.exec(select(Schedule))),
            store.load_topology(session),
            start_ms=now,
            end_ms=now + hours * HOUR,
            guard_ms=5000,
            now=now,
            timezone=TZ,
        )

    return db.run_sync(run)


def rows(db: Database) -> list[Occurrence]:
    return db.run_sync(lambda s: list(s.exec(select(Occurrence).order_by(Occurrence.due_ms))))


def deliveries(db: Database, occ: str) -> dict[str, Delivery]:
    return db.run_sync(
        lambda s: {
            d.device_id: d for d in s.exec(select(Delivery).where(Delivery.broadcast_id == occ))
        }
    )


def broadcast(db: Database, occ: str) -> Broadcast:
    b = db.run_sync(lambda s: s.get(Broadcast, occ))
    assert b is not None
    return b


# ----------------------------------------------------------------------- planning


def test_occurrences_are_recorded_ahead_with_their_broadcast_and_deliveries(db: Database):
    add_schedule(db)
    changes = reconcile(db)
    found = rows(db)
    assert len(found) == 6 and changes.inserted == 6  # 07:00 and 18:00 for three days
    assert [o.due_ms for o in found[:2]] == [local_ms(2026, 6, 1, 7), local_ms(2026, 6, 1, 18)]
    first = found[0]
    assert first.id == occurrence_id("sch-1", first.due_ms) == first.broadcast_id
    assert first.outcome == "scheduled" and first.expires_at_ms == first.due_ms + 1_800_000
    b = broadcast(db, first.id)
    assert (b.status, b.start_at_ms, b.media_sha256) == ("scheduled", first.due_ms, SHA)
    states = {d: x.state for d, x in deliveries(db, first.id).items()}
    assert states == {"d-t01-v01-1": "scheduled", "d-t01-v02-1": "scheduled"}
    assert {j[0] for j in changes.jobs} == {o.id for o in found}
    assert changes.devices == {"d-t01-v01-1", "d-t01-v02-1"}

    # The same rules again: nothing new, nothing changed, nobody to tell.
    again = reconcile(db)
    assert (again.inserted, again.updated, again.cancelled) == (0, 0, 0)
    assert again.devices == set() and len(again.jobs) == 6


def test_pausing_cancels_coming_occurrences_and_resuming_revives_the_same_ones(db: Database):
    add_schedule(db)
    reconcile(db)
    ids = [o.id for o in rows(db)]
    edit(db, "sch-1", status="paused")
    changes = reconcile(db)
    assert changes.cancelled == 6 and set(changes.unjobs) == set(ids)
    assert all(
        o.outcome == "cancelled" and "paused by editor" in (o.reason or "") for o in rows(db)
    )
    assert broadcast(db, ids[0]).status == "cancelled"
    assert {d.state for d in deliveries(db, ids[0]).values()} == {"cancelled"}

    edit(db, "sch-1", status="active")
    changes = reconcile(db)
    assert changes.updated == 6 and {j[0] for j in changes.jobs} == set(ids)
    assert [o.id for o in rows(db)] == ids and {o.outcome for o in rows(db)} == {"scheduled"}
    assert broadcast(db, ids[0]).status == "scheduled"
    d = deliveries(db, ids[0])["d-t01-v01-1"]
    states = [t["state"] for t in db.run_sync(lambda s: dm.transitions_of(s, d))]
    assert states == ["scheduled", "cancelled", "scheduled"]


def test_an_edit_updates_coming_occurrences_in_place(db: Database):
    add_schedule(db)
    reconcile(db)
    first = rows(db)[0].id
    edit(
        db,
        "sch-1",
        text="秋冬季节，注意防火。",
        media_sha256=SHA2,
        target=p.Target(villages=("t01-v02", "t01-v03")).model_dump(mode="json"),
        recurrence={"kind": "daily", "times": ["07:00"], "start_date": "2026-01-01"},
    )
    changes = reconcile(db)
    by_id = {o.id: o for o in rows(db)}
    assert by_id[first].outcome == "scheduled" and by_id[first].schedule_version == 2
    assert broadcast(db, first).media_sha256 == SHA2
    states = {d: x.state for d, x in deliveries(db, first).items()}
    assert states == {
        "d-t01-v01-1": "cancelled",
        "d-t01-v02-1": "scheduled",
        "d-t01-v03-1": "scheduled",
    }
    evenings = [o for o in by_id.values() if o.due_ms == local_ms(2026, 6, 1, 18)]
    assert evenings[0].outcome == "cancelled" and "edit by editor" in (evenings[0].reason or "")
    assert changes.devices == {"d-t01-v01-1", "d-t01-v02-1", "d-t01-v03-1"}


def test_occurrences_about_to_fire_are_left_alone(db: Database):
    add_schedule(db)
    reconcile(db)
    edit(db, "sch-1", status="paused")
    reconcile(db, now=local_ms(2026, 6, 1, 7) - 3000)  # 07:00 is 3 s away (guard 5 s)
    outcomes = [o.outcome for o in rows(db)]
    assert outcomes[0] == "scheduled" and set(outcomes[1:]) == {"cancelled"}


def test_quiet_hours_suppress_and_are_recorded(db: Database):
    add_schedule(
        db, recurrence={"kind": "daily", "times": ["07:00", "22:30"], "start_date": "2026-01-01"}
    )
    reconcile(db)
    late = next(o for o in rows(db) if o.due_ms == local_ms(2026, 6, 1, 22, 30))

    def quiet(session: Session) -> None:
        t = session.get(Township, "t01")
        assert t is not None
        t.quiet_start, t.quiet_end = "22:00", "06:30"

    db.run_sync(quiet)
    changes = reconcile(db)
    row = next(o for o in rows(db) if o.id == late.id)
    assert row.outcome == "suppressed" and "quiet hours 22:00–06:30" in (row.reason or "")
    assert row.suppressed == {"t01": row.reason}
    assert late.id in changes.unjobs
    assert {d.state for d in deliveries(db, late.id).values()} == {"cancelled"}
    morning = next(o for o in rows(db) if o.due_ms == local_ms(2026, 6, 2, 7))
    assert morning.outcome == "scheduled"

    items = db.run_sync(lambda s: store.items_for_devices(s, ["d-t01-v01-1"], NOW, NOW + 72 * HOUR))
    assert late.id not in {i.occurrence_id for i in items["d-t01-v01-1"]}
    assert len(items["d-t01-v01-1"]) == 3  # the three mornings


# ----------------------------------------------------------------------- downtime


def test_downtime_fires_within_grace_and_records_the_rest_missed(db: Database):
    add_schedule(db, created_ms=local_ms(2026, 5, 1))
    back = (
        local_ms(
            2026,
            6,
            1,
            18,
            0,
        )
        + 30_000
    )  # 30 s after 18:00

    def run(session: Session) -> store.Changes:
        return store.record_downtime(
            session,
            list(session.exec(select(Schedule))),
            store.load_topology(session),
            down_since_ms=local_ms(2026, 6, 1, 6),
            now=back,
            timezone=TZ,
        )

    changes = db.run_sync(run)
    by_due = {o.due_ms: o for o in rows(db)}
    morning, evening = by_due[local_ms(2026, 6, 1, 7)], by_due[local_ms(2026, 6, 1, 18)]
    assert morning.outcome == "missed" and morning.broadcast_id is None
    assert "was not running at 2026-06-01 07:00:00" in (morning.reason or "")
    assert "grace of 60 s" in (morning.reason or "")
    assert evening.outcome == "scheduled" and evening.broadcast_id == evening.id
    assert changes.jobs == [(evening.id, evening.due_ms, 60)]
    assert db.run_sync(run).inserted == 0  # a second restart records nothing twice


def test_an_undispatched_occurrence_that_terminals_played_is_played_offline(db: Database):
    add_schedule(db)
    reconcile(db)
    occ = rows(db)[0]
    now = occ.due_ms - 3000
    db.run_sync(
        lambda s: store.record_fired(
            s,
            occ.id,
            fired_ms=now,
            start_at_ms=occ.due_ms,
            command_id="c1",
            published=False,
            note=None,
        )
    )
    (row,) = [o for o in rows(db) if o.id == occ.id]
    assert (row.outcome, row.dispatch) == ("fired", "failed")
    assert broadcast(db, occ.id).status == "active"
    # No terminal of this unit test ever came online: fired, they wait as `offline`.
    assert {d.state for d in deliveries(db, occ.id).values()} == {"offline"}

    def report(session: Session) -> list[str]:
        d = session.exec(
            select(Delivery)
            .where(Delivery.broadcast_id == occ.id)
            .where(Delivery.device_id == "d-t01-v01-1")
        ).one()
        for seq, state in enumerate(("received", "fetched", "playing", "done"), start=1):
            dm.apply(
                d,
                p.DeliveryState(state),
                dm.Cause.TERMINAL,
                now=occ.due_ms + 60_000,
                at=occ.due_ms + seq,
                seq=seq,
                extra={"offline": True},
            )
        session.flush()
        return store.settle_played_offline(session, [occ.id])

    assert db.run_sync(report) == [occ.id]
    (row,) = [o for o in rows(db) if o.id == occ.id]
    assert row.outcome == "played_offline"
    assert "1 terminal(s) played it from their local schedule" in (row.reason or "")


def test_a_missed_occurrence_stays_missed_until_a_terminal_says_it_played(db: Database):
    add_schedule(db)
    reconcile(db)
    occ = rows(db)[0]
    assert db.run_sync(lambda s: store.record_missed(s, occ.id, "controller was down"))
    assert not db.run_sync(lambda s: store.record_missed(s, occ.id, "again"))  # recorded once
    (row,) = [o for o in rows(db) if o.id == occ.id]
    assert (row.outcome, row.reason) == ("missed", "controller was down")
    assert db.run_sync(lambda s: store.settle_played_offline(s, [occ.id])) == []
    # The broadcast sweeper now expires what never played.
    assert broadcast(db, occ.id).status == "active"


def test_fire_plan_of_a_scheduled_occurrence_and_of_a_cancelled_broadcast(db: Database):
    add_schedule(db, priority="emergency", level=3)
    reconcile(db)
    first, second = rows(db)[:2]
    plan = db.run_sync(lambda s: store.load_fire_plan(s, first.id))
    assert plan is not None
    assert plan.body.broadcast_id == first.id and plan.body.start_at == first.due_ms
    assert plan.body.level == 3 and plan.body.volume == 100
    assert plan.target == p.Target(villages=("t01-v01", "t01-v02"))

    def cancel(session: Session) -> None:
        b = session.get(Broadcast, second.id)
        assert b is not None
        b.status, b.cancelled_by = "cancelled", "duty"

    db.run_sync(cancel)
    cancelled = db.run_sync(lambda s: store.load_fire_plan(s, second.id))
    assert cancelled is not None and cancelled.cancelled_by == "duty"
    db.run_sync(lambda s: store.record_cancelled(s, second.id, "broadcast cancelled by duty"))
    (row,) = [o for o in rows(db) if o.id == second.id]
    assert row.outcome == "cancelled" and row.reason == "broadcast cancelled by duty"
    assert db.run_sync(lambda s: store.load_fire_plan(s, second.id)) is None
