"""Statistics over a generated year of the demo county (12 townships, 164 villages, 182
terminals), read through the real API of a running controller on SQLite and PostgreSQL,
against figures computed here in plain Python from what the generator knows it made
(each delivery's scenario), never from the database or the controller's SQL.

The year is 2025 in the county's time (Asia/Shanghai): broadcasts of every category,
real and drill, to the whole county, townships and single villages; deliveries that
played to the end, were cut off with and without an offset, replayed after preemption,
played hours late after an outage, expired, failed, were rejected or cancelled; schedule
occurrences of every outcome; and every terminal's online intervals.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import random
import re
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from openpyxl import load_workbook
from sqlalchemy import insert
from sqlmodel import Session

from controller import report
from controller.app import ControllerServer
from controller.auth import Role, create_user_and_token
from controller.db import Database
from controller.history import OnlineInterval
from controller.models import Broadcast, Delivery, DeliveryTransition, Media
from controller.schedules.models import Occurrence, Schedule
from dalaba_ops.demo import PreparedCounty, setup_county

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TZ = ZoneInfo("Asia/Shanghai")
YEAR = 2025
Y0 = int(datetime(YEAR, 1, 1, tzinfo=TZ).timestamp() * 1000)
Y1 = int(datetime(YEAR + 1, 1, 1, tzinfo=TZ).timestamp() * 1000)
DAY = 86_400_000
LEAD = 600  # created -> start_at for a push
CATEGORIES = (
    ["forest_fire"] * 6 + ["flood"] * 4 + ["anti_fraud"] * 4 + ["road_safety"] * 3
    + ["anti_drug", "civility", "rural_revitalisation", "epidemic", "meeting", "news"]
)  # fmt: skip
DURATIONS = {"a" * 64: 8_000, "b" * 64: 15_500, "c" * 64: 31_000, "d" * 64: 62_250}


# --------------------------------------------------------------------------- the year


@dataclass(frozen=True)
class Terminal:
    id: str
    village: str
    township: str


@dataclass
class Sent:
    """A broadcast as generated: whether the statistics must count it, and what it is."""

    id: str
    category: str
    priority: str
    drill: bool
    created_ms: int
    start_at_ms: int
    duration_ms: int
    counted: bool
    pushed: bool  # not a schedule occurrence: counts for timeliness


@dataclass
class Played:
    """One delivery as generated, with its figures known by construction."""

    broadcast: str
    terminal: Terminal
    scenario: str
    done: bool
    played: bool
    airtime_ms: int
    cut_without_offset: bool
    first_play_rx: int | None


@dataclass
class Plan:
    """A schedule as generated: who it reaches and its occurrences' outcomes by due time."""

    id: str
    drill: bool
    township_ids: list[str]
    target: dict[str, Any]
    occurrences: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Year:
    terminals: list[Terminal]
    sent: dict[str, Sent] = field(default_factory=dict)
    played: list[Played] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)
    intervals: list[tuple[Terminal, int, int]] = field(default_factory=list)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, table: str, row: dict[str, Any]) -> None:
        self.rows.setdefault(table, []).append(row)


# Scenario -> weight, for real pushes (occurrences use the same).
SCENARIOS = {
    "done": 60,
    "late": 4,  # offline at send, played two hours later
    "replayed": 4,  # preempted with an offset, then played in full
    "replayed_twice": 1,  # preempted twice (two offsets), then played in full
    "cut": 3,  # preempted with an offset, never finished
    "failed_mid": 2,
    "cancelled_mid": 1,
    "unknown": 2,  # fell silent while playing: no offset
    "expired": 10,
    "failed_fetch": 3,
    "rejected": 1,
    "cancelled": 2,
}


