"""CAP 1.2 warnings in, against a real controller, broker and simulated fleet (45
villages: 城关镇 t01, 河口镇 t02, 青山乡 t03).

The specification's three examples are accepted, kept verbatim and recorded (their areas
are in California); broken or hostile XML is refused with a 4xx naming the problem and
nothing is stored; a source's token may post warnings and do nothing else. Our county's
暴雨橙色预警 plays on the villages its polygon covers and nowhere else; the Update that
narrows it cancels it on the terminals and plays the new one on 河口镇 only; the Cancel
stops that; Exercise is a drill; Test plays nowhere; a duplicate does not play twice;
in review mode the warning waits for an officer, who hears it, sees the CAP text, and
releases it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from controller.api import keys
from controller.auth import Role, create_user_and_token

FIXTURES = Path(__file__).parent.parent / "cap_fixtures"
BEIJING = timezone(timedelta(hours=8))
SENDER = "qxj.430131@cma.gov.cn"


def cap_time(delta: timedelta = timedelta()) -> str:
    return (datetime.now(BEIJING) + delta).isoformat(timespec="seconds")


def fixture(name: str, **values: str) -> bytes:
    text = (FIXTURES / name).read_text()
    values.setdefault("sent", cap_time())
    values.setdefault("expires", cap_time(timedelta(hours=2)))
    values.setdefault("status", "Actual")
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text.encode()


def ref(identifier: str, raw: bytes) -> str:
    sent = raw.split(b"<sent>")[1].split(b"</sent>")[0].decode()
    return f"{SENDER},{identifier},{sent}"


async def post_cap(
    county: Any, token: str, raw: bytes, content_type: str = "application/cap+xml"
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    async with county.http.post(county.url + "/api/cap", data=raw, headers=headers) as resp:
        return resp.status, await resp.json()


def terminals_of(county: Any, *townships: str) -> set[str]:
    return {d for d, c in county.fleet.configs.items() if c.township_id in townships}


async def message_count(county: Any) -> int:
    _, inbox = await county.api("GET", "/api/upstream/messages?limit=500", expect=200)
    return len(inbox["messages"])


@pytest.mark.broker
@pytest.mark.slow
async def test_cap_warnings_from_the_weather_bureau(make_county: Any) -> None:
    county = await make_county(villages=45, two_person_levels=(1, 2))
    t01, t02, t03 = (terminals_of(county, t) for t in ("t01", "t02", "t03"))
    assert t01 and t02 and t03

    _, source = await county.api(
        "POST",
        "/api/upstream/sources",
        json_body={"id": "qxj", "name": "示范县气象台", "mode": "automatic"},
        expect=201,
    )
    token = source["token"]
    db = county.controller.app[keys.DB]
    duty_token = await db.run(
        lambda s: create_user_and_token(s, "duty-cap", Role.DUTY_OFFICER, None, label="test")
    )
    # Least privilege: the source's token posts warnings, nothing else, not even reads.
    await county.api("GET", "/api/broadcasts", token=token, expect=403)
    await county.api("GET", "/api/upstream/messages", token=token, expect=403)
    body = {"text": "测试", "category": "other", "priority": "notice", "targets": {"all": True}}
    await county.api("POST", "/api/broadcasts", token=token, json_body=body, expect=403)
    # Its user is no console user: no password, no other role.
    _, users = await county.api("GET", "/api/users", expect=200)
    qxj = next(u for u in users["users"] if u["name"] == "qxj")
    assert qxj["role"] == "upstream" and not qxj["has_password"]
    for patch, field in (({"role": "admin"}, "role"), ({"password": "a-long-pass-9x"}, "password")):
        _, err = await county.api("PATCH", f"/api/users/{qxj['id']}", json_body=patch, expect=400)
        assert err["error"]["field"] == field
    # ... and nobody else posts warnings as a source.
    status, _ = await post_cap(county, county.prepared.admin_token, fixture("oasis_amber.xml"))
    assert status == 403

    # --- the specification's examples: accepted, kept verbatim, played nowhere here
    for name, identifier, outcome, reason in (
        ("oasis_thunderstorm.xml", "KSTO1055887203", "recorded", "expired"),
        ("oasis_earthquake.xml", "TRI13970876.2", "no_area", "no_area"),
        ("oasis_amber.xml", "KAR0-0306112239-SW", "no_area", "no_area"),
    ):
        raw = fixture(name)
        status, answer = await post_cap(county, token, raw)
        assert status == 200, answer
        assert (answer["outcome"], answer["reason"]) == (outcome, reason), answer
        assert answer["broadcast_id"] is None
        _, stored = await county.api(
            "GET", f"/api/upstream/messages/{answer['message_id']}", expect=200
        )
        assert stored["raw"].encode() == raw  # verbatim
        assert stored["identifier"] == identifier and stored["source_name"] == "示范县气象台"
    _, listing = await county.api("GET", "/api/broadcasts", expect=200)
    assert listing["broadcasts"] == []

    # --- refused before anything is stored
    stored_before = await message_count(county)
    good = fixture("cn_rainstorm.xml", identifier="bad")
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&c;</identifier>'
        b"</alert>"
    )
    for raw, code, field in (
        (b"<alert><identifier>x</identifier>", "cap_malformed", "body"),
        (good.replace(b"emergency:cap:1.2", b"emergency:cap:1.1"), "cap_namespace", "alert"),
        (good.replace(b"<identifier>bad</identifier>", b""), "cap_missing", "alert.identifier"),
        (bomb, "cap_forbidden_xml", "body"),
    ):
        status, answer = await post_cap(county, token, raw)
        assert status == 400, answer
        assert (answer["error"]["code"], answer["error"]["field"]) == (code, field)
    status, answer = await post_cap(county, token, good, content_type="application/json")
    assert status == 415
    assert await message_count(county) == stored_before

    # --- 暴雨橙色预警 over 城关镇 and 河口镇
    alert = fixture("cn_rainstorm.xml", identifier="43013141600000_20261130150000_1")
    status, played = await post_cap(county, token, alert)
    assert status == 201 and played["outcome"] == "played", played
    first = played["broadcast_id"]
    view = await county.get_broadcast(first)
    assert (view["priority"], view["level"], view["drill"]) == ("emergency", 2, False)
    assert view["text"].startswith("示范县气象台发布暴雨橙色预警信号")
    assert set(view["targets"]["townships"]) == {"t01", "t02"}
    await county.wait_started(first, t01 | t02, timeout_s=60)
    assert not set(county.all_started(first)) & t03

    # A second copy of the same message does not play again.
    status, again = await post_cap(county, token, alert)
    assert status == 200 and again["outcome"] == "duplicate" and again["broadcast_id"] == first

    # --- the Update narrows it to 河口镇: the old stops, the new plays there only
    update = fixture(
        "cn_rainstorm_update.xml",
        identifier="43013141600000_20261130153000_2",
        references=ref("43013141600000_20261130150000_1", alert),
    )
    status, updated = await post_cap(county, token, update)
    assert status == 201 and updated["outcome"] == "played", updated
    assert updated["cancelled"] == [first]
    assert (await county.get_broadcast(first))["status"] == "cancelled"
    second = updated["broadcast_id"]
    assert (await county.get_broadcast(second))["device_count"] == len(t02)
    await county.wait_started(second, t02, timeout_s=60)
    assert set(county.all_started(second)) == t02

    # --- the Cancel stops it
    cancel = fixture(
        "cn_rainstorm_cancel.xml",
        identifier="43013141600000_20261130160000_3",
        references=ref("43013141600000_20261130153000_2", update),
    )
    status, cancelled = await post_cap(county, token, cancel)
    assert status == 200 and cancelled["outcome"] == "cancelled", cancelled
    assert cancelled["cancelled"] == [second]
    assert (await county.get_broadcast(second))["status"] == "cancelled"

    # --- Exercise is a drill; Test plays nowhere
    status, drill = await post_cap(
        county, token, fixture("cn_rainstorm.xml", identifier="ex-1", status="Exercise")
    )
    assert status == 201 and drill["outcome"] == "played", drill
    assert (await county.get_broadcast(drill["broadcast_id"]))["drill"] is True
    await county.wait_started(drill["broadcast_id"], t01 | t02, timeout_s=60)
    await county.api("POST", f"/api/broadcasts/{drill['broadcast_id']}/cancel", expect=200)

    _, listing = await county.api("GET", "/api/broadcasts", expect=200)
    broadcasts_before = len(listing["broadcasts"])
    status, test = await post_cap(
        county, token, fixture("cn_rainstorm.xml", identifier="test-1", status="Test")
    )
    assert status == 200 and (test["outcome"], test["reason"]) == ("recorded", "test")
    assert test["broadcast_id"] is None
    _, listing = await county.api("GET", "/api/broadcasts", expect=200)
    assert len(listing["broadcasts"]) == broadcasts_before

    # --- review mode: waits for one officer, who sees the CAP text, then plays
    await county.api("PATCH", "/api/upstream/sources/qxj", json_body={"mode": "review"}, expect=200)
    held_alert = fixture("cn_rainstorm.xml", identifier="rv-1")
    status, held = await post_cap(county, token, held_alert)
    assert status == 202 and (held["outcome"], held["reason"]) == ("review", "review_mode")
    _, approval = await county.api("GET", f"/api/approvals/{held['approval_id']}", expect=200)
    assert approval["why"]["cap_text"].encode() == held_alert
    assert approval["why"]["source"] == "qxj" and approval["device_count"] == len(t01 | t02)
    # Nothing was sent meanwhile.
    _, listing = await county.api("GET", "/api/broadcasts", expect=200)
    assert len(listing["broadcasts"]) == broadcasts_before
    _, released = await county.api(
        "POST", f"/api/approvals/{held['approval_id']}/approve", json_body={}, expect=201
    )
    await county.wait_started(released["id"], t01 | t02, timeout_s=60)
    _, inbox = await county.api("GET", "/api/upstream/messages", expect=200)
    newest = inbox["messages"][0]
    assert newest["identifier"] == "rv-1" and newest["mode"] == "review"
    assert newest["broadcast_id"] == released["id"]
    assert newest["approval_status"] == "approved"

    # The officer may release a held warning to another area, here by its code (河口镇).
    await county.api("POST", f"/api/broadcasts/{released['id']}/cancel", expect=200)
    status, held = await post_cap(county, token, fixture("cn_rainstorm.xml", identifier="rv-2"))
    assert status == 202, held
    _, narrowed = await county.api(
        "POST",
        f"/api/approvals/{held['approval_id']}/approve",
        json_body={"targets": {"areas": ["430131102"]}},
        expect=201,
    )
    assert narrowed["device_count"] == len(t02)
    await county.wait_started(narrowed["id"], t02, timeout_s=60)
    assert set(county.all_started(narrowed["id"])) == t02
    # An officer's own emergency keeps the area it was asked for (only warnings move).
    status, own = await county.api(
        "POST",
        "/api/broadcasts",
        json_body={
            "text": "演练通知",
            "category": "flood",
            "priority": "emergency",
            "level": 1,
            "targets": {"all": True},
        },
    )
    assert status == 202, own
    _, err = await county.api(
        "POST",
        f"/api/approvals/{own['approval_id']}/approve",
        token=duty_token,
        json_body={"targets": {"townships": ["t01"]}},
        expect=400,
    )
    assert err["error"]["field"] == "targets"

    _, inbox = await county.api("GET", "/api/upstream/messages", expect=200)
    outcomes = [m["outcome"] for m in reversed(inbox["messages"])]
    assert outcomes == [
        "recorded",
        "no_area",
        "no_area",
        "played",
        "duplicate",
        "played",
        "cancelled",
        "played",
        "recorded",
        "review",
        "review",
    ]

    # --- automatic mode with the source's own threshold: level II waits for one officer;
    # without it, a county-wide level II plays at once (the officers' two-person rule,
    # on in this county for levels I and II, does not count a source's warnings).
    await county.api(
        "PATCH",
        "/api/upstream/sources/qxj",
        json_body={"mode": "automatic", "hold_levels": [2]},
        expect=200,
    )
    await county.api("POST", f"/api/broadcasts/{narrowed['id']}/cancel", expect=200)
    status, held = await post_cap(county, token, fixture("cn_rainstorm.xml", identifier="hl-1"))
    assert status == 202 and held["reason"] == "source_hold_level", held
    await county.api(
        "PATCH", "/api/upstream/sources/qxj", json_body={"hold_levels": []}, expect=200
    )
    whole = fixture("cn_rainstorm.xml", identifier="all-1").replace(
        b"</polygon>",
        b"</polygon><geocode><valueName>code</valueName><value>430131</value></geocode>",
    )
    status, everywhere = await post_cap(county, token, whole)
    assert status == 201 and everywhere["villages"] == 45, everywhere
    assert (await county.get_broadcast(everywhere["broadcast_id"]))["target"]["all"] is True
