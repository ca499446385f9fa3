"""The console's API against a real county: logins (argon2, cookie, CSRF, lock-out),
users, the two-person rule, records and CSV, the audit log, groups, live events and
device control."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]

NOTICE = {"text": "村委会通知：明早九点开会。", "category": "meeting", "priority": "notice"}


async def test_login_cookie_csrf_logout_and_bearer_still_works(make_county, console_login):
    county = await make_county(villages=4)
    duty = await console_login(county, "duty1")
    assert duty.me["role"] == "duty_officer" and duty.me["county_wide"]

    # The cookie is HttpOnly and SameSite=Strict; the server keeps only its hash.
    async with duty.http.post(
        county.url + "/api/session/login",
        json={"name": "duty1", "password": county.prepared.console_users["duty1"][2]},
    ) as resp:
        cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    _, me = await duty.api("GET", "/api/session", expect=200)
    duty.csrf = me["csrf_token"]

    body = {**NOTICE, "targets": {"villages": ["t01-v01"]}}
    status, err = await duty.api("POST", "/api/broadcasts", json_body=body, csrf=False)
    assert status == 403 and err["error"]["code"] == "csrf"
    saved, duty.csrf = duty.csrf, "forged"
    status, err = await duty.api("POST", "/api/broadcasts", json_body=body)
    assert status == 403 and err["error"]["field"] == "X-CSRF-Token"
    duty.csrf = saved
    _, created = await duty.api("POST", "/api/broadcasts", json_body=body, expect=201)
    _, view = await county.api("GET", f"/api/broadcasts/{created['id']}", expect=200)
    assert view["created_by"] == "duty1"

    # Reads need no CSRF token; machines keep using bearer tokens with no CSRF at all.
    await duty.api("GET", "/api/devices", csrf=False, expect=200)
    await county.broadcast(**{**NOTICE, "targets": {"villages": ["t01-v02"]}})

    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.post(
            county.url + "/api/session/login", data="name=duty1&password=x"
        ) as resp:
            assert resp.status == 415
        async with anonymous.post(
            county.url + "/api/session/login", json={"name": "duty1", "password": "wrong-pw"}
        ) as resp:
            err = await resp.json()
            assert resp.status == 401 and err["error"]["code"] == "invalid_credentials"
        async with anonymous.post(
            county.url + "/api/session/login", json={"name": "nobody", "password": "wrong-pw"}
        ) as resp:
            assert resp.status == 401  # same answer: names are not revealed

    await duty.api("POST", "/api/session/logout", expect=200)
    status, _ = await duty.api("GET", "/api/session")
    assert status == 401

    _, audit = await county.api("GET", "/api/audit?action=session.")
    actions = [(e["actor"], e["action"]) for e in audit["entries"]]
    assert ("duty1", "session.login") in actions and ("duty1", "session.logout") in actions
    assert ("duty1", "session.login_failed") in actions


async def test_admin_manages_users_and_a_clerk_sees_only_their_township(make_county, console_login):
    county = await make_county(villages=20)  # t01 and t02
    admin = await console_login(county, "demo-admin")
    duty = await console_login(county, "duty1")

    status, err = await duty.api(
        "POST",
        "/api/users",
        json_body={"name": "x", "role": "viewer", "password": "long-enough-1"},
    )
    assert status == 403
    for body, field in (
        ({"name": "c2", "role": "township_staff", "password": "long-enough-1"}, "township_id"),
        (
            {
                "name": "c2",
                "role": "township_staff",
                "township_id": "t99",
                "password": "pw-pw-pw-1",
            },
            "township_id",
        ),
        ({"name": "c2", "role": "boss", "password": "long-enough-1"}, "role"),
        ({"name": "c2", "role": "viewer", "password": "short"}, "password"),
    ):
        status, err = await admin.api("POST", "/api/users", json_body=body)
        assert status == 400 and err["error"]["field"] == field, err
    _, created = await admin.api(
        "POST",
        "/api/users",
        json_body={
            "name": "clerk-t02",
            "role": "township_staff",
            "township_id": "t02",
            "password": "river-bank-42",
        },
        expect=201,
    )
    await admin.api(
        "POST",
        "/api/users",
        json_body={"name": "clerk-t02", "role": "viewer", "password": "river-bank-42"},
        expect=409,
    )
    clerk = await console_login(county, "clerk-t02", "river-bank-42")
    assert clerk.me["township_id"] == "t02" and not clerk.me["county_wide"]
    _, villages = await clerk.api("GET", "/api/villages", expect=200)
    assert {v["township_id"] for v in villages["villages"]} == {"t02"}
    status, _ = await clerk.api(
        "POST", "/api/broadcasts", json_body={**NOTICE, "targets": {"villages": ["t01-v01"]}}
    )
    assert status == 403
    await clerk.api(
        "POST",
        "/api/broadcasts",
        json_body={**NOTICE, "targets": {"villages": ["t02-v01"]}},
        expect=201,
    )

    # Disabling ends the open session at once.
    await admin.api(
        "PATCH", f"/api/users/{created['id']}", json_body={"disabled": True}, expect=200
    )
    status, _ = await clerk.api("GET", "/api/villages")
    assert status == 401
    status, _ = await clerk.login("river-bank-42")
    assert status == 401
    _, users = await admin.api("GET", "/api/users", expect=200)
    by_name = {u["name"]: u for u in users["users"]}
    assert by_name["clerk-t02"]["disabled"] and "password_hash" not in by_name["clerk-t02"]
    _, audit = await admin.api("GET", "/api/audit?action=user.")
    assert [e["action"] for e in audit["entries"]][:2] == ["user.update", "user.create"]


async def test_two_person_rule_for_real_county_wide_emergencies(make_county, console_login):
    county = await make_county(villages=20, two_person_levels=(1, 2))
    duty1 = await console_login(county, "duty1")
    duty2 = await console_login(county, "duty2")
    clerk = await console_login(county, "clerk-t01")
    real = {
        "text": "紧急通知：水库泄洪，请沿河村民立即转移。",
        "category": "flood",
        "priority": "emergency",
        "level": 1,
        "repeat": 1,
        "targets": {"all": True},
    }
    status, pending = await duty1.api("POST", "/api/broadcasts", json_body=real)
    assert status == 202, pending
    assert pending["status"] == "pending_approval"
    approval_id = pending["approval_id"]
    _, listing = await county.api("GET", "/api/broadcasts")
    assert listing["broadcasts"] == []  # nothing went out

    # The second officer sees it in the queue and can play the exact audio.
    _, queue = await duty2.api("GET", "/api/approvals", expect=200)
    [item] = queue["approvals"]
    assert item["id"] == approval_id and item["requested_by"] == "duty1"
    assert item["level"] == 1 and not item["drill"] and item["townships"] == ["t01", "t02"]
    async with duty2.http.get(county.url + item["media_url"]) as resp:
        assert resp.status == 200 and (await resp.read()).startswith(b"OggS")
    status, _ = await clerk.api("GET", "/api/approvals")
    assert status == 403

    status, err = await duty1.api("POST", f"/api/approvals/{approval_id}/approve")
    assert status == 403 and err["error"]["code"] == "same_person"
    status, created = await duty2.api("POST", f"/api/approvals/{approval_id}/approve")
    assert status == 201, created
    assert created["created_by"] == "duty1" and created["approval"]["decided_by"] == "duty2"
    assert created["media_id"] == item["media_id"]  # what the second officer heard
    status, _ = await duty2.api("POST", f"/api/approvals/{approval_id}/approve")
    assert status == 409
    await county.wait_states(created["id"], {"done"}, timeout_s=60)

    # Drills, lower levels and smaller areas go straight out.
    await duty1.api("POST", "/api/broadcasts", json_body={**real, "drill": True}, expect=201)
    await duty1.api("POST", "/api/broadcasts", json_body={**real, "level": 3}, expect=201)
    await duty1.api(
        "POST",
        "/api/broadcasts",
        json_body={**real, "targets": {"townships": ["t01"]}},
        expect=201,
    )
    # Both townships named one by one is still the whole county; bearer tokens too.
    status, second = await county.api(
        "POST", "/api/broadcasts", json_body={**real, "targets": {"townships": ["t01", "t02"]}}
    )
    assert status == 202
    status, rejected = await duty2.api(
        "POST",
        f"/api/approvals/{second['approval_id']}/reject",
        json_body={"reason": "无汛情，误操作"},
    )
    assert status == 200 and rejected["status"] == "rejected"
    status, third = await duty1.api("POST", "/api/broadcasts", json_body=real)
    assert status == 202
    _, withdrawn = await duty1.api(
        "POST", f"/api/approvals/{third['approval_id']}/reject", expect=200
    )
    assert withdrawn["status"] == "withdrawn"

    _, audit = await county.api("GET", "/api/audit?action=approval.")
    assert [(e["actor"], e["action"]) for e in audit["entries"]] == [
        ("duty1", "approval.withdraw"),
        ("duty2", "approval.reject"),
        ("duty2", "approval.approve"),
    ]
    _, requests = await county.api("GET", "/api/audit?action=broadcast.request_approval")
    assert len(requests["entries"]) == 3


async def test_records_filter_and_export_per_village_outcomes(make_county, console_login):
    county = await make_county(villages=20)
    clerk = await console_login(county, "clerk-t01")
    drill = await county.broadcast(
        text="演练：山洪预警。",
        category="flood",
        priority="emergency",
        level=2,
        repeat=1,
        drill=True,
        targets={"townships": ["t01"]},
    )
    notice = await county.broadcast(**{**NOTICE, "targets": {"townships": ["t02"]}})
    await county.wait_states(drill, {"done"}, timeout_s=60)
    await county.wait_states(notice, {"done"}, timeout_s=60)

    async def ids(query: str, client: Any = None) -> list[str]:
        if client is None:
            _, body = await county.api("GET", "/api/records/broadcasts" + query, expect=200)
        else:
            _, body = await client.api("GET", "/api/records/broadcasts" + query, expect=200)
        return [b["id"] for b in body["broadcasts"]]

    today = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    assert await ids("") == [notice, drill]
    assert await ids("?drill=true") == [drill]
    assert await ids("?drill=false") == [notice]
    assert await ids("?township=t02") == [notice]
    assert await ids("?category=flood") == [drill]
    assert await ids(f"?from={today}&to={today}") == [notice, drill]
    assert await ids(f"?from={today + timedelta(days=1)}") == []
    assert await ids("?q=山洪") == [drill]
    assert await ids("", clerk) == [drill]
    status, err = await clerk.api("GET", "/api/records/broadcasts?township=t02")
    assert status == 400 and err["error"]["field"] == "township"
    status, err = await county.api("GET", "/api/records/broadcasts?drill=maybe")
    assert status == 400 and err["error"]["field"] == "drill"

    _, page = await county.api("GET", "/api/records/broadcasts?drill=true", expect=200)
    [row] = page["broadcasts"]
    t01_terminals = sum(
        v.terminals for v in county.prepared.county.villages if v.township_id == "t01"
    )
    assert row["outcomes"] == {"done": t01_terminals} and row["townships"] == ["t01"]

    async with county.http.get(
        county.url + "/api/records/broadcasts.csv", headers=county.headers()
    ) as resp:
        assert resp.status == 200 and resp.content_type == "text/csv"
        assert "attachment" in resp.headers["Content-Disposition"]
        raw = await resp.read()
    assert raw.startswith("\ufeff".encode())
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert len(rows) == len(county.fleet.agents)
    village_names = {v.id: v.name for v in county.prepared.county.villages}
    for r in rows:
        assert r["state"] == "done" and r["village"] == village_names[r["village_id"]]
        assert r["drill"] == ("drill" if r["broadcast_id"] == drill else "real")
    _, clerk_csv = await clerk.api("GET", "/api/records/broadcasts.csv")
    clerk_rows = list(csv.DictReader(io.StringIO(clerk_csv.lstrip("\ufeff"))))
    assert {r["township_id"] for r in clerk_rows} == {"t01"}

    _, audit = await county.api("GET", "/api/audit?action=broadcast.create", expect=200)
    assert [e["target"] for e in audit["entries"]] == [notice, drill]
    assert audit["entries"][0]["actor"] == "demo-admin"
    _, own = await clerk.api("GET", "/api/audit", expect=200)
    assert {e["actor"] for e in own["entries"]} == {"clerk-t01"}
    async with county.http.get(county.url + "/api/audit.csv", headers=county.headers()) as resp:
        text = (await resp.read()).decode("utf-8-sig")
    assert text.splitlines()[0] == "at,actor,role,action,target,detail"


async def test_groups_are_kept_per_township(make_county, console_login):
    county = await make_county(villages=20)
    duty = await console_login(county, "duty1")
    clerk = await console_login(county, "clerk-t01")
    _, groups = await duty.api("GET", "/api/groups", expect=200)
    riverside = [g for g in groups["groups"] if "riverside" in g["name"]]
    assert riverside and riverside[0]["township_id"] is None

    _, county_group = await duty.api(
        "POST",
        "/api/groups",
        json_body={"name": "两镇交界", "villages": ["t01-v01", "t02-v01"]},
        expect=201,
    )
    assert county_group["townships"] == ["t01", "t02"]
    status, err = await clerk.api(
        "POST", "/api/groups", json_body={"name": "越界", "villages": ["t01-v01", "t02-v01"]}
    )
    assert status == 403 and "villages[1]" in err["error"]["message"]
    status, err = await clerk.api(
        "POST", "/api/groups", json_body={"name": "x", "villages": ["nope"]}
    )
    assert status == 400 and err["error"]["field"] == "villages[0]"
    _, own = await clerk.api(
        "POST",
        "/api/groups",
        json_body={"name": "山脚组", "villages": ["t01-v02", "t01-v03"]},
        expect=201,
    )
    assert own["township_id"] == "t01"
    _, seen = await clerk.api("GET", "/api/groups", expect=200)
    assert [g["name"] for g in seen["groups"]] == ["山脚组"]
    status, _ = await clerk.api("DELETE", f"/api/groups/{county_group['id']}")
    assert status == 403
    await clerk.api("DELETE", f"/api/groups/{own['id']}", expect=200)


async def _read_events(
    resp: aiohttp.ClientResponse, into: list[tuple[str, dict[str, Any]]]
) -> None:
    kind = None
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: ") and kind:
            into.append((kind, json.loads(line[6:])))


async def test_live_events_follow_deliveries_within_each_role_s_reach(make_county, console_login):
    county = await make_county(villages=20)
    duty = await console_login(county, "duty1")
    clerk = await console_login(county, "clerk-t01")
    seen_duty: list[tuple[str, dict[str, Any]]] = []
    seen_clerk: list[tuple[str, dict[str, Any]]] = []
    resp_duty = await duty.http.get(county.url + "/api/live")
    resp_clerk = await clerk.http.get(county.url + "/api/live")
    assert resp_duty.headers["Content-Type"].startswith("text/event-stream")
    readers = [
        asyncio.create_task(_read_events(resp_duty, seen_duty)),
        asyncio.create_task(_read_events(resp_clerk, seen_clerk)),
    ]
    try:
        await county.wait_for(
            lambda: _true(len(seen_duty) >= 1 and len(seen_clerk) >= 1), 5, "hello"
        )
        t02 = await county.broadcast(**{**NOTICE, "targets": {"townships": ["t02"]}})
        await county.wait_states(t02, {"done"}, timeout_s=60)
        t01 = await county.broadcast(**{**NOTICE, "targets": {"villages": ["t01-v01"]}})
        await county.wait_states(t01, {"done"}, timeout_s=60)
        await asyncio.sleep(0.5)
    finally:
        for task in readers:
            task.cancel()
        resp_duty.close()
        resp_clerk.close()

    def done(events: list[tuple[str, dict[str, Any]]], bid: str) -> set[str]:
        return {
            d["device_id"]
            for k, d in events
            if k == "delivery" and d["broadcast_id"] == bid and d["state"] == "done"
        }

    t02_devices = {d for d in county.fleet.agents if d.startswith("d-t02-")}
    assert done(seen_duty, t02) == t02_devices
    assert done(seen_duty, t01) == {"d-t01-v01-1"}
    assert done(seen_clerk, t02) == set()
    assert done(seen_clerk, t01) == {"d-t01-v01-1"}
    states = [d["state"] for k, d in seen_duty if k == "delivery" and d["broadcast_id"] == t01]
    assert states == ["received", "fetched", "playing", "done"]
    created = [d["id"] for k, d in seen_duty if k == "broadcast"]
    assert created == [t02, t01]
    assert [d["id"] for k, d in seen_clerk if k == "broadcast"] == [t01]
    for _, data in seen_duty[1:]:
        if "device_id" in data:
            assert data["township_id"] in ("t01", "t02") and data["village_id"]


async def _true(value: bool) -> bool:
    return value


async def test_volume_test_tone_telemetry_and_last_deliveries(make_county, console_login):
    county = await make_county(villages=20)
    tech = await console_login(county, "duty1")
    clerk = await console_login(county, "clerk-t01")
    device = "d-t01-v02-1"

    status, err = await tech.api("POST", f"/api/devices/{device}/volume", json_body={})
    assert status == 400 and err["error"]["field"] == "body"
    status, err = await tech.api(
        "POST", f"/api/devices/{device}/volume", json_body={"normal_volume": 101}
    )
    assert status == 400 and err["error"]["field"] == "normal_volume"
    status, err = await clerk.api(
        "POST", "/api/devices/d-t02-v01-1/volume", json_body={"normal_volume": 30}
    )
    assert status == 403
    _, sent = await tech.api(
        "POST",
        f"/api/devices/{device}/volume",
        json_body={"normal_volume": 35, "emergency_volume": 90},
        expect=202,
    )
    assert sent["published"]

    async def volume_applied() -> bool:
        _, d = await county.api("GET", f"/api/devices/{device}")
        return bool(d["volume"] == 35)

    await county.wait_for(volume_applied, 15, "the terminal reporting volume 35")
    agent = county.fleet.agents[device]
    assert (agent.normal_volume, agent.emergency_volume) == (35, 90)

    _, tone = await tech.api("POST", f"/api/devices/{device}/test-tone", expect=201)
    await county.wait_states(tone["id"], {device: "done"}, timeout_s=30)
    [played] = [e for e in county.plays(device) if e["broadcast_id"] == tone["id"]]
    assert played["completed"] and played["volume"] == 35

    _, deliveries = await clerk.api("GET", f"/api/devices/{device}/deliveries", expect=200)
    assert deliveries["deliveries"][0]["broadcast_id"] == tone["id"]
    assert deliveries["deliveries"][0]["states"][-1] == "done"
    assert "test tone" in deliveries["deliveries"][0]["title"]
    _, history = await tech.api("GET", f"/api/devices/{device}/telemetry", expect=200)
    assert history["samples"] and "temperature_c" in history["samples"][-1]
    status, _ = await clerk.api("GET", "/api/devices/d-t02-v01-1/telemetry")
    assert status == 403

    _, audit = await county.api("GET", f"/api/audit?target={device}")
    assert [e["action"] for e in audit["entries"]] == ["device.volume"]
    assert audit["entries"][0]["detail"]["normal_volume"] == 35
