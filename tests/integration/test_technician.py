"""The technician role against a real controller, broker and fleet: terminal control
(volume, test tone, diagnostics, resending a broadcast to the terminals it did not reach)
and the health views, and no way to broadcast, schedule, approve or manage users."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TECH = ("tech.zhang", "pole-climber-88")
TEXT = "防汛通知：请沿河群众注意安全，远离河道。"


async def test_a_technician_controls_terminals_and_cannot_broadcast(
    make_county: Any, console_login: Any
) -> None:
    county = await make_county(villages=3)
    terminals = sorted(county.fleet.agents)
    device, victim = terminals[0], terminals[1]
    admin = await console_login(county, "demo-admin")
    await admin.api(
        "POST",
        "/api/users",
        json_body={"name": TECH[0], "role": "technician", "password": TECH[1]},
        expect=201,
    )
    await admin.api(
        "POST",
        "/api/users",
        json_body={"name": "watcher", "role": "viewer", "password": "river-gauge-reader"},
        expect=201,
    )
    tech = await console_login(county, *TECH)
    viewer = await console_login(county, "watcher", "river-gauge-reader")
    duty = await console_login(county, "duty1")
    me = tech.me
    assert me["role"] == "technician" and me["county_wide"]
    assert me["can_control_terminals"] and not me["can_broadcast"]
    assert not me["can_approve"] and not me["can_manage_users"]

    # No broadcasting by any door, no approvals, no users.
    notice = {"text": TEXT, "category": "flood", "priority": "notice", "targets": {"all": True}}
    schedule = {
        **notice,
        "name": "每日提醒",
        "recurrence": {"kind": "daily", "times": ["07:00"], "start_date": "2026-01-01"},
    }
    for method, path, body in (
        ("POST", "/api/broadcasts", notice),
        ("POST", "/api/preview", notice),
        ("POST", "/api/schedules", schedule),
        ("POST", "/api/groups", {"name": "g", "villages": ["t01-v01"]}),
        ("POST", "/api/approvals/req-000000000000/approve", {}),
        ("GET", "/api/users", None),
        ("POST", "/api/users/duty1/unlock", None),
    ):
        status, err = await tech.api(method, path, json_body=body)
        assert status == 403, (path, status, err)
    _, listing = await county.api("GET", "/api/broadcasts")
    assert listing["broadcasts"] == []

    # Health views: terminals, their telemetry, refused commands, the record.
    for path in (
        "/api/devices",
        f"/api/devices/{device}",
        f"/api/devices/{device}/telemetry",
        f"/api/devices/{device}/deliveries",
        "/api/security-events",
        "/api/broadcasts",
    ):
        await tech.api("GET", path, expect=200)

    # A viewer may read but not touch a terminal.
    status, _ = await viewer.api(
        "POST", f"/api/devices/{device}/volume", json_body={"normal_volume": 30}
    )
    assert status == 403
    status, _ = await viewer.api("POST", f"/api/devices/{device}/diagnostics")
    assert status == 403

    # Volume.
    _, sent = await tech.api(
        "POST", f"/api/devices/{device}/volume", json_body={"normal_volume": 40}, expect=202
    )
    assert sent["published"]

    async def volume_applied() -> bool:
        _, d = await county.api("GET", f"/api/devices/{device}")
        return bool(d["volume"] == 40)

    await county.wait_for(volume_applied, 15, "the terminal reporting volume 40")

    # Diagnostics: the terminal answers with fresh telemetry, here at a new interval.
    status, err = await tech.api(
        "POST", f"/api/devices/{device}/diagnostics", json_body={"telemetry_interval_s": 1}
    )
    assert status == 400 and err["error"]["field"] == "telemetry_interval_s"
    _, sent = await tech.api(
        "POST",
        f"/api/devices/{device}/diagnostics",
        json_body={"telemetry_interval_s": 7},
        expect=202,
    )
    assert sent["published"] and sent["telemetry_interval_s"] == 7

    async def reported() -> bool:
        _, d = await county.api("GET", f"/api/devices/{device}")
        return bool((d["telemetry"] or {}).get("interval_s") == 7)

    await county.wait_for(reported, 15, "fresh telemetry at the new interval")
    assert county.fleet.agents[device].telemetry_interval_s == 7
    await tech.api("POST", f"/api/devices/{device}/diagnostics", expect=202)  # no body

    # Test tone: a real routine broadcast to that one terminal, in the technician's name.
    _, tone = await tech.api("POST", f"/api/devices/{device}/test-tone", expect=201)
    view = await county.wait_states(tone["id"], {device: "done"}, timeout_s=30)
    assert view["created_by"] == TECH[0] and view["priority"] == "routine"
    assert view["device_count"] == 1
    [played] = [e for e in county.plays(device) if e["broadcast_id"] == tone["id"]]
    assert played["completed"] and played["volume"] == 40

    # Resend: an officer's broadcast failed on a cut speaker line; the technician mends
    # it and resends to that terminal only.
    county.fleet.set_speaker_line_cut(victim)
    _, created = await duty.api(
        "POST",
        "/api/broadcasts",
        json_body={**notice, "expires_in_s": 600},
        expect=201,
    )
    bid = created["id"]
    others = [d for d in terminals if d != victim]
    await county.wait_states(bid, {victim: "failed", **{d: "done" for d in others}}, 60)
    county.fleet.set_speaker_line_cut(victim, False)
    status, _ = await viewer.api("POST", f"/api/broadcasts/{bid}/resend")
    assert status == 403
    _, resent = await tech.api("POST", f"/api/broadcasts/{bid}/resend", expect=200)
    assert resent["resends"][0]["by"] == TECH[0] and resent["resends"][0]["devices"] == 1
    await county.wait_states(bid, {"done"}, 60)
    # But not cancel it: that is the officers' call.
    status, _ = await tech.api("POST", f"/api/broadcasts/{bid}/cancel")
    assert status == 403

    _, audit = await county.api("GET", f"/api/audit?actor={TECH[0]}")
    actions = {e["action"] for e in audit["entries"]}
    assert {"device.volume", "device.diagnostics", "broadcast.create"} <= actions
