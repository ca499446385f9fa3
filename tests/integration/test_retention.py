"""The retention job on real SQLite and PostgreSQL: over generated data spanning years,
it rolls raw telemetry into hours and hours into days (the figures computed again here,
independently), deletes what the default policy keeps no longer, and leaves everything
else exactly as it was; run again it does nothing; stopped half-way and run again, it
counts nothing twice."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert
from sqlmodel import Session, SQLModel, select

from controller import deliveries as dm
from controller.approvals import PendingBroadcast
from controller.db import Database
from controller.history import FaultEpisode, OnlineInterval, TelemetryRollup, WorkOrder
from controller.models import (
    AuditEntry,
    Broadcast,
    BroadcastCount,
    Delivery,
    DeliveryTransition,
    Device,
    Media,
    SecurityEvent,
    TelemetrySample,
    Township,
    Village,
)
from controller.retention import RetentionJob, RetentionPolicy, apply_retention, plan
from controller.schedules.models import Occurrence, Schedule
from controller.settings import Settings
from dalaba import protocol as p
from tests.support import throwaway_postgres_url

pytestmark = pytest.mark.timeout(240)

ZONE = ZoneInfo("Asia/Shanghai")  # UTC+8 all year: local hours and days computed by hand
OFFSET = 8 * 3600 * 1000
NOW = int(dt.datetime(2026, 11, 30, 10, 17, 23, tzinfo=ZONE).timestamp() * 1000)
H = 3600 * 1000
DAY = 24 * H
YEAR = 365 * DAY
DEVICES = ("d-1", "d-2", "d-3")
POLICY = RetentionPolicy(batch_size=50)  # the defaults, in small batches
# Either side of the five years broadcasts and history are kept.
OLD, KEPT = NOW - POLICY.broadcast_days * DAY - DAY, NOW - POLICY.broadcast_days * DAY + DAY


def local_hour(ms: int) -> int:
    return ms - ms % H


def local_day(ms: int) -> int:
    return (ms + OFFSET) // DAY * DAY - OFFSET


# ------------------------------------------------------------------ databases


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dalaba.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> Iterator[Database]:
    if request.param == "sqlite":
        url = str(request.getfixturevalue("sqlite_url"))
        database = Database(url)
        database.start()
        yield database
        database.stop()
        return
    for url in throwaway_postgres_url():
        database = Database(url)
        database.start()
        try:
            yield database
        finally:
            database.stop()


# ------------------------------------------------------------------ generated county


def sample(i: int, device: int) -> dict[str, Any]:
    data: dict[str, Any] = {
        "at": 0,
        "firmware": f"1.{i // 1000}",
        "temperature_c": 15.5 + (i * 7 + device) % 23,
        "signal_dbm": -60 - (i * 3 + device) % 29,
        "volume": 70,
        "faults": ["on_battery"] if (i + device) % 97 == 0 else [],
    }
    if i % 5:  # mains-only terminals report no battery level
        data["battery_pct"] = 40 + i % 61
    return data


def seed(db: Database) -> dict[str, Any]:
    """Rows of every kind the policy touches, on both sides of each cutoff."""
    samples = []
    for d, device in enumerate(DEVICES):
        for i, at in enumerate(range(NOW - 9 * DAY, NOW, 300_000)):
            data = sample(i, d)
            data["at"] = at
            samples.append({"device_id": device, "at_ms": at, "data": data})
    hourly = []
    for d, device in enumerate(DEVICES):
        for hour in range(local_hour(NOW - 95 * DAY), local_hour(NOW - 85 * DAY), H):
            hourly.append(
                {
                    "device_id": device,
                    "period": "hour",
                    "start_ms": hour,
                    "samples": 12,
                    "data": {
                        "temperature_c": {"min": 10.0 + d, "max": 20.0 + hour % 7, "avg": 15.0,
                                          "n": 12},
                        "signal_dbm": {"min": -90, "max": -60, "avg": -75.5, "n": 12},
                        "faults": ["clock"] if hour % 5 == 0 else [],
                        "firmware": "1.0",
                    },
                }
            )  # fmt: skip
    daily = [
        {"device_id": "d-1", "period": "day", "start_ms": local_day(NOW - 6 * YEAR),
         "samples": 288, "data": {}},
        {"device_id": "d-1", "period": "day", "start_ms": local_day(NOW - 4 * YEAR),
         "samples": 288, "data": {}},
    ]  # fmt: skip
    old, kept = OLD, KEPT

    def write(s: Session) -> None:
        s.add(Township(id="t1", name="城关镇", lat=0, lon=0))
        s.flush()
        s.add(Village(id="v1", township_id="t1", name="东坪村", lat=0, lon=0))
        s.flush()
        for device in DEVICES:
            s.add(Device(id=device, village_id="v1", township_id="t1", name=device))
        s.add(Media(sha256="a" * 64, mime="audio/ogg", size=1, duration_ms=1, source="speech",
                    created_ms=0))  # fmt: skip
        s.flush()
        for bid, expires in (("b-old", old), ("b-kept", kept), ("b-new", NOW)):
            s.add(Broadcast(id=bid, created_ms=expires - H, created_by="x", media_sha256="a" * 64,
                            category="flood", priority="notice", targets={}, target={},
                            start_at_ms=expires - H, expires_at_ms=expires,
                            status="finished"))  # fmt: skip
        s.flush()
        for bid in ("b-old", "b-kept", "b-new"):
            for device in DEVICES:
                s.add(dm.new_delivery(bid, device, p.DeliveryState.SENT, 0, session=s))
        s.add(Schedule(id="s1", name="早间新闻", created_ms=0, created_by="x", updated_ms=0,
                       updated_by="x", recurrence={}, media_sha256="a" * 64, category="news",
                       priority="routine", targets={}, target={}, expires_in_s=600,
                       misfire_grace_s=60))  # fmt: skip
        s.flush()
        for oid, due, outcome in (("o-old", old, "fired"), ("o-old-waiting", old + 1, "scheduled"),
                                  ("o-kept", kept, "fired")):  # fmt: skip
            s.add(Occurrence(id=oid, schedule_id="s1", due_ms=due, expires_at_ms=due + H,
                             outcome=outcome, created_ms=due, updated_ms=due))  # fmt: skip
        for pid, created, status in (("p-old", old, "approved"), ("p-old-open", old, "pending"),
                                     ("p-kept", kept, "rejected")):  # fmt: skip
            s.add(PendingBroadcast(id=pid, created_ms=created, expires_ms=created + H,
                                   requested_by="x", requested_role="duty_officer", status=status,
                                   body={}, media_sha256="a" * 64))  # fmt: skip
        s.add(AuditEntry(at_ms=NOW - 10 * YEAR, actor="x", role="admin", action="login"))
        for at in (NOW - 4 * YEAR, NOW - 2 * YEAR):
            s.add(SecurityEvent(at_ms=at, device_id="d-1", kind="bad_report"))
        for start, end in ((old - DAY, old), (old, None), (kept - DAY, kept)):
            s.add(OnlineInterval(device_id="d-1", village_id="v1", township_id="t1",
                                 start_ms=start, end_ms=end))  # fmt: skip
            s.add(FaultEpisode(device_id="d-2", village_id="v1", township_id="t1",
                               fault="amplifier", start_ms=start, end_ms=end))  # fmt: skip
        for status, closed in (("closed", old), ("closed", kept), ("open", None),
                               ("fault_cleared", None)):  # fmt: skip
            s.add(WorkOrder(device_id="d-3", village_id="v1", township_id="t1",
                            fault="speaker_line", status=status, opened_ms=old - DAY,
                            closed_ms=closed))  # fmt: skip
        s.exec(insert(TelemetrySample), params=samples)  # type: ignore[call-overload]
        s.exec(insert(TelemetryRollup), params=hourly + daily)  # type: ignore[call-overload]

    db.run_sync(write)
    return {"samples": samples, "hourly": hourly}


# ------------------------------------------------------------------ what must result


def expected_hourly(samples: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Hourly rollups of the raw samples older than seven days (whole hours), by hand."""
    cutoff = local_hour(NOW - 7 * DAY)
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in samples:
        if row["at_ms"] < cutoff:
            groups[(row["device_id"], local_hour(row["at_ms"]))].append(row["data"])
    out = {}
    for key, datas in groups.items():
        temps = [x["temperature_c"] for x in datas]
        batteries = [x["battery_pct"] for x in datas if "battery_pct" in x]
        out[key] = {
            "samples": len(datas),
            "temperature_c": (min(temps), max(temps), round(sum(temps) / len(temps), 2)),
            "battery_n": len(batteries),
            "faults": sorted({f for x in datas for f in x["faults"]}),
            "firmware": max(datas, key=lambda x: x["at"])["firmware"],
        }
    return out


