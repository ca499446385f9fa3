"""Work orders against a real county (Mosquitto, SQLite, a fleet of real agents on
simulated hardware): a cut speaker line outlasts the threshold and opens an order; the
line is mended and the order shows the fault cleared; a technician closes it. A clerk
reads their township's orders and changes nothing; a fault that returns before the order
is closed reopens it. Every answer is checked against the OpenAPI description."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_openapi import Api

pytestmark = [pytest.mark.broker, pytest.mark.slow]

FAULT = "speaker_line"


async def orders_of(county: Any, device: str, query: str = "") -> list[dict[str, Any]]:
    _, body = await county.api("GET", f"/api/workorders{query}", expect=200)
    return [o for o in body["orders"] if o["device_id"] == device]


async def wait_order(county: Any, device: str, status: str, what: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    async def reached() -> bool:
        found[:] = [
            o for o in await orders_of(county, device, "?status=all") if o["fault"] == FAULT
        ]
        return len(found) == 1 and found[0]["status"] == status

    await county.wait_for(reached, 30, what)
    return found[0]


async def test_a_lasting_fault_opens_an_order_a_technician_closes_once_mended(
    make_county: Any, console_login: Any
) -> None:
    county = await make_county(villages=3)
    # Before the fault: a fault must outlast this to become a technician's job.
    county.controller.settings.work_order_after_s = 0.5
    async with county.http.get(county.url + "/api/openapi.json") as resp:
        api = Api(county, await resp.json())
    victim = sorted(county.fleet.agents)[0]
    township = county.fleet.configs[victim].township_id
    clerk_name = f"clerk-{township}"
    assert clerk_name in county.prepared.console_users
    tech = await console_login(county, "tech1")
    clerk = await console_login(county, clerk_name)
    duty = await console_login(county, "duty1")
    assert (await orders_of(county, victim, "?status=all")) == []

    county.fleet.set_speaker_line_cut(victim)
    order = await wait_order(county, victim, "open", "a work order for the cut line")
    oid = order["id"]
    assert (order["township_id"], order["village_id"]) == (
        township,
        county.fleet.configs[victim].village_id,
    )
    assert order["assigned_to"] is None and order["notes"] == []
    assert order["episode"]["start_at"] and order["episode"]["end_at"] is None
    assert order["opened_at"] >= order["episode"]["start_at"]
    await api.call("GET", "/api/workorders", expect=200)

    # The clerk of that township sees it, and may not touch it; nor may a duty officer.
    _, seen = await clerk.api("GET", "/api/workorders", expect=200)
    assert [o["id"] for o in seen["orders"]] == [oid]
    status, err = await clerk.api("GET", "/api/workorders?township=t02")
    assert status == 400 and err["error"]["field"] == "township"
    for who in (clerk, duty):
        for path, body in (
            ("close", {}),
            ("assign", {"user": "tech1"}),
            ("notes", {"text": "看过了"}),
        ):
            status, err = await who.api("POST", f"/api/workorders/{oid}/{path}", json_body=body)
            assert status == 403, (who.name, path, status, err)

    # Not closed while the line is still cut.
    status, err = await tech.api("POST", f"/api/workorders/{oid}/close", json_body={})
    assert status == 409 and err["error"]["code"] == "fault_not_cleared"
    await api.call(
        "POST", "/api/workorders/{id}/close", path=f"/api/workorders/{oid}/close", expect=409
    )

    # Bad input names the field.
    bad: tuple[tuple[str, dict[str, Any], str], ...] = (
        ("assign", {"user": "nobody-here"}, "user"),
        ("assign", {"user": clerk_name}, "user"),  # a clerk does not work on orders
        ("notes", {"text": "   "}, "text"),
        ("notes", {"text": "x", "extra": 1}, "extra"),
    )
    for path, body, field in bad:
        status, err = await tech.api("POST", f"/api/workorders/{oid}/{path}", json_body=body)
        assert status == 400 and err["error"]["field"] == field, (path, body, err)
    status, err = await tech.api("GET", "/api/workorders?status=broken")
    assert status == 400 and err["error"]["field"] == "status"
    status, err = await tech.api("POST", "/api/workorders/999999/notes", json_body={"text": "x"})
    assert status == 404

    _, assigned = await tech.api(
        "POST", f"/api/workorders/{oid}/assign", json_body={"user": "tech1"}, expect=200
    )
    assert assigned["assigned_to"] == "tech1"
    _, noted, _ = await api.call(
        "POST",
        "/api/workorders/{id}/notes",
        path=f"/api/workorders/{oid}/notes",
        json_body={"text": "喇叭线被树枝压断，明早带线上山"},
        expect=200,
    )
    assert [(n["by"], n["text"]) for n in noted["notes"]][-1][1] == "喇叭线被树枝压断，明早带线上山"

    # Mended: the terminal reports the fault cleared, and the order says so.
    county.fleet.set_speaker_line_cut(victim, False)
    cleared = await wait_order(county, victim, "fault_cleared", "the order to see the line mended")
    assert cleared["id"] == oid and cleared["fault_cleared_at"]
    assert cleared["episode"]["end_at"] == cleared["fault_cleared_at"]

    # Cut again before anyone closed it: the same order, open again, and a note says why.
    county.fleet.set_speaker_line_cut(victim)
    reopened = await wait_order(county, victim, "open", "the order reopened")
    assert reopened["id"] == oid and reopened["fault_cleared_at"] is None
    assert reopened["episode"]["id"] != cleared["episode"]["id"]
    assert reopened["notes"][-1]["by"] == "system" and reopened["notes"][-1]["kind"] == "reopened"
    assert reopened["assigned_to"] == "tech1"  # still the same technician's job
    county.fleet.set_speaker_line_cut(victim, False)
    await wait_order(county, victim, "fault_cleared", "the line mended again")

    status, _ = await clerk.api("POST", f"/api/workorders/{oid}/close", json_body={})
    assert status == 403
    _, closed = await tech.api(
        "POST", f"/api/workorders/{oid}/close", json_body={"note": "已换新线，试音正常"}, expect=200
    )
    assert (closed["status"], closed["closed_by"]) == ("closed", "tech1")
    assert closed["closed_at"] and closed["notes"][-1]["text"] == "已换新线，试音正常"
    status, err = await tech.api("POST", f"/api/workorders/{oid}/close", json_body={})
    assert status == 409 and err["error"]["code"] == "work_order_closed"
    await api.call(
        "POST",
        "/api/workorders/{id}/assign",
        path=f"/api/workorders/{oid}/assign",
        json_body={"user": "tech1"},
        expect=409,
    )

    # Closed orders leave the default list (open and fault cleared) but are kept.
    assert await orders_of(county, victim) == []
    _, listed, _ = await api.call(
        "GET", "/api/workorders", path="/api/workorders?status=closed", expect=200
    )
    assert [o["id"] for o in listed["orders"]] == [oid]

    # Everyone's part is in the audit log, the controller's included.
    _, audit = await county.api("GET", "/api/audit?limit=500", expect=200)
    mine = [(e["actor"], e["action"]) for e in audit["entries"] if e["target"] == str(oid)]
    for expected in (
        ("system", "workorder.open"),
        ("system", "workorder.fault_cleared"),
        ("system", "workorder.reopen"),
        ("tech1", "workorder.assign"),
        ("tech1", "workorder.close"),
        ("demo-admin", "workorder.note"),
    ):
        assert expected in mine, (expected, mine)
