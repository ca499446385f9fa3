"""The two-person rule counts what one officer sends, against a real controller, broker
and fleet: real emergencies at the configured levels from the same officer are added up
by the townships they reached, and the one that completes the county waits (202) for a
second officer and plays nothing until then; drills, lower levels and other officers'
sends do not count; a setting lowers the threshold. Through schedules too: a real
county-wide level I schedule is refused, and so is one that completes the county with
the officer's other schedules or recent sends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from controller.approvals import PendingBroadcast, officer_reach
from controller.db import Database
from controller.models import Broadcast, Delivery, Device, Media, Township, Village
from controller.schedules.models import Occurrence, Schedule
from controller.settings import Settings
from dalaba.protocol import now_ms
from tests.support import throwaway_postgres_url

REAL = {
    "text": "紧急通知：水库泄洪，请沿河村民立即转移。",
    "category": "flood",
    "priority": "emergency",
    "level": 1,
    "repeat": 1,
}


def to(*townships: str, **change: Any) -> dict[str, Any]:
    return {**REAL, **change, "targets": {"townships": list(townships)}}


async def broadcast_ids(county: Any) -> set[str]:
    _, listing = await county.api("GET", "/api/broadcasts")
    return {b["id"] for b in listing["broadcasts"]}


def terminals_of(county: Any, township: str) -> list[str]:
    return sorted(d for d, c in county.fleet.configs.items() if c.township_id == township)


@pytest.mark.broker
@pytest.mark.slow
async def test_sends_to_one_township_after_another_add_up_to_the_county(
    make_county: Any, console_login: Any
) -> None:
    county = await make_county(villages=33, two_person_levels=(1, 2))  # t01, t02, t03
    duty1 = await console_login(county, "duty1")
    duty2 = await console_login(county, "duty2")
    assert duty1.me["two_person_window_s"] == 600
    t03 = terminals_of(county, "t03")
    assert t03 and len({c.township_id for c in county.fleet.configs.values()}) == 3

    # What does not count: drills, levels outside the rule (even county-wide).
    await duty1.api("POST", "/api/broadcasts", json_body=to("t02", "t03", drill=True), expect=201)
    await duty1.api("POST", "/api/broadcasts", json_body=to("t02", "t03", level=3), expect=201)
    # What counts: real level I and II, one township at a time.
    _, first = await duty1.api("POST", "/api/broadcasts", json_body=to("t01"), expect=201)
    _, second = await duty1.api("POST", "/api/broadcasts", json_body=to("t02", level=2), expect=201)
    sent_before = await broadcast_ids(county)
    assert len(sent_before) == 4

    # The one that completes the county waits, and says why.
    status, held = await duty1.api("POST", "/api/broadcasts", json_body=to("t03"))
    assert status == 202, held
    assert held["status"] == "pending_approval"
    why = held["why"]
    assert (why["townships"], why["of"], why["threshold"]) == (3, 3, 3)
    assert why["own"] == ["t03"] and why["earlier"] == ["t01", "t02"]
    assert set(why["sends"]) == {first["id"], second["id"]}
    assert "within 10 minutes this reaches 3 of 3 townships" in held["message"]
    assert held["approval"]["why"] == why  # the approvals queue says the same

    # Nothing went out: no broadcast, no delivery, no play in t03.
    assert await broadcast_ids(county) == sent_before
    for device in t03:
        _, rows = await duty1.api("GET", f"/api/devices/{device}/deliveries", expect=200)
        assert {r["broadcast_id"] for r in rows["deliveries"]} <= sent_before
        # (The drill and the level III sent before may still be starting here.)
        assert {e["broadcast_id"] for e in county.plays_started(device)} <= sent_before
    _, queue = await duty2.api("GET", "/api/approvals", expect=200)
    [item] = queue["approvals"]
    assert item["id"] == held["approval_id"] and item["why"]["townships"] == 3

    # The same officer cannot confirm it; the second one can, and then it plays.
    status, err = await duty1.api("POST", f"/api/approvals/{item['id']}/approve")
    assert status == 403 and err["error"]["code"] == "same_person"
    _, approved = await duty2.api("POST", f"/api/approvals/{item['id']}/approve", expect=201)
    assert approved["created_by"] == "duty1" and approved["approval"]["decided_by"] == "duty2"
    await county.wait_states(approved["id"], {"done"}, timeout_s=60)
    for device in t03:
        started = {e["broadcast_id"] for e in county.plays_started(device)}
        assert approved["id"] in started

    # An approved send had its second person: it does not count again (t01 and t02
    # with the approved t03 would be the county).
    await duty1.api("POST", "/api/broadcasts", json_body=to("t01"), expect=201)
    # Another officer's count is their own.
    await duty2.api("POST", "/api/broadcasts", json_body=to("t01", "t02"), expect=201)

    # A setting lowers the threshold below the whole county.
    county.controller.settings.two_person_min_townships = 2
    status, held = await duty2.api("POST", "/api/broadcasts", json_body=to("t03"))
    assert status == 202
    assert (held["why"]["townships"], held["why"]["of"], held["why"]["threshold"]) == (3, 3, 2)
    await county.api(
        "POST", "/api/broadcasts", json_body=to("t01", drill=True), expect=201
    )  # drills never wait

    _, audit = await county.api("GET", "/api/audit?action=broadcast.request_approval")
    assert [(e["actor"], e["detail"]["townships"]) for e in audit["entries"]] == [
        ("duty2", 3),
        ("duty1", 3),
    ]


@pytest.mark.broker
@pytest.mark.slow
async def test_schedules_cannot_split_the_county_either(
    make_county: Any, console_login: Any
) -> None:
    county = await make_county(villages=20, two_person_levels=(1, 2))  # t01 and t02
    duty1 = await console_login(county, "duty1")
    duty2 = await console_login(county, "duty2")
    daily = {"kind": "daily", "times": ["07:00"], "start_date": "2026-01-01"}

    def schedule(*townships: str, **change: Any) -> dict[str, Any]:
        return {**to(*townships, **change), "name": "泄洪预警", "recurrence": daily}

    async def listed() -> int:
        _, body = await county.api("GET", "/api/schedules", expect=200)
        return len(body["schedules"])

    # A real county-wide level I schedule is refused: a schedule cannot wait for anyone.
    for body in (schedule("t01", "t02"), {**schedule(), "targets": {"all": True}}):
        status, err = await duty1.api("POST", "/api/schedules", json_body=body)
        assert status == 403 and err["error"]["code"] == "two_person_rule"
        assert err["error"]["field"] == "priority"
        assert err["error"]["why"]["townships"] == 2
    # Nor can it be split into two schedules by the same officer.
    _, first = await duty1.api("POST", "/api/schedules", json_body=schedule("t01"), expect=201)
    status, err = await duty1.api("POST", "/api/schedules", json_body=schedule("t02"))
    assert status == 403 and err["error"]["code"] == "two_person_rule"
    assert err["error"]["why"]["schedules"] == [first["id"]]
    assert "other real emergency schedules" in err["error"]["message"]
    assert await listed() == 1
    # Editing the one schedule elsewhere is not adding a second.
    await duty1.api(
        "PATCH", f"/api/schedules/{first['id']}", json_body={"targets": {"townships": ["t02"]}}
    )
    # Drills and lower levels are scheduled freely.
    await duty1.api("POST", "/api/schedules", json_body=schedule("t01", drill=True), expect=201)
    await duty1.api("POST", "/api/schedules", json_body=schedule("t01", level=3), expect=201)

    # A recent real send counts towards a schedule, and the other way round.
    _, sent = await duty2.api("POST", "/api/broadcasts", json_body=to("t01"), expect=201)
    status, err = await duty2.api("POST", "/api/schedules", json_body=schedule("t02"))
    assert status == 403 and err["error"]["why"]["sends"] == [sent["id"]]
    assert await listed() == 3


# ----------------------------------------------------------------------------- counting


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: Any, tmp_path: Any) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'reach.db'}"
        db = Database(url)
        db.start()
        yield db
        db.stop()
        return
    for url in throwaway_postgres_url():  # skips, saying why, where there is no server
        db = Database(url)
        db.start()
        try:
            yield db
        finally:
            db.stop()


def test_what_counts_towards_an_officers_reach(database: Database) -> None:
    """`officer_reach` on both databases: the officer's real sends at the rule's levels
    starting within the window, their schedules' occurrences due then, and with
    schedules their other live real-emergency schedules; not drills, other levels, other
    officers, sends outside the window, approved sends, occurrences cancelled unsent, or
    the schedule being edited."""
    now = now_ms()
    minute = 60_000
    settings = Settings(demo=True, two_person_levels=(1, 2))

    def seed(session: Any) -> None:
        for n in (1, 2, 3):
            session.add(Township(id=f"t0{n}", name=f"乡{n}", lat=28.0, lon=112.0))
        session.flush()
        for n in (1, 2, 3):
            session.add(Village(id=f"v{n}", township_id=f"t0{n}", name=f"村{n}", lat=0, lon=0))
        session.flush()
        for n in (1, 2, 3):
            session.add(Device(id=f"d{n}", village_id=f"v{n}", township_id=f"t0{n}", name=""))
        session.add(
            Media(
                sha256="m", mime="audio/ogg", size=1, duration_ms=1, source="speech", created_ms=now
            )
        )
        session.flush()
        for sid, by, drill, status, townships in (
            ("S1", "duty1", False, "active", ["t02"]),
            ("S2", "duty1", True, "active", ["t03"]),
            ("S3", "duty1", False, "deleted", ["t03"]),
            ("S4", "duty2", False, "paused", ["t03"]),
        ):
            session.add(
                Schedule(
                    id=sid,
                    name=sid,
                    status=status,
                    created_ms=now,
                    created_by=by,
                    updated_ms=now,
                    updated_by=by,
                    township_ids=townships,
                    recurrence={},
                    media_sha256="m",
                    category="flood",
                    priority="emergency",
                    level=1,
                    drill=drill,
                    targets={},
                    target={},
                    expires_in_s=600,
                    misfire_grace_s=60,
                )
            )
        session.flush()
        sends = (
            # id, by, level, drill, start (min from now), status, sent, device
            ("b1", "duty1", 1, False, -5, "active", True, "d1"),
            ("b2", "duty1", 1, True, 0, "active", True, "d2"),  # a drill
            ("b3", "duty1", 3, False, 0, "active", True, "d2"),  # level III
            ("b4", "duty1", 1, False, -20, "finished", True, "d2"),  # outside the window
            ("b5", "duty2", 2, False, 0, "active", True, "d3"),  # another officer
            ("b6", "duty1", 1, False, 1, "cancelled", False, "d3"),  # cancelled unsent
            ("b7", "duty1", 1, False, 0, "active", True, "d3"),  # had a second officer
            ("b8", "duty1", 1, False, 3, "scheduled", False, "d2"),  # S1's occurrence
        )
        for bid, by, level, drill, start, status, sent, _device in sends:
            session.add(
                Broadcast(
                    id=bid,
                    created_ms=now - 30 * minute,
                    created_by=by,
                    media_sha256="m",
                    category="flood",
                    priority="emergency",
                    level=level,
                    drill=drill,
                    targets={},
                    target={},
                    start_at_ms=now + start * minute,
                    expires_at_ms=now + 60 * minute,
                    status=status,
                    command_id="c-" + bid if sent else "",
                )
            )
        session.flush()
        for bid, *_, device in sends:
            session.add(Delivery(broadcast_id=bid, device_id=device, updated_ms=now))
        session.add(
            Occurrence(
                id="b8",
                schedule_id="S1",
                due_ms=now + 3 * minute,
                expires_at_ms=now,
                broadcast_id="b8",
                created_ms=now,
                updated_ms=now,
            )
        )
        session.add(
            PendingBroadcast(
                id="req-1",
                created_ms=now,
                expires_ms=now,
                requested_by="duty1",
                requested_role="duty_officer",
                status="approved",
                body={},
                media_sha256="m",
                broadcast_id="b7",
            )
        )

    database.run_sync(seed)

    def reach(**kw: Any) -> Any:
        return database.run_sync(
            lambda s: officer_reach(
                s, settings, user="duty1", own=["t03"], total=3, around_ms=now, **kw
            )
        )

    sent = reach()
    assert set(sent.sends) == {"b1", "b8"} and sent.earlier == ("t01", "t02")
    assert (sent.together, sent.threshold, sent.held) == (3, 3, True)
    assert sent.schedules == ()
    editing = reach(except_schedule="S1")
    assert editing.sends == ("b1",) and not editing.held
    scheduled = reach(with_schedules=True, except_schedule="S1")
    assert scheduled.schedules == () and scheduled.earlier == ("t01",)
    everything = reach(with_schedules=True)
    assert everything.schedules == ("S1",) and everything.held
    # Outside any other send's window, and for an officer with nothing else: own only.
    alone = database.run_sync(
        lambda s: officer_reach(
            s, settings, user="duty1", own=["t03"], total=3, around_ms=now + 120 * minute
        )
    )
    assert (alone.sends, alone.earlier, alone.held) == ((), (), False)
