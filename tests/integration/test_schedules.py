"""Schedules on a real running county: real Mosquitto, real controller (SQLite,
APScheduler, espeak-ng), real agents on simulated hardware, real clocks.

Due times are a few seconds ahead of now, so every occurrence here really fires (or
really does not), and the terminals' own plays.jsonl says when they started.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import math
import time
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from controller.auth import Role, create_user_and_token
from controller.db import Database
from controller.models import AuditEntry
from controller.schedules.plan import occurrence_id
from dalaba import protocol as p

pytestmark = [pytest.mark.broker, pytest.mark.slow]

ZONE = ZoneInfo("Asia/Shanghai")
# "Plays at its due time", not a performance figure (bench/bench_schedules.py measures
# that): a terminal that played at some other moment would be off by seconds or more.


def local_in(seconds: float) -> datetime.datetime:
    """A whole-second local time at least `seconds` from now."""
    now = time.time() + seconds
    return datetime.datetime.fromtimestamp(math.ceil(now), ZONE)


def once(at: datetime.datetime) -> dict[str, Any]:
    return {"kind": "once", "times": [at.strftime("%H:%M:%S")], "start_date": at.date().isoformat()}


def ms(at: datetime.datetime) -> int:
    return int(at.timestamp() * 1000)


def hhmm(at: datetime.datetime) -> str:
    return at.strftime("%H:%M")


async def create(county: Any, token: str | None = None, **body: Any) -> dict[str, Any]:
    body.setdefault("category", "fire_prevention")
    body.setdefault("priority", "notice")
    body = {k: v for k, v in body.items() if v is not None}
    _, view = await county.api("POST", "/api/schedules", token=token, json_body=body, expect=201)
    return dict(view)


async def occurrences_of(county: Any, schedule_id: str) -> list[dict[str, Any]]:
    _, body = await county.api("GET", f"/api/schedules/{schedule_id}/occurrences", expect=200)
    return list(body["occurrences"])


async def wait_outcome(
    county: Any, schedule_id: str, outcomes: set[str], timeout_s: float = 30.0
) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    async def settled() -> bool:
        nonlocal found
        found = await occurrences_of(county, schedule_id)
        return bool(found) and found[0]["outcome"] in outcomes

    try:
        await county.wait_for(settled, timeout_s, f"{schedule_id} in {outcomes}")
    except AssertionError:
        raise AssertionError(f"{schedule_id}: {found}") from None
    return found[0]


async def _true(value: bool) -> bool:
    return value


async def assert_started_on_its_instant(
    county: Any, broadcast_id: str, device_id: str, due_ms: int
) -> None:
    """No timing window: the terminal never starts before the signed instant (its own
    clock is the simulator's true clock), and by its own report it did not start late
    (a late start carries `late_ms`, see docs/protocol.md)."""
    (start,) = starts(county, device_id, broadcast_id)
    assert start >= due_ms, (device_id, start - due_ms)
    view = await county.get_broadcast(broadcast_id)
    (row,) = [d for d in view["deliveries"] if d["device_id"] == device_id]
    playing = [t for t in row["transitions"] if t["state"] == "playing"]
    assert playing and all("late_ms" not in t for t in playing), playing


async def nothing_more_plays(county: Any, devices: list[str]) -> None:
    """Instead of sleeping "long enough": a broadcast sent after everything else queues
    behind whatever might still come, so once it is done anything fired twice would
    have played before it."""
    bid = await county.broadcast(
        text="测试结束。", category="meeting", targets={"devices": devices}
    )
    await county.wait_states(bid, {"done"}, 30)


def starts(county: Any, device_id: str, broadcast_id: str) -> list[int]:
    return [
        int(e["start_ms"]) for e in county.plays(device_id) if e["broadcast_id"] == broadcast_id
    ]


def tokens(county: Any) -> tuple[str, str]:
    db = Database(county.prepared.settings.db_url)
    db.start()
    try:
        staff = db.run_sync(lambda s: create_user_and_token(s, "clerk", Role.TOWNSHIP_STAFF, "t01"))
        viewer = db.run_sync(lambda s: create_user_and_token(s, "watcher", Role.VIEWER, None))
    finally:
        db.stop()
    return staff, viewer


def audit_actions(county: Any) -> list[str]:
    db = Database(county.prepared.settings.db_url)
    db.start()
    try:
        return db.run_sync(lambda s: [e.action for e in s.exec(AuditEntry.__table__.select())])
    finally:
        db.stop()


# ----------------------------------------------------------------------------- API


BAD_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"name": ""}, "name"),
    (
        {"recurrence": {"kind": "daily", "times": ["25:00"], "start_date": "2026-01-01"}},
        "recurrence.times[0]",
    ),
    (
        {"recurrence": {"kind": "yearly", "times": ["07:00"], "start_date": "2026-01-01"}},
        "recurrence.kind",
    ),
    (
        {
            "recurrence": {
                "kind": "daily",
                "times": ["07:00"],
                "start_date": "2026-01-01",
                "skip_date": [],
            }
        },
        "recurrence.skip_date",
    ),
    (
        {"recurrence": {"kind": "weekly", "times": ["07:00"], "start_date": "2026-01-01"}},
        "recurrence.weekdays",
    ),
    (
        {
            "recurrence": {
                "kind": "daily",
                "times": ["07:00"],
                "start_date": "2026-01-01",
                "timezone": "Mars/Base",
            }
        },
        "recurrence.timezone",
    ),
    ({"recurrence": "every day"}, "recurrence"),
    (
        {"recurrence": {"kind": "once", "times": ["07:00"], "start_date": "2020-01-01"}},
        "recurrence",
    ),
    ({"category": "volcano"}, "category"),
    ({"priority": "urgent"}, "priority"),
    ({"text": None}, "body"),
    ({"priority": "emergency"}, "body"),
    ({"targets": {"villages": ["nope"]}}, "targets.villages[0]"),
    ({"start_at": "2030-01-01T00:00:00Z"}, "start_at"),
    ({"misfire_grace_s": -1}, "misfire_grace_s"),
    ({"expires_in_s": 5}, "expires_in_s"),
    ({"colour": "red"}, "colour"),
    (
        {"text": None, "template": "fire_prevention_reminder", "params": {"nope": "x"}},
        "params.nope",
    ),
    ({"text": None, "template": "no_such_template"}, "template"),
]


async def test_schedule_api_validates_and_keeps_to_each_role(make_county):
    county = await make_county(villages=20)  # townships t01 and t02
    staff, viewer = tokens(county)
    skip_day = (datetime.datetime.now(ZONE) + datetime.timedelta(days=3)).date().isoformat()
    recurrence = {"kind": "daily", "times": ["07:00", "18:00"], "start_date": "2026-01-01"}
    good = {
        "name": "防火提醒",
        "recurrence": recurrence,
        "text": "天干物燥，小心火烛。",
        "category": "fire_prevention",
        "priority": "notice",
        "targets": {"villages": ["t01-v01"]},
    }
    for change, field in BAD_BODIES:
        body = {k: v for k, v in {**good, **change}.items() if v is not None}
        status, err = await county.api("POST", "/api/schedules", json_body=body)
        assert status == 400, (change, err)
        assert err["error"]["field"] == field, (change, err)
    _, listing = await county.api("GET", "/api/schedules", expect=200)
    assert listing["schedules"] == []  # nothing was stored

    # Township staff: their own township only; viewers: nothing.
    other = {**good, "targets": {"townships": ["t02"]}}
    status, err = await county.api("POST", "/api/schedules", token=staff, json_body=other)
    assert status == 403 and "t02" in err["error"]["message"]
    status, _ = await county.api(
        "POST", "/api/schedules", token=staff, json_body={**good, "targets": {"all": True}}
    )
    assert status == 403
    status, _ = await county.api("POST", "/api/schedules", token=viewer, json_body=good)
    assert status == 403
    mine = await create(county, token=staff, **good)
    assert mine["township_ids"] == ["t01"] and mine["editable"]

    county_wide = await create(
        county,
        name="县新闻",
        recurrence={"kind": "daily", "times": ["23:00"], "start_date": "2026-01-01"},
        text="县新闻节目。",
        category="news",
        priority="routine",
        targets={"all": True},
    )
    # Content from a template: its text filled in and its defaults applied.
    templated = await create(
        county,
        token=staff,
        name="防火期提醒",
        recurrence=recurrence,
        template="fire_prevention_reminder",
        params={"season": "关键期"},
        category=None,
        priority=None,
        targets={"townships": ["t01"]},
    )
    assert "关键期" in templated["text"] and templated["template"] == "fire_prevention_reminder"
    assert (templated["category"], templated["priority"]) == ("fire_prevention", "notice")
    status, retexted = await county.api(
        "PATCH", f"/api/schedules/{templated['id']}", token=staff, json_body={"text": "改为文字。"}
    )
    assert status == 200, retexted
    assert retexted["template"] is None and retexted["text"] == "改为文字。"
    await county.api("DELETE", f"/api/schedules/{templated['id']}", token=staff, expect=200)

    _, seen = await county.api("GET", "/api/schedules", token=staff, expect=200)
    by_id = {s["id"]: s for s in seen["schedules"]}
    assert set(by_id) == {mine["id"], county_wide["id"]}  # both play in t01
    assert not by_id[county_wide["id"]]["editable"]
    status, _ = await county.api(
        "PATCH", f"/api/schedules/{county_wide['id']}", token=staff, json_body={"name": "x"}
    )
    assert status == 403
    status, _ = await county.api("POST", f"/api/schedules/{county_wide['id']}/pause", token=staff)
    assert status == 403

    # Edit, pause, resume, delete; every change is audited.
    _, edited = await county.api(
        "PATCH",
        f"/api/schedules/{mine['id']}",
        token=staff,
        json_body={
            "text": "秋冬季节，注意防火。",
            "recurrence": {**recurrence, "skip_dates": [skip_day]},
        },
        expect=200,
    )
    assert edited["version"] == 2 and edited["text"] == "秋冬季节，注意防火。"
    assert edited["media_id"] != mine["media_id"]
    status, err = await county.api(
        "PATCH",
        f"/api/schedules/{mine['id']}",
        token=staff,
        json_body={"targets": {"townships": ["t02"]}},
    )
    assert status == 403
    _, paused = await county.api(
        "POST", f"/api/schedules/{mine['id']}/pause", token=staff, expect=200
    )
    assert paused["status"] == "paused" and paused["next"] == []
    status, _ = await county.api("POST", f"/api/schedules/{mine['id']}/pause", token=staff)
    assert status == 409
    _, resumed = await county.api(
        "POST", f"/api/schedules/{mine['id']}/resume", token=staff, expect=200
    )
    assert resumed["status"] == "active" and len(resumed["next"]) == 5

    # A duty officer cancels one coming occurrence as a broadcast: it is recorded, and
    # the terminal's local schedule loses it.
    agent = county.fleet.agents["d-t01-v01-1"]
    _, occs = await county.api("GET", f"/api/schedules/{mine['id']}/occurrences", expect=200)
    coming = occs["occurrences"][-1]["id"]  # the earliest
    await county.wait_for(lambda: _true(coming in agent.schedule.items), 5, "the pushed item")
    await county.api("POST", f"/api/broadcasts/{coming}/cancel", expect=200)

    async def withdrawn() -> bool:
        _, body = await county.api("GET", f"/api/schedules/{mine['id']}/occurrences")
        outcome = {o["id"]: o["outcome"] for o in body["occurrences"]}[coming]
        return outcome == "cancelled" and coming not in agent.schedule.items

    await county.wait_for(withdrawn, 5, "the occurrence withdrawn")

    _, nxt = await county.api("GET", f"/api/schedules/{mine['id']}/next?count=4", expect=200)
    times = [datetime.datetime.fromisoformat(n["at"]).astimezone(ZONE) for n in nxt["next"]]
    assert len(times) == 4 and {t.strftime("%H:%M") for t in times} == {"07:00", "18:00"}
    status, err = await county.api("GET", f"/api/schedules/{mine['id']}/next?count=0")
    assert status == 400 and err["error"]["field"] == "count"

    # Quiet hours: per township, by its own staff; they silence routine programmes there.
    status, _ = await county.api(
        "PUT",
        "/api/townships/t02/quiet-hours",
        token=staff,
        json_body={"start": "22:00", "end": "06:30"},
    )
    assert status == 403
    status, err = await county.api(
        "PUT",
        "/api/townships/t01/quiet-hours",
        token=staff,
        json_body={"start": "25:00", "end": "06:30"},
    )
    assert status == 400 and err["error"]["field"] == "start"
    _, quiet = await county.api(
        "PUT",
        "/api/townships/t01/quiet-hours",
        token=staff,
        json_body={"start": "22:00", "end": "06:30"},
        expect=200,
    )
    assert quiet == {"township_id": "t01", "start": "22:00", "end": "06:30"}
    _, nxt = await county.api("GET", f"/api/schedules/{county_wide['id']}/next?count=2", expect=200)
    for n in nxt["next"]:
        assert n["plays"]  # in t02
        assert len(n["suppressed"]) == 1 and "township t01" in n["suppressed"][0]

    status, _ = await county.api("GET", "/api/townships/t02/timeline", token=staff)
    assert status == 403
    _, day = await county.api(
        "GET", f"/api/townships/t01/timeline?date={skip_day}", token=staff, expect=200
    )
    kinds = {(e["schedule_id"], e["local_time"], e["outcome"]) for e in day["entries"]}
    assert (mine["id"], "07:00:00", "skipped") in kinds
    assert (county_wide["id"], "23:00:00", "suppressed") in kinds
    status, err = await county.api("GET", "/api/townships/t01/timeline?date=tomorrow")
    assert status == 400 and err["error"]["field"] == "date"

    _, gone = await county.api("DELETE", f"/api/schedules/{mine['id']}", token=staff, expect=200)
    assert gone["status"] == "deleted"
    _, listing = await county.api("GET", "/api/schedules", token=staff, expect=200)
    assert [s["id"] for s in listing["schedules"]] == [county_wide["id"]]
    actions = audit_actions(county)
    for action in (
        "schedule.create",
        "schedule.update",
        "schedule.pause",
        "schedule.resume",
        "schedule.delete",
        "township.quiet_hours",
    ):
        assert action in actions, action


# ------------------------------------------------------------------------- firing


async def test_schedules_fire_on_time_queue_by_priority_and_respect_quiet_hours(make_county):
    county = await make_county(villages=20)
    now = datetime.datetime.now(ZONE)
    # t02 is in quiet hours right now; t01 is not.
    await county.api(
        "PUT",
        "/api/townships/t02/quiet-hours",
        json_body={
            "start": hhmm(now - datetime.timedelta(hours=1)),
            "end": hhmm(now + datetime.timedelta(hours=1)),
        },
        expect=200,
    )
    due = local_in(8)
    notice = await create(
        county,
        name="村务通知",
        recurrence=once(due),
        text="村务通知。",
        targets={"villages": ["t01-v01"]},
    )
    routine = await create(
        county,
        name="广播体操",
        recurrence=once(due),
        text="广播节目。",
        category="civility",
        priority="routine",
        targets={"villages": ["t01-v01"]},
    )
    quiet = await create(
        county,
        name="夜间通知",
        recurrence=once(due),
        text="夜间通知。",
        targets={"townships": ["t02"]},
    )
    warning = await create(
        county,
        name="山洪预警",
        recurrence=once(due),
        text="山洪蓝色预警。",
        category="flood",
        priority="emergency",
        level=4,
        targets={"villages": ["t02-v01"]},
    )
    assert warning["priority"] == "emergency"

    fired = await wait_outcome(county, notice["id"], {"fired"}, 20)
    assert fired["late_ms"] == 0 and fired["dispatch"] == "published"
    assert (await wait_outcome(county, routine["id"], {"fired"}, 5))["late_ms"] == 0
    assert (await wait_outcome(county, warning["id"], {"fired"}, 5))["late_ms"] == 0
    silenced = await wait_outcome(county, quiet["id"], {"suppressed"}, 5)
    assert "quiet hours" in silenced["reason"] and silenced["broadcast_id"] is None

    device = "d-t01-v01-1"
    n_id, r_id = occurrence_id(notice["id"], ms(due)), occurrence_id(routine["id"], ms(due))
    w_id = occurrence_id(warning["id"], ms(due))
    await county.wait_states(n_id, {"done"}, 30)
    await county.wait_states(r_id, {"done"}, 30)
    await county.wait_states(w_id, {"done"}, 30)

    # Both occurrences at the same instant reached the terminal; the notice outranks the
    # routine programme and starts on the instant, the routine one right after it.
    plays = [e for e in county.plays(device) if e["broadcast_id"] in (n_id, r_id)]
    assert [e["broadcast_id"] for e in plays] == [n_id, r_id]
    assert all(e["completed"] for e in plays)
    await assert_started_on_its_instant(county, n_id, device, ms(due))
    assert plays[1]["start_ms"] >= plays[0]["end_ms"]
    # The emergency plays in quiet hours; the notice there does not play anywhere.
    await assert_started_on_its_instant(county, w_id, "d-t02-v01-1", ms(due))
    quiet_id = occurrence_id(quiet["id"], ms(due))
    assert all(not starts(county, d, quiet_id) for d in county.fleet.agents)

    _, day = await county.api("GET", f"/api/townships/t01/timeline?date={due.date()}", expect=200)
    entries = {e["occurrence_id"]: e for e in day["entries"]}
    assert entries[n_id]["conflicts_with"] == [r_id]
    assert entries[n_id]["deliveries"] == {"done": 1}
    _, day2 = await county.api("GET", f"/api/townships/t02/timeline?date={due.date()}", expect=200)
    outcomes = {e["occurrence_id"]: e["outcome"] for e in day2["entries"]}
    assert outcomes[quiet_id] == "suppressed" and outcomes[w_id] == "fired"


# ------------------------------------------------------------------ broker outage


async def test_terminals_play_their_local_schedule_while_the_broker_is_down(make_county):
    county = await make_county(villages=6)
    devices = sorted(county.fleet.agents)
    due = local_in(7)
    schedule = await create(
        county,
        name="防火提醒",
        recurrence=once(due),
        text="请勿野外用火。",
        targets={"townships": ["t01"]},
    )
    occ = occurrence_id(schedule["id"], ms(due))

    async def everyone_ready() -> bool:
        return all(
            occ in a.schedule.items and a.cache.has(schedule["media_id"])
            for a in county.fleet.agents.values()
        )

    await county.wait_for(everyone_ready, 6, "every terminal holding the occurrence and its audio")
    # Down from before the controller's fire time (3 s ahead) until the plays are over;
    # kept short, as the terminals' reconnect backoff doubles with every refusal.
    await asyncio.sleep(max(0.0, ms(due) - 4500 - time.time() * 1000) / 1000)
    county.prepared.broker.stop()
    try:

        async def everyone_played() -> bool:
            return all(starts(county, d, occ) for d in devices)

        await county.wait_for(everyone_played, 20, "every terminal playing from its own clock")
        for d in devices:
            (start,) = starts(county, d, occ)
            assert start >= ms(due), (d, start - ms(due))  # from its own clock, not early
            assert not county.fleet.agents[d].connected
    finally:
        await county.prepared.broker.start_async()

    # Reports were queued on the terminals; they arrive once the broker is back.
    view = await county.wait_states(occ, {"done"}, timeout_s=45)
    for d in view["deliveries"]:
        assert any(t.get("offline") for t in d["transitions"]), d
    settled = await wait_outcome(county, schedule["id"], {"played_offline"}, 10)
    assert "local schedule" in settled["reason"]
    for d in devices:
        assert len(starts(county, d, occ)) == 1  # the late play command changed nothing


# ------------------------------------------------------------------ controller restart


async def test_controller_restart_across_a_due_time_plays_once_and_records_once(make_county):
    county = await make_county(villages=4)
    plays_sent: list[str] = []

    def count_plays(_topic: str, payload: bytes) -> None:
        envelope = p.SignedEnvelope.model_validate_json(payload)
        command = p.Command.model_validate_json(base64.b64decode(envelope.payload))
        if isinstance(command.body, p.PlayBody):
            plays_sent.append(command.body.broadcast_id)

    listener = await county.attacker(subscribe=p.Topics.ALL_COMMANDS, on_message=count_plays)
    before = local_in(5)
    early = await create(
        county,
        name="早",
        recurrence=once(before),
        text="早间通知。",
        targets={"villages": ["t01-v01"]},
    )
    early_id = occurrence_id(early["id"], ms(before))
    first = await wait_outcome(county, early["id"], {"fired"}, 15)
    await county.wait_states(early_id, {"done"}, 20)

    across = local_in(9)
    late = await create(
        county,
        name="迟",
        recurrence=once(across),
        text="午间通知。",
        targets={"villages": ["t01-v02"]},
    )
    strict = await create(
        county,
        name="严",
        recurrence=once(across),
        text="会议通知。",
        category="meeting",
        misfire_grace_s=1,
        targets={"villages": ["t01-v03"]},
    )
    late_id = occurrence_id(late["id"], ms(across))
    strict_id = occurrence_id(strict["id"], ms(across))

    async def holding() -> bool:
        agents = county.fleet.agents
        return late_id in agents["d-t01-v02-1"].schedule.items and (
            strict_id in agents["d-t01-v03-1"].schedule.items
        )

    await county.wait_for(holding, 5, "the terminals holding the coming occurrences")
    # Down from before the fire time of `across` (3 s ahead of it) until after it.
    await asyncio.sleep(max(0.0, ms(across) - 5000 - time.time() * 1000) / 1000)
    assert ms(across) - time.time() * 1000 > 3500, "too slow to stop before the fire time"
    await county.controller.stop()
    await asyncio.sleep(max(0.0, ms(across) + 3000 - time.time() * 1000) / 1000)

    async def both_played() -> bool:  # plays.jsonl gets a line when a play ends
        return bool(
            starts(county, "d-t01-v02-1", late_id) and starts(county, "d-t01-v03-1", strict_id)
        )

    await county.wait_for(both_played, 10, "terminals playing from their own clock")
    await county.controller.start()

    # Within its grace, `late` is fired on restart (terminals that already played it
    # from their local schedule ignore the command); `strict` is past its grace: missed,
    # then shown as played offline once the terminals' reports come in.
    refired = await wait_outcome(county, late["id"], {"fired"}, 15)
    assert refired["late_ms"] > 0 and "restart" in refired["reason"]
    settled = await wait_outcome(county, strict["id"], {"played_offline"}, 15)
    assert "not running" in settled["reason"] and "grace of 1 s" in settled["reason"]
    await county.wait_states(late_id, {"done"}, 20)
    await county.wait_states(strict_id, {"done"}, 20)
    await nothing_more_plays(county, ["d-t01-v01-1", "d-t01-v02-1", "d-t01-v03-1"])

    for device, occ in (
        ("d-t01-v01-1", early_id),
        ("d-t01-v02-1", late_id),
        ("d-t01-v03-1", strict_id),
    ):
        played = starts(county, device, occ)
        assert len(played) == 1, (device, played)
    assert starts(county, "d-t01-v02-1", late_id)[0] >= ms(across)
    assert plays_sent.count(early_id) == 1
    assert plays_sent.count(late_id) == 1
    assert plays_sent.count(strict_id) == 0
    for schedule in (early, late, strict):
        assert len(await occurrences_of(county, schedule["id"])) == 1
    (again,) = await occurrences_of(county, early["id"])
    assert again["fired_at"] == first["fired_at"] and again["outcome"] == "fired"
    await listener.stop()