def expected_daily(hourly: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    cutoff = local_day(NOW - 90 * DAY)
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in hourly:
        if row["start_ms"] < cutoff:
            groups[(row["device_id"], local_day(row["start_ms"]))].append(row)
    return {
        key: {
            "samples": sum(r["samples"] for r in rows),
            "temperature_max": max(r["data"]["temperature_c"]["max"] for r in rows),
            "temperature_min": min(r["data"]["temperature_c"]["min"] for r in rows),
            "signal_avg": -75.5,
            "faults": sorted({f for r in rows for f in r["data"]["faults"]}),
        }
        for key, rows in groups.items()
    }


def table(db: Database, model: type[SQLModel], key: str = "id") -> set[Any]:
    return set(db.run_sync(lambda s: s.exec(select(getattr(model, key))).all()))


def rollups(db: Database, period: str) -> dict[tuple[str, int], TelemetryRollup]:
    rows = db.run_sync(
        lambda s: s.exec(select(TelemetryRollup).where(TelemetryRollup.period == period)).all()
    )
    return {(r.device_id, r.start_ms): r for r in rows}


def check_the_result(db: Database, seeded: dict[str, Any]) -> None:
    samples, hourly = seeded["samples"], seeded["hourly"]
    raw_cutoff = local_hour(NOW - 7 * DAY)
    kept_samples = {(r["device_id"], r["at_ms"]) for r in samples if r["at_ms"] >= raw_cutoff}
    rows = db.run_sync(lambda s: s.exec(select(TelemetrySample)).all())
    assert {(r.device_id, r.at_ms) for r in rows} == kept_samples

    want_hours = expected_hourly(samples)
    got_hours = rollups(db, "hour")
    day_cutoff = local_day(NOW - 90 * DAY)
    untouched = {(r["device_id"], r["start_ms"]) for r in hourly if r["start_ms"] >= day_cutoff}
    assert set(got_hours) == set(want_hours) | untouched
    for key, want in want_hours.items():
        got = got_hours[key]
        temperature = got.data["temperature_c"]
        assert got.samples == want["samples"]
        assert (temperature["min"], temperature["max"], temperature["avg"]) == want["temperature_c"]
        assert got.data["battery_pct"]["n"] == want["battery_n"] < want["samples"]
        assert "n" not in temperature  # every sample had one
        assert got.data["faults"] == want["faults"]
        assert got.data["firmware"] == want["firmware"]
    assert any(w["faults"] for w in want_hours.values())
    # Every hour whole (12 samples at 300 s) but the first, which the data starts in.
    assert sorted({w["samples"] for w in want_hours.values()}) == [9, 12]

    want_days = expected_daily(hourly)
    got_days = rollups(db, "day")
    kept_daily = {("d-1", local_day(NOW - 4 * YEAR))}
    assert set(got_days) == set(want_days) | kept_daily
    for key, want in want_days.items():
        got = got_days[key]
        assert got.samples == want["samples"]
        assert got.data["temperature_c"]["max"] == want["temperature_max"]
        assert got.data["temperature_c"]["min"] == want["temperature_min"]
        assert got.data["signal_dbm"]["avg"] == want["signal_avg"]
        assert got.data["faults"] == want["faults"]
    assert sum(r.samples for r in got_days.values()) == 288 + sum(
        w["samples"] for w in want_days.values()
    )

    assert table(db, Broadcast) == {"b-kept", "b-new"}
    assert table(db, Delivery, "broadcast_id") == {"b-kept", "b-new"}
    assert len(table(db, Delivery)) == 6
    # A delivery's history and its broadcast's counts go with it.
    assert table(db, DeliveryTransition, "broadcast_id") == {"b-kept", "b-new"}
    assert len(table(db, DeliveryTransition)) == 6
    assert table(db, BroadcastCount, "broadcast_id") == {"b-kept", "b-new"}
    assert table(db, Occurrence) == {"o-old-waiting", "o-kept"}
    assert table(db, PendingBroadcast) == {"p-old-open", "p-kept"}
    assert len(table(db, AuditEntry)) == 1  # the audit log is kept for ever by default
    assert table(db, SecurityEvent, "at_ms") == {NOW - 2 * YEAR}
    # Closed more than five years ago: gone; still open, or closed since: kept.
    assert table(db, OnlineInterval, "start_ms") == {OLD, KEPT - DAY}
    assert table(db, FaultEpisode, "start_ms") == {OLD, KEPT - DAY}
    assert table(db, WorkOrder, "status") == {"closed", "open", "fault_cleared"}
    assert len(table(db, WorkOrder)) == 3


# ------------------------------------------------------------------ the tests


async def test_the_daily_job_keeps_what_the_policy_keeps_and_nothing_else(db: Database):
    seeded = seed(db)
    job = RetentionJob(db, POLICY)
    counts = await job.run_once(NOW)
    check_the_result(db, seeded)
    rolled = [r for r in seeded["samples"] if r["at_ms"] < local_hour(NOW - 7 * DAY)]
    assert counts["telemetry_raw_deleted"] == len(rolled) > 0
    assert counts["deliveries_deleted"] == 3 and counts["broadcasts_deleted"] == 1
    # Run again: nothing left to do, nothing changed.
    again = await job.run_once(NOW)
    assert set(again.values()) == {0}
    check_the_result(db, seeded)


def test_a_run_stopped_half_way_counts_nothing_twice(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    db.start()
    try:
        seeded = seed(db)
        policy = RetentionPolicy(batch_size=10)
        counts: Counter[str] = Counter()
        raw_to_hourly = next(plan(policy, NOW, counts))
        with db.session() as session:
            # Until the first hour's rollups are written and some of its samples deleted:
            # then the controller stops (the job's state in memory is lost).
            while counts["telemetry_raw_deleted"] == 0:
                assert raw_to_hourly(session)
                session.commit()
        assert counts["telemetry_raw_written"] == 3 and counts["telemetry_raw_deleted"] == 10
        with db.session() as session:
            apply_retention(session, NOW, policy)
        check_the_result(db, seeded)
    finally:
        db.stop()


def test_the_job_runs_at_the_configured_local_hour() -> None:
    job = RetentionJob(Database("sqlite://"), RetentionPolicy(), hour=3)
    at = int(dt.datetime(2026, 11, 30, 2, 59, 59, tzinfo=ZONE).timestamp() * 1000)
    assert job.seconds_until_next(at) == 1
    assert job.seconds_until_next(at + 1000) == 24 * 3600
    assert job.seconds_until_next(at + 1000 + 3600 * 1000) == 23 * 3600


def test_a_policy_that_would_drop_rollups_before_their_time_is_refused() -> None:
    with pytest.raises(ValueError, match="hourly"):
        RetentionPolicy(raw_telemetry_days=10, hourly_telemetry_days=5)
    with pytest.raises(ValueError, match="daily"):
        RetentionPolicy(daily_telemetry_days=30)
    # The settings say which one is wrong (a one-line error at start).
    with pytest.raises(
        ValueError, match=r"retention_broadcast_days: 0 \(for ever\) or at least 365"
    ):
        Settings(demo=True, retention_broadcast_days=30)
    with pytest.raises(ValueError, match="retention_hourly_telemetry_days"):
        Settings(demo=True, retention_raw_telemetry_days=30, retention_hourly_telemetry_days=7)
    settings = Settings(demo=True, retention_audit_days=3650, retention_hour=4)
    assert RetentionPolicy.from_settings(settings).audit_days == 3650