def deliver(rng: random.Random, year: Year, b: Sent, terminal: Terminal, scenario: str) -> None:
    c, d = b.created_ms, b.duration_ms
    lat = rng.randint(250, 4000)
    off = rng.randint(500, d - 100)
    t: list[dict[str, Any]] = []

    def add(state: str, rx: int, **extra: Any) -> None:
        t.append({"state": state, "at": rx - rng.randint(0, 40), "rx": rx, **extra})

    def inferred(state: str, rx: int) -> None:
        t.append({"state": state, "at": rx, "rx": rx, "inferred": True, "cause": "sweep"})

    played, done, airtime, no_offset = True, False, 0, False
    first: int | None = c + lat
    if scenario == "late":
        t.append({"state": "offline", "at": c, "rx": c})
        first = c + 2 * 3600_000 + lat
        add("received", first - 300)
        add("playing", first)
        add("done", first + d)
        done, airtime = True, d
    else:
        t.append({"state": "sent", "at": c, "rx": c})
        if scenario in ("rejected",):
            add("rejected", c + lat, reason="signature")
        elif scenario == "expired":
            inferred("expired", b.start_at_ms + 3600_000)
        elif scenario == "cancelled":
            inferred("cancelled", c + lat)
        elif scenario == "failed_fetch":
            add("received", c + lat // 3)
            add("failed", c + lat, reason="fetch failed")
        else:
            add("received", c + lat // 3)
            add("fetched", c + lat // 2)
            add("playing", c + lat)
            if scenario == "done":
                add("done", c + lat + d)
                done, airtime = True, d
            elif scenario == "replayed":
                add("preempted", c + lat + off, offset_ms=off)
                add("playing", c + lat + off + 90_000)
                add("done", c + lat + off + 90_000 + d)
                done, airtime = True, d + off
            elif scenario == "replayed_twice":
                off2 = rng.randint(200, d - 100)
                add("preempted", c + lat + off, offset_ms=off)
                add("playing", c + lat + off + 60_000)
                add("preempted", c + lat + off + 60_000 + off2, offset_ms=off2)
                add("playing", c + lat + off + off2 + 120_000)
                add("done", c + lat + off + off2 + 120_000 + d)
                done, airtime = True, d + off + off2
            elif scenario == "cut":
                add("preempted", c + lat + off, offset_ms=off)
                inferred("expired", b.start_at_ms + 3600_000)
                airtime = off
            elif scenario == "failed_mid":
                add("failed", c + lat + off, offset_ms=off, reason="amplifier")
                airtime = off
            elif scenario == "cancelled_mid":
                add("cancelled", c + lat + off, offset_ms=off)
                airtime = off
            elif scenario == "unknown":
                inferred("unknown", c + lat + d + 30_000)
                no_offset = True
    if scenario in ("expired", "cancelled", "failed_fetch", "rejected"):
        played, first = False, None
    final = t[-1]
    year.add(
        "delivery",
        {
            "broadcast_id": b.id,
            "device_id": terminal.id,
            "state": final["state"],
            "reason": final.get("reason"),
            "updated_ms": final["rx"],
            "last_seq": len(t),
            "state_source": "controller" if final.get("inferred") else "device",
            "attempt": 0,
        },
    )
    for entry in t:  # its history, as controller/deliveries.py appends it
        rest = {k: v for k, v in entry.items() if k not in _TRANSITION_FIELDS}
        year.add(
            "delivery_transition",
            {
                "broadcast_id": b.id,
                "device_id": terminal.id,
                "state": entry["state"],
                "at_ms": entry["at"],
                "rx_ms": entry["rx"],
                "reason": entry.get("reason"),
                "inferred": bool(entry.get("inferred")),
                "cause": entry.get("cause"),
                "seq": None,
                "offset_ms": entry.get("offset_ms"),
                "extra": rest or None,
            },
        )
    year.played.append(Played(b.id, terminal, scenario, done, played, airtime, no_offset, first))


_TRANSITION_FIELDS = {"state", "at", "rx", "reason", "inferred", "cause", "offset_ms"}


def _broadcast_row(
    b: Sent, media: str, status: str, command_id: str, target: Any
) -> dict[str, Any]:
    return {
        "id": b.id,
        "created_ms": b.created_ms,
        "created_by": "duty1",
        "title": "",
        "text": f"{b.category} {b.id}",
        "media_sha256": media,
        "category": b.category,
        "priority": b.priority,
        "level": 2 if b.priority == "emergency" else None,
        "drill": b.drill,
        "targets": target,
        "target": target,
        "start_at_ms": b.start_at_ms,
        "expires_at_ms": b.start_at_ms + 3600_000,
        "status": status,
        "swept": True,  # settled: the controller's sweeper leaves it alone
        "dispatch": "published" if command_id else "failed",
        "command_id": command_id,
        "voices": "",
        "device_count": 0,
        "attempt": 0,
        "resends": [],
    }


def generate(prepared: PreparedCounty, seed: int = 14) -> Year:
    rng = random.Random(seed)
    terminals = [
        Terminal(device, v.id, v.township_id)
        for v in prepared.county.villages
        for device in v.device_ids()
    ]
    year = Year(terminals)
    by_township: dict[str, list[Terminal]] = {}
    by_village: dict[str, list[Terminal]] = {}
    for term in terminals:
        by_township.setdefault(term.township, []).append(term)
        by_village.setdefault(term.village, []).append(term)
    townships, villages = sorted(by_township), sorted(by_village)
    for sha, ms in DURATIONS.items():
        year.add(
            "media",
            {"sha256": sha, "mime": "audio/mpeg", "size": 1000, "duration_ms": ms,
             "source": "speech", "voices": "", "text": "", "created_ms": Y0 - 90 * DAY},
        )  # fmt: skip
    scenarios, weights = list(SCENARIOS), list(SCENARIOS.values())

    def push(n: int, start_at: int, status: str = "finished") -> None:
        kind = rng.random()
        target: dict[str, Any]
        if kind < 0.08:
            target, reach = {"all": True}, terminals
        elif kind < 0.55:
            tid = rng.choice(townships)
            target, reach = {"townships": [tid]}, by_township[tid]
        elif kind < 0.65:
            pair = rng.sample(townships, 2)
            target = {"townships": sorted(pair)}
            reach = by_township[pair[0]] + by_township[pair[1]]
        else:
            picked = rng.sample(villages, rng.randint(1, 5))
            target = {"villages": sorted(picked)}
            reach = [t for v in picked for t in by_village[v]]
        priority = rng.choice(["emergency", "notice", "notice", "routine"])
        media = rng.choice(list(DURATIONS))
        b = Sent(
            id=f"b{n:05d}",
            category=rng.choice(CATEGORIES),
            priority=priority,
            drill=rng.random() < 0.12,
            created_ms=start_at - LEAD,
            start_at_ms=start_at,
            duration_ms=DURATIONS[media],
            counted=status in ("finished", "cancelled", "active"),
            pushed=True,
        )
        year.sent[b.id] = b
        year.add("broadcast", _broadcast_row(b, media, status, f"c{n:05d}", target))
        for term in reach:
            deliver(rng, year, b, term, rng.choices(scenarios, weights)[0])

    n = 0
    for _ in range(380):
        n += 1
        push(n, rng.randrange(Y0, Y1), "cancelled" if rng.random() < 0.06 else "finished")
    # The edges of the year in local time, and rows that must not count.
    for at in (Y0 - 1, Y0, Y1 - 1, Y1):
        n += 1
        push(n, at)
    n += 1
    push(n, rng.randrange(Y0, Y1), "scheduled")  # planned, never sent

    _schedules(rng, year, townships, by_township, by_village, scenarios, weights)
    _intervals(rng, year)
    return year


def _schedules(
    rng: random.Random,
    year: Year,
    townships: list[str],
    by_township: dict[str, list[Terminal]],
    by_village: dict[str, list[Terminal]],
    scenarios: list[str],
    weights: list[int],
) -> None:
    two = [sorted(by_village)[20], sorted(by_village)[40]]  # villages of other townships
    plans = [
        Plan("s-news", False, ["t01"], {"townships": ["t01"]}),
        Plan(
            "s-fire",
            False,
            sorted({by_village[v][0].township for v in two}),
            {"villages": two},
        ),
        Plan("s-drill", True, list(townships), {"all": True}),
    ]
    for plan in plans:
        reach = (
            year.terminals
            if plan.target.get("all")
            else [t for tid in plan.target.get("townships", []) for t in by_township[tid]]
            + [t for v in plan.target.get("villages", []) for t in by_village[v]]
        )
        media = "b" * 64
        year.add(
            "schedule",
            {
                "id": plan.id, "name": plan.id, "status": "deleted", "version": 1,
                "created_ms": Y0 - 30 * DAY, "created_by": "admin",
                "updated_ms": Y0 - 30 * DAY, "updated_by": "admin",
                "township_ids": plan.township_ids, "request": {},
                "recurrence": {"kind": "daily", "times": ["07:30"]}, "text": plan.id,
                "media_sha256": media, "voices": "", "template_id": None, "params": {},
                "title": plan.id, "category": "forest_fire" if plan.id == "s-fire" else "news",
                "priority": "routine", "level": None, "drill": plan.drill,
                "languages": ["cmn"], "repeat": None, "targets": plan.target,
                "target": plan.target, "expires_in_s": 600, "misfire_grace_s": 60,
            },
        )  # fmt: skip
        year.plans.append(plan)
        for i in range(70):
            due = Y0 - 3 * DAY + i * 5 * DAY + 7 * 3600_000  # some fall before the year
            outcome = rng.choice(
                ["fired", "fired", "fired", "played_offline", "suppressed", "missed", "cancelled"]
            )
            occ_id = f"o-{plan.id}-{i:03d}"
            plan.occurrences.append((due, outcome))
            fired = outcome == "fired"
            year.add(
                "occurrence",
                {
                    "id": occ_id, "schedule_id": plan.id, "due_ms": due,
                    "expires_at_ms": due + 600_000, "outcome": outcome, "reason": None,
                    "schedule_version": 1, "devices_digest": "", "device_count": len(reach),
                    "suppressed": {}, "broadcast_id": occ_id,
                    "fired_ms": due - 3000 if fired else None,
                    "start_at_ms": due if fired else None,
                    "dispatch": "published" if fired else None,
                    "created_ms": due - 3 * DAY, "updated_ms": due,
                },
            )  # fmt: skip
            b = Sent(
                id=occ_id,
                category="forest_fire" if plan.id == "s-fire" else "news",
                priority="routine",
                drill=plan.drill,
                created_ms=due - 3 * DAY,  # planned three days ahead
                start_at_ms=due,
                duration_ms=DURATIONS[media],
                counted=outcome in ("fired", "played_offline"),
                pushed=False,
            )
            year.sent[occ_id] = b
            status = {"suppressed": "cancelled", "cancelled": "cancelled"}.get(outcome, "finished")
            command = f"c-{occ_id}" if fired else ""
            year.add("broadcast", _broadcast_row(b, media, status, command, plan.target))
            for term in reach:
                if outcome in ("fired",):
                    scenario = rng.choices(scenarios, weights)[0]
                elif outcome == "played_offline":
                    scenario = rng.choice(["done", "done", "expired"])
                elif outcome == "missed":
                    scenario = "expired"
                else:
                    scenario = "cancelled"
                deliver(rng, year, b, term, scenario)


def _intervals(rng: random.Random, year: Year) -> None:
    """Online stretches of about three weeks with gaps of about a day and a half, all
    closed; one township dark for the whole of March (a known outage)."""
    march = (
        int(datetime(YEAR, 3, 1, tzinfo=TZ).timestamp() * 1000),
        int(datetime(YEAR, 4, 1, tzinfo=TZ).timestamp() * 1000),
    )
    for term in year.terminals:
        at = Y0 - 40 * DAY + rng.randrange(0, 5 * DAY)
        while at < Y1 + 20 * DAY:
            end = at + int(rng.expovariate(1 / (21 * DAY))) + 60_000
            pieces = [(at, end)]
            if term.township == "t05":  # cut out March
                pieces = [(a, min(b, march[0])) for a, b in pieces if a < march[0]] + [
                    (max(a, march[1]), b) for a, b in pieces if b > march[1]
                ]
            for a, b in pieces:
                if b > a:
                    year.intervals.append((term, a, b))
                    year.add(
                        "onlineinterval",
                        {"device_id": term.id, "village_id": term.village,
                         "township_id": term.township, "start_ms": a, "end_ms": b,
                         "end_reason": "status"},
                    )  # fmt: skip
            at = end + int(rng.expovariate(1 / (1.5 * DAY))) + 60_000


TABLES = {
    "media": Media,
    "schedule": Schedule,
    "broadcast": Broadcast,
    "occurrence": Occurrence,
    "delivery": Delivery,
    "delivery_transition": DeliveryTransition,
    "onlineinterval": OnlineInterval,
}


def store(session: Session, year: Year) -> None:
    for name, model in TABLES.items():
        rows = year.rows.get(name, [])
        for i in range(0, len(rows), 5000):
            session.execute(insert(model.__table__), rows[i : i + 5000])  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- expectations


def _rank(values: list[int], pct: int) -> int | None:
    if not values:
        return None
    return sorted(values)[math.ceil(pct / 100 * len(values)) - 1]


def _side(year: Year, rows: list[Played]) -> dict[str, Any]:
    lat = [
        r.first_play_rx - year.sent[r.broadcast].created_ms
        for r in rows
        if r.first_play_rx is not None and year.sent[r.broadcast].pushed
    ]
    done = sum(r.done for r in rows)
    return {
        "broadcasts": len({r.broadcast for r in rows}),
        "plays": {
            "total": sum(r.played for r in rows),
            "airtime_s": round(sum(r.airtime_ms for r in rows) / 1000),
            "cut_without_offset": sum(r.cut_without_offset for r in rows),
        },
        "reach": {
            "targeted": len(rows),
            "done": done,
            "rate": round(done / len(rows), 4) if rows else None,
        },
        "timeliness": {"median_ms": _rank(lat, 50), "p95_ms": _rank(lat, 95), "samples": len(lat)},
        "villages": len({r.terminal.village for r in rows if r.played}),
        "townships": len({r.terminal.township for r in rows if r.played}),
    }


def _online(year: Year, start: int, end: int, keep: Iterable[Terminal]) -> float | None:
    keep = set(keep)
    if not keep:
        return None
    online = sum(
        max(0, min(b, end) - max(a, start)) for term, a, b in year.intervals if term in keep
    )
    return round(online / (len(keep) * (end - start)), 4)


def expect(
    year: Year, start: int, end: int, township: str | None = None, village: str | None = None
) -> dict[str, Any]:
    def here(t: Terminal) -> bool:
        return (township is None or t.township == township) and (
            village is None or t.village == village
        )

    sent = {i: b for i, b in year.sent.items() if b.counted and start <= b.start_at_ms < end}
    rows = [r for r in year.played if r.broadcast in sent and here(r.terminal)]
    ids = {r.broadcast for r in rows} if township or village else set(sent)
    real = [sent[i] for i in ids if not sent[i].drill]
    drills = [sent[i] for i in ids if sent[i].drill]
    real_rows = [r for r in rows if not sent[r.broadcast].drill]
    drill_rows = [r for r in rows if sent[r.broadcast].drill]
    outcomes: dict[bool, Counter[str]] = {False: Counter(), True: Counter()}
    for plan in year.plans:
        if township is not None and village is None and township not in plan.township_ids:
            continue
        if village is not None:
            vt = next(t.township for t in year.terminals if t.village == village)
            if not (
                plan.target.get("all")
                or vt in plan.target.get("townships", [])
                or village in plan.target.get("villages", [])
            ):
                continue
        for due, outcome in plan.occurrences:
            if start <= due < end:
                outcomes[plan.drill][outcome] += 1
    per_township = {}
    for tid in sorted({t.township for t in year.terminals}):
        if township is not None and tid != township:
            continue
        mine = [r for r in real_rows if r.terminal.township == tid]
        per_township[tid] = {
            **_side(year, mine),
            "drills": len({r.broadcast for r in drill_rows if r.terminal.township == tid}),
            "online_rate": _online(
                year, start, end, [t for t in year.terminals if t.township == tid and here(t)]
            ),
        }
    return {
        "broadcasts": {
            "total": len(real) + len(drills),
            "real": len(real),
            "drill": len(drills),
            "by_category": dict(Counter(b.category for b in real)),
            "by_priority": dict(Counter(b.priority for b in real)),
            "drill_by_category": dict(Counter(b.category for b in drills)),
        },
        "real": _side(year, real_rows),
        "drill": _side(year, drill_rows),
        "schedules": {k: dict(v) for k, v in outcomes.items()},
        "online_rate": _online(year, start, end, [t for t in year.terminals if here(t)]),
        "townships": per_township,
        "categories": {
            c: _side(year, [r for r in real_rows if sent[r.broadcast].category == c])
            for c in {b.category for b in real}
        },
    }


def check_summary(got: dict[str, Any], want: dict[str, Any]) -> None:
    b = got["broadcasts"]
    assert {k: b[k] for k in ("total", "real", "drill")} == {
        k: want["broadcasts"][k] for k in ("total", "real", "drill")
    }
    assert b["by_category"] == want["broadcasts"]["by_category"]
    assert b["by_priority"] == want["broadcasts"]["by_priority"]
    assert b["drill_by_category"] == want["broadcasts"]["drill_by_category"]
    for side, figures in (("real", got), ("drill", got["drill"])):
        w = want[side]
        assert figures["plays"] == w["plays"], side
        assert figures["reach"] == w["reach"], side
        assert figures["timeliness"] == w["timeliness"], side
    assert {k: v for k, v in got["schedules"].items() if v} == want["schedules"][False]
    assert {k: v for k, v in got["drill"]["schedules"].items() if v} == want["schedules"][True]
    assert got["online_rate"] == pytest.approx(want["online_rate"], abs=1e-4)
    rows = {t["id"]: t for t in got["townships"]}
    assert set(rows) == set(want["townships"])
    for tid, w in want["townships"].items():
        t = rows[tid]
        assert t["broadcasts"] == w["broadcasts"], tid
        assert t["drills"] == w["drills"], tid
        assert t["plays"] == w["plays"]["total"], tid
        assert t["airtime_s"] == w["plays"]["airtime_s"], tid
        assert (t["targeted"], t["done"], t["reach_rate"]) == (
            w["reach"]["targeted"], w["reach"]["done"], w["reach"]["rate"]
        ), tid  # fmt: skip
        assert (t["median_ms"], t["p95_ms"], t["samples"]) == (
            w["timeliness"]["median_ms"], w["timeliness"]["p95_ms"], w["timeliness"]["samples"]
        ), tid  # fmt: skip
        assert t["online_rate"] == pytest.approx(w["online_rate"], abs=1e-4), tid


# --------------------------------------------------------------------------- the county


@dataclass
class Running:
    prepared: PreparedCounty
    controller: ControllerServer
    http: aiohttp.ClientSession
    year: Year
    staff_token: str

    async def get(
        self, path: str, token: str | None = None, expect: int = 200
    ) -> tuple[Any, aiohttp.ClientResponse, bytes]:
        headers = {"Authorization": f"Bearer {token or self.prepared.admin_token}"}
        async with self.http.get(self.prepared.api_url + path, headers=headers) as resp:
            body = await resp.read()
            assert resp.status == expect, (path, resp.status, body[:300])
            data = await resp.json() if resp.content_type == "application/json" else None
            return data, resp, body


async def run_county(tmp_path: Path, database_url: str | None) -> AsyncIterator[Running]:
    prepared = setup_county(
        tmp_path / "county",
        villages=164,
        speech_backends=("espeak-ng",),
        database_url=database_url,
        console_users=False,
    )
    year = generate(prepared)
    db = Database(prepared.settings.db_url)
    db.start()
    try:
        db.run_sync(lambda s: store(s, year))
        staff = db.run_sync(
            lambda s: create_user_and_token(s, "clerk-t02", Role.TOWNSHIP_STAFF, "t02")
        )
    finally:
        db.stop()
    await prepared.broker.start_async()
    controller = ControllerServer(prepared.settings)
    http = aiohttp.ClientSession()
    try:
        await controller.start()
        yield Running(prepared, controller, http, year, staff)
    finally:
        await http.close()
        await controller.stop()
        prepared.broker.stop()


@pytest.fixture
async def sqlite_county(tmp_path: Path) -> AsyncIterator[Running]:
    async for running in run_county(tmp_path, None):
        yield running


@pytest.fixture
async def postgres_county(tmp_path: Path, pg_url: str) -> AsyncIterator[Running]:
    async for running in run_county(tmp_path, pg_url):
        yield running


# --------------------------------------------------------------------------- tests


def _strict(node: Any) -> Any:
    """The documented schemas with undocumented fields refused (as test_openapi.py does)."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if "properties" in out and not out.get("x-open"):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


async def _documented(c: Running, path: str, answer: Any) -> None:
    """The answer matches what /api/openapi.json says of `path`, field for field."""
    doc, _, _ = await c.get("/api/openapi.json")
    schema = doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
    strict = {**schema["schema"], "components": _strict(doc["components"])}
    errors = [e.message for e in Draft202012Validator(strict).iter_errors(answer)]
    assert not errors, (path, errors[:3])


async def _figures_agree(c: Running) -> None:
    year = c.year
    assert len(year.terminals) == 182 and len(year.rows["delivery"]) > 20_000
    # The whole county, the year.
    got, _, _ = await c.get(f"/api/stats/summary?period=year&date={YEAR}-06-15")
    assert got["period"] == {
        "kind": "year",
        "start": f"{YEAR}-01-01T00:00:00+08:00",
        "end": f"{YEAR + 1}-01-01T00:00:00+08:00",
    }
    want = expect(year, Y0, Y1)
    # The generated year is rich enough to test something: every kind of play occurs.
    assert want["real"]["plays"]["cut_without_offset"] > 0
    assert want["broadcasts"]["drill"] > 10 and want["schedules"][True]
    check_summary(got, want)
    assert got["terminals"] == 182
    await _documented(c, "/api/stats/summary", got)

    # A township, a village, a month (of the March outage), a week.
    got, _, _ = await c.get(f"/api/stats/summary?period=year&date={YEAR}-01-01&township=t03")
    check_summary(got, expect(year, Y0, Y1, township="t03"))
    village = next(t.village for t in year.terminals if t.township == "t02")
    got, _, _ = await c.get(
        f"/api/stats/summary?period=quarter&date={YEAR}-05-20&village={village}"
    )
    q0 = int(datetime(YEAR, 4, 1, tzinfo=TZ).timestamp() * 1000)
    q1 = int(datetime(YEAR, 7, 1, tzinfo=TZ).timestamp() * 1000)
    assert got["scope"] == {"township": "t02", "village": village}
    check_summary(got, expect(year, q0, q1, township="t02", village=village))
    m0 = int(datetime(YEAR, 3, 1, tzinfo=TZ).timestamp() * 1000)
    m1 = int(datetime(YEAR, 4, 1, tzinfo=TZ).timestamp() * 1000)
    got, _, _ = await c.get(f"/api/stats/summary?period=month&date={YEAR}-03-31")
    check_summary(got, expect(year, m0, m1))
    dark = next(t for t in got["townships"] if t["id"] == "t05")
    assert dark["online_rate"] == 0.0  # the known outage
    w0 = int(datetime(YEAR, 12, 29, tzinfo=TZ).timestamp() * 1000)  # Monday
    got, _, _ = await c.get(f"/api/stats/summary?period=week&date={YEAR + 1}-01-02")
    check_summary(got, expect(year, w0, w0 + 7 * DAY))

    # Township staff see their own township, whatever they ask for.
    got, _, _ = await c.get("/api/stats/summary?period=year&date=2025-03-01", c.staff_token)
    assert got["scope"]["township"] == "t02" and [t["id"] for t in got["townships"]] == ["t02"]
    check_summary(got, expect(year, Y0, Y1, township="t02"))
    err, _, _ = await c.get("/api/stats/summary?township=t01", c.staff_token, expect=400)
    assert err["error"]["field"] == "township"

    # The online rate by month, the outage included.
    got, _, _ = await c.get(f"/api/stats/online?period=year&date={YEAR}-07-01&township=t05")
    assert got["terminals"] == sum(1 for t in year.terminals if t.township == "t05")
    assert len(got["points"]) == 12 and got["points"][2]["online_rate"] == 0.0
    t05 = [t for t in year.terminals if t.township == "t05"]
    for month, point in enumerate(got["points"], start=1):
        a = int(datetime(YEAR, month, 1, tzinfo=TZ).timestamp() * 1000)
        b = int(datetime(YEAR + month // 12, month % 12 + 1, 1, tzinfo=TZ).timestamp() * 1000)
        assert point["start"] == datetime.fromtimestamp(a / 1000, TZ).isoformat()
        assert point["online_rate"] == pytest.approx(_online(year, a, b, t05), abs=1e-4)
    got, _, _ = await c.get(f"/api/stats/online?period=day&date={YEAR}-08-08")
    assert len(got["points"]) == 24 and got["bucket"] == "hour"
    await _documented(c, "/api/stats/online", got)
    d0 = int(datetime(YEAR, 8, 8, tzinfo=TZ).timestamp() * 1000)
    assert got["points"][13]["online_rate"] == pytest.approx(
        _online(year, d0 + 13 * 3600_000, d0 + 14 * 3600_000, year.terminals), abs=1e-4
    )

    # Bad input names its field.
    for query, field_name in (
        ("period=decade", "period"),
        ("date=2025-02-30", "date"),
        ("period=year&date=9999-12-31", "date"),
        ("township=nowhere", "township"),
        (f"township=t01&village={village}", "village"),
    ):
        err, _, _ = await c.get(f"/api/stats/summary?{query}", expect=400)
        assert err["error"]["field"] == field_name, query
    err, _, _ = await c.get("/api/stats/online?period=year&bucket=hour", expect=400)
    assert err["error"]["field"] == "bucket"


async def test_figures_equal_independent_counts_sqlite(sqlite_county: Running) -> None:
    await _figures_agree(sqlite_county)


@pytest.mark.postgres
async def test_figures_equal_independent_counts_postgres(postgres_county: Running) -> None:
    await _figures_agree(postgres_county)


# --------------------------------------------------------------------------- the report


def pdf_text(pdf: bytes) -> str:
    """The text drawn in a reportlab PDF: its content streams decoded (ASCII85 and
    Flate) and the strings of its CID font read as UCS-2, as a PDF reader maps them."""
    out = []
    for m in re.finditer(rb"<<(.*?)>>\s*stream\r?\n(.*?)endstream", pdf, re.S):
        head, raw = m.group(1), m.group(2).strip()
        if b"/ASCII85Decode" in head:
            raw = base64.a85decode(raw, adobe=True)
        if b"/FlateDecode" in head:
            raw = zlib.decompress(raw)
        for s in re.findall(rb"\(((?:\\.|[^\\)])*)\)\s*Tj", raw, re.S):
            data = re.sub(
                rb"\\([0-7]{1,3}|.)",
                lambda e: (
                    bytes([int(e.group(1), 8)])
                    if e.group(1)[:1].isdigit()
                    else {b"n": b"\n", b"r": b"\r", b"t": b"\t"}.get(e.group(1), e.group(1))
                ),
                s,
            )
            if len(data) % 2 == 0:
                out.append(data.decode("utf-16-be", errors="replace"))
    return "".join(out)


async def test_year_report_html_pdf_xlsx(sqlite_county: Running) -> None:
    c = sqlite_county
    want = expect(c.year, Y0, Y1)
    fire = want["categories"]["forest_fire"]
    n_fire = want["broadcasts"]["by_category"]["forest_fire"]
    sentence = (
        f"全年通过应急广播播发森林防火提醒 {n_fire} 次，覆盖 {fire['townships']} 个镇（乡）"
        f"{fire['villages']} 个行政村。"
    )

    # The printable page: self-contained, its own CSP allowing exactly its stylesheet.
    _, resp, body = await c.get(f"/api/stats/report?year={YEAR}")
    page = body.decode()
    assert resp.content_type == "text/html"
    assert sentence in page
    assert f"{YEAR}年" in page and "<script" not in page and "http" not in page.lower()
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    csp = resp.headers["Content-Security-Policy"]
    assert f"style-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp
    assert "script-src" not in csp
    real = want["broadcasts"]["real"]
    assert f"播发信息 {real} 次" in page and f"应急演练 {want['broadcasts']['drill']} 次" in page
    _, resp, body = await c.get(f"/api/stats/report?year={YEAR}&lang=en")
    assert f"{n_fire} forest-fire reminders were broadcast" in body.decode()

    # The PDF: the same sentence drawn in the CJK font.
    _, resp, pdf = await c.get(f"/api/stats/report?year={YEAR}&format=pdf")
    assert resp.content_type == "application/pdf" and pdf.startswith(b"%PDF")
    assert f'filename="dalaba-report-{YEAR}.pdf"' in resp.headers["Content-Disposition"]
    assert b"/STSong-Light" in pdf and len(re.findall(rb"/Type /Page\b", pdf)) >= 2
    text = re.sub(r"\s+", "", pdf_text(pdf))
    assert re.sub(r"\s+", "", sentence) in text
    assert "城关镇" in text and "月度统计" in text

    # The spreadsheet: numbers as numbers.
    _, resp, xlsx = await c.get(f"/api/stats/report?year={YEAR}&format=xlsx")
    assert resp.content_type == report.XLSX_TYPE
    book = load_workbook(io.BytesIO(xlsx))
    assert sentence in [row[0] for row in book["概况"].iter_rows(values_only=True)]
    categories = {
        r[0]: r for r in book["分类统计（实际播发）"].iter_rows(min_row=2, values_only=True)
    }
    _name, broadcasts, plays, _hours, townships_covered, villages = categories["森林防火"]
    assert (broadcasts, plays) == (n_fire, fire["plays"]["total"])
    assert (townships_covered, villages) == (fire["townships"], fire["villages"])
    townships = list(book["各镇（乡）统计"].iter_rows(min_row=2, values_only=True))
    assert len(townships) == 12
    by_name = {r[0]: r for r in townships}
    assert by_name["城关镇"][1] == want["townships"]["t01"]["broadcasts"]
    assert by_name["城关镇"][6] == pytest.approx(want["townships"]["t01"]["reach"]["rate"])
    months = list(book["月度统计"].iter_rows(min_row=2, values_only=True))
    assert [m[4] for m in months][2] is not None and len(months) == 12

    # Township staff get their own township's report; bad input names its field.
    _, resp, body = await c.get(f"/api/stats/report?year={YEAR}", c.staff_token)
    assert "河口镇应急广播" in body.decode()
    for query, field_name in (("year=1999", "year"), ("format=doc", "format"), ("lang=fr", "lang")):
        err, _, _ = await c.get(f"/api/stats/report?{query}", expect=400)
        assert err["error"]["field"] == field_name
