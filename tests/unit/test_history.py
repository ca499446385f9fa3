"""History kept by the ingestor against a real SQLite file: online intervals from real
status reports (and the online rate computed from them), fault episodes from real fault
events and telemetry, and the repair at start.

Time is the one stand-in: a day cannot pass in a test, so the ingestor's clock
(`dalaba.protocol.now_ms`) is set by the test."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session, col, select

from controller import history
from controller.db import Database
from controller.history import FaultEpisode, OnlineInterval
from controller.ingest import Ingestor
from controller.models import Device, Township, Village
from dalaba import protocol as p

ZONE = ZoneInfo("Asia/Shanghai")
DAY = int(dt.datetime(2026, 6, 1, tzinfo=ZONE).timestamp() * 1000)  # local midnight
H = 3600 * 1000
D1, D2, D3 = "d-t01-v01-1", "d-t01-v01-2", "d-t02-v01-1"


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock(DAY)
    monkeypatch.setattr(p, "now_ms", c)
    return c


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'test.db'}")
    database.start()

    def seed(s: Session) -> None:
        s.add(Township(id="t01", name="城关镇", lat=0, lon=0))
        s.add(Township(id="t02", name="河口乡", lat=0, lon=0))
        s.flush()
        s.add(Village(id="t01-v01", township_id="t01", name="东坪村", lat=0, lon=0))
        s.add(Village(id="t02-v01", township_id="t02", name="西河村", lat=0, lon=0))
        s.flush()
        for device_id, village, township in (
            (D1, "t01-v01", "t01"),
            (D2, "t01-v01", "t01"),
            (D3, "t02-v01", "t02"),
        ):
            s.add(Device(id=device_id, village_id=village, township_id=township, name=device_id))

    database.run_sync(seed)
    yield database
    database.stop()


def status(device: str, online: bool, at: int) -> bytes:
    return p.DeviceStatus(device_id=device, online=online, at=at).to_bytes()


def will(device: str) -> bytes:
    # What the broker publishes for a terminal whose connection died.
    return p.DeviceStatus(device_id=device, online=False, at=0).to_bytes()


def telemetry(device: str, at: int, faults: tuple[str, ...] = ()) -> bytes:
    data = {
        "v": 1, "device_id": device, "at": at, "firmware": "x", "uptime_s": 1,
        "amplifier_on": False, "amplifier_ok": "amplifier" not in faults,
        "speaker_line_ok": "speaker_line" not in faults,
        "power_source": "battery" if "on_battery" in faults else "mains",
        "temperature_c": 20.0, "signal_dbm": -70, "volume": 70, "cache_bytes": 0,
        "cache_items": 0, "interval_s": 60, "faults": list(faults),
    }  # fmt: skip
    return json.dumps(data).encode()


def fault_event(device: str, kind: p.EventKind, fault: str, at: int) -> bytes:
    return p.DeviceEvent(
        device_id=device, kind=kind, at=at, reason=fault, detail={"ohms": 3}
    ).to_bytes()


async def report(ingestor: Ingestor, clock: Clock, at: int, device: str, kind: str, body: bytes):  # type: ignore[no-untyped-def]
    clock.t = at
    ingestor.submit(device, kind, body)
    await ingestor.flush()


def intervals(db: Database, device: str) -> list[tuple[int, int | None, str | None]]:
    rows = db.run_sync(
        lambda s: s.exec(
            select(OnlineInterval)
            .where(OnlineInterval.device_id == device)
            .order_by(col(OnlineInterval.start_ms))
        ).all()
    )
    return [(r.start_ms, r.end_ms, r.end_reason) for r in rows]


def episodes(db: Database, device: str) -> list[FaultEpisode]:
    return list(
        db.run_sync(
            lambda s: s.exec(
                select(FaultEpisode)
                .where(FaultEpisode.device_id == device)
                .order_by(col(FaultEpisode.start_ms), col(FaultEpisode.id))
            ).all()
        )
    )


def device_row(db: Database, device: str) -> Device:
    found = db.run_sync(lambda s: s.get(Device, device))
    assert found is not None
    return found


# ------------------------------------------------------------------ online intervals


@pytest.mark.parametrize("how", ["status", "will", "silent"])
async def test_two_hours_offline_in_a_day_is_22_of_24(db: Database, clock: Clock, how: str):
    ingestor = Ingestor(db, liveness_intervals=3, default_telemetry_interval_s=60)
    await report(ingestor, clock, DAY, D1, "status", status(D1, True, DAY))
    # Last heard a minute before the will (its last telemetry), at 10:00 otherwise.
    heard = DAY + 10 * H - (60_000 if how == "will" else 0)
    await report(ingestor, clock, heard, D1, "telemetry", telemetry(D1, heard))
    # Offline from exactly 10:00: it says so, or its connection breaks (the broker
    # publishes its will), or it falls silent (noticed after three 60 s intervals, and
    # dated when it was last heard).
    if how == "status":
        await report(ingestor, clock, DAY + 10 * H, D1, "status", status(D1, False, DAY + 10 * H))
    elif how == "will":
        await report(ingestor, clock, DAY + 10 * H, D1, "status", will(D1))
    else:
        clock.t = DAY + 10 * H + 181_000
        db.run_sync(lambda s: ingestor.sweep_silent(s))
    assert not device_row(db, D1).online
    # Back at exactly 12:00: its status, and telemetry after it.
    await report(ingestor, clock, DAY + 12 * H, D1, "status", status(D1, True, DAY + 12 * H))
    await report(ingestor, clock, DAY + 12 * H + 1, D1, "telemetry", telemetry(D1, DAY + 12 * H))

    assert intervals(db, D1) == [(DAY, DAY + 10 * H, how), (DAY + 12 * H, None, None)]
    rate = db.run_sync(
        lambda s: history.online_rate(s, DAY, DAY + 24 * H, devices=[D1], now_ms=DAY + 24 * H)
    )
    assert rate == 22 / 24
    hourly = db.run_sync(
        lambda s: history.online_series(
            s, [DAY + h * H for h in range(25)], devices=[D1], now_ms=DAY + 24 * H
        )
    )
    assert hourly == [1.0] * 10 + [0.0, 0.0] + [1.0] * 12


async def test_rates_by_scope_and_up_to_now(db: Database, clock: Clock):
    ingestor = Ingestor(db)
    # D1 and D3 online all day, D2 online from 18:00 only.
    await report(ingestor, clock, DAY, D1, "status", status(D1, True, DAY))
    await report(ingestor, clock, DAY, D3, "status", status(D3, True, DAY))
    await report(ingestor, clock, DAY + 18 * H, D2, "status", status(D2, True, DAY + 18 * H))
    end = DAY + 24 * H

    def rate(**scope):  # type: ignore[no-untyped-def]
        return db.run_sync(lambda s: history.online_rate(s, DAY, end, now_ms=end, **scope))

    assert rate() == (24 + 6 + 24) / 72
    assert rate(township="t01") == (24 + 6) / 48
    assert rate(township="t02") == 1.0
    assert rate(village="t01-v01") == (24 + 6) / 48
    assert rate(devices=[D2]) == 6 / 24
    assert rate(township="nowhere") is None
    # A period reaching past now counts up to now: at 12:00, D2 has not been online.
    assert (
        db.run_sync(lambda s: history.online_rate(s, DAY, end, devices=[D2], now_ms=DAY + 12 * H))
        == 0.0
    )
    # Before the period began: nothing to say.
    assert db.run_sync(lambda s: history.online_rate(s, DAY, end, now_ms=DAY - 1)) is None
    assert db.run_sync(lambda s: history.terminals(s, township="t01")) == 2


def test_the_series_is_the_exact_overlap_whatever_the_intervals(db: Database):
    """Random closed and open intervals (and ones of a terminal since removed) against
    the overlap computed naively, interval by interval, for uneven buckets."""
    rng = random.Random(14)
    now = DAY + 30 * 24 * H
    rows: list[OnlineInterval] = []
    for device, village, township in ((D1, "t01-v01", "t01"), (D2, "t01-v01", "t01"),
                                      (D3, "t02-v01", "t02"), ("gone", "x", "x")):  # fmt: skip
        t = DAY - 5 * 24 * H
        while t < now:
            start = t + rng.randrange(0, 20 * H)
            end = start + rng.randrange(0, 60 * H)
            if start >= now:
                break
            closed = end < now
            rows.append(
                OnlineInterval(
                    device_id=device,
                    village_id=village,
                    township_id=township,
                    start_ms=start,
                    end_ms=end if closed else None,
                    end_reason="status" if closed else None,
                )
            )
            t = end
    db.run_sync(lambda s: s.add_all(rows))
    edges = sorted({DAY + rng.randrange(0, 40 * 24 * H) for _ in range(12)})

    def naive(lo: int, hi: int, devices: set[str]) -> float | None:
        hi = min(hi, now)
        if hi <= lo:
            return None
        online = sum(
            max(0, min(r.end_ms if r.end_ms is not None else now, hi) - max(r.start_ms, lo))
            for r in rows
            if r.device_id in devices
        )
        return online / (len(devices) * (hi - lo))

    for scope, devices in (({}, {D1, D2, D3}), ({"township": "t01"}, {D1, D2})):
        series = db.run_sync(
            lambda s, scope=scope: history.online_series(s, edges, now_ms=now, **scope)
        )
        expected = [naive(lo, hi, devices) for lo, hi in itertools.pairwise(edges)]
        assert series == pytest.approx(expected, abs=1e-12)
        assert any(v is None for v in expected) and any(v for v in expected)


# ------------------------------------------------------------------ fault episodes


async def test_fault_events_open_and_close_episodes(db: Database, clock: Clock):
    ingestor = Ingestor(db)
    raised, cleared = p.EventKind.FAULT_RAISED, p.EventKind.FAULT_CLEARED
    t = DAY + 8 * H
    await report(ingestor, clock, t, D1, "event", fault_event(D1, raised, "speaker_line", t - 500))
    # The same fault said again (a broker duplicate, a reconnect) is the same episode.
    await report(ingestor, clock, t + H, D1, "event", fault_event(D1, raised, "speaker_line", t))
    assert device_row(db, D1).faults == {"speaker_line": t - 500}
    [open_one] = episodes(db, D1)
    assert (open_one.fault, open_one.start_ms, open_one.end_ms) == ("speaker_line", t - 500, None)
    assert open_one.detail == {"ohms": 3, "opened_by": "event"}

    await report(
        ingestor,
        clock,
        t + 2 * H,
        D1,
        "event",
        fault_event(D1, cleared, "speaker_line", t + 2 * H - 100),
    )
    await report(
        ingestor, clock, t + 3 * H, D1, "event", fault_event(D1, raised, "speaker_line", t + 3 * H)
    )
    first, second = episodes(db, D1)
    assert (first.start_ms, first.end_ms) == (t - 500, t + 2 * H - 100)
    assert first.detail["closed_by"] == "event"
    assert (second.start_ms, second.end_ms) == (t + 3 * H, None)
    assert device_row(db, D1).faults == {"speaker_line": t + 3 * H}
    # A terminal clock in the future (or years behind) does not date the episode.
    await report(
        ingestor, clock, t + 4 * H, D2, "event", fault_event(D2, raised, "clock", t + 90 * 24 * H)
    )
    await report(ingestor, clock, t + 4 * H, D3, "event", fault_event(D3, raised, "clock", 1000))
    assert [e.start_ms for e in episodes(db, D2) + episodes(db, D3)] == [t + 4 * H] * 2


async def test_telemetry_reconciles_episodes_whose_events_were_lost(db: Database, clock: Clock):
    ingestor = Ingestor(db)
    t = DAY + 8 * H
    # On battery, and the event was lost: the first telemetry saying so opens it.
    await report(ingestor, clock, t, D1, "telemetry", telemetry(D1, t, ("on_battery",)))
    [episode] = episodes(db, D1)
    assert (episode.start_ms, episode.end_ms, episode.detail["opened_by"]) == (t, None, "telemetry")
    assert device_row(db, D1).faults == {"on_battery": t}
    await report(
        ingestor, clock, t + 60_000, D1, "telemetry", telemetry(D1, t + 60_000, ("on_battery",))
    )
    # Mains back, the event lost again: one telemetry without it is not enough ...
    await report(ingestor, clock, t + 120_000, D1, "telemetry", telemetry(D1, t + 120_000))
    assert episodes(db, D1)[0].end_ms is None
    assert "on_battery" in device_row(db, D1).faults
    # ... two in a row are: it ended by the first of them.
    await report(ingestor, clock, t + 180_000, D1, "telemetry", telemetry(D1, t + 180_000))
    [episode] = episodes(db, D1)
    assert (episode.end_ms, episode.detail["closed_by"]) == (t + 120_000, "telemetry")
    assert device_row(db, D1).faults == {}


async def test_an_event_delivered_late_dates_the_episode_telemetry_opened(
    db: Database, clock: Clock
):
    ingestor = Ingestor(db)
    t = DAY + 8 * H
    # Back online: its telemetry says amplifier, then its outbox delivers the event of
    # when the amplifier failed, while it was offline.
    await report(ingestor, clock, t, D1, "telemetry", telemetry(D1, t, ("amplifier",)))
    raised = fault_event(D1, p.EventKind.FAULT_RAISED, "amplifier", t - 2 * H)
    await report(ingestor, clock, t + 1000, D1, "event", raised)
    [episode] = episodes(db, D1)
    assert (episode.start_ms, episode.end_ms) == (t - 2 * H, None)
    assert device_row(db, D1).faults == {"amplifier": t - 2 * H}


async def test_telemetry_older_than_the_events_changes_nothing(db: Database, clock: Clock):
    ingestor = Ingestor(db)
    raised, cleared = p.EventKind.FAULT_RAISED, p.EventKind.FAULT_CLEARED
    t = DAY + 8 * H
    await report(ingestor, clock, t, D1, "telemetry", telemetry(D1, t))
    await report(
        ingestor, clock, t + 10_000, D1, "event", fault_event(D1, raised, "amplifier", t + 10_000)
    )
    # Composed before the fault, delivered after the event: one absence, no closing.
    await report(ingestor, clock, t + 11_000, D1, "telemetry", telemetry(D1, t + 5_000))
    assert [e.end_ms for e in episodes(db, D1)] == [None]
    await report(
        ingestor, clock, t + 20_000, D1, "event", fault_event(D1, cleared, "amplifier", t + 20_000)
    )
    # Composed before the clearing, delivered after it: does not reopen the fault.
    await report(
        ingestor, clock, t + 21_000, D1, "telemetry", telemetry(D1, t + 15_000, ("amplifier",))
    )
    assert [(e.start_ms, e.end_ms) for e in episodes(db, D1)] == [(t + 10_000, t + 20_000)]
    assert device_row(db, D1).faults == {}


async def test_a_fault_telemetry_cannot_name_is_left_to_its_events(db: Database, clock: Clock):
    ingestor = Ingestor(db)
    t = DAY + 8 * H
    kind = p.EventKind.FAULT_RAISED
    await report(ingestor, clock, t, D1, "event", fault_event(D1, kind, "door_open", t))
    for i in range(1, 4):
        await report(
            ingestor, clock, t + i * 60_000, D1, "telemetry", telemetry(D1, t + i * 60_000)
        )
    assert [(e.fault, e.end_ms) for e in episodes(db, D1)] == [("door_open", None)]
    assert set(device_row(db, D1).faults) == {"door_open"}


# ------------------------------------------------------------------ repair at start


async def test_a_restart_closes_nothing_and_mends_what_disagrees(db: Database, clock: Clock):
    ingestor = Ingestor(db)
    await report(ingestor, clock, DAY, D1, "status", status(D1, True, DAY))
    before = intervals(db, D1)

    def break_things(s: Session) -> None:
        # D2 shown online with no interval (a database from before this history), D3
        # shown offline with one left open, and a fault with no episode.
        d2, d3 = s.get(Device, D2), s.get(Device, D3)
        assert d2 is not None and d3 is not None
        d2.online, d2.status_changed_ms = True, DAY + H
        d2.faults = {"speaker_line": DAY + 2 * H}
        d3.online, d3.status_changed_ms = False, DAY + 3 * H
        s.add(OnlineInterval(device_id=D3, village_id="t02-v01", township_id="t02", start_ms=DAY))

    db.run_sync(break_things)
    clock.t = DAY + 5 * H
    restarted = Ingestor(db)
    await restarted.start()
    await restarted.stop()
    assert intervals(db, D1) == before  # still open: a restart is not the terminal's fault
    assert intervals(db, D2) == [(DAY + H, None, None)]
    assert intervals(db, D3) == [(DAY, DAY + 3 * H, "controller")]
    [episode] = episodes(db, D2)
    assert (episode.fault, episode.start_ms, episode.end_ms) == ("speaker_line", DAY + 2 * H, None)
    # Mended once: a second start finds nothing to do.
    assert db.run_sync(lambda s: history.repair(s, DAY + 6 * H)) == {}
