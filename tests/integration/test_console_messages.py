"""What the console is told, against a real controller, broker and fleet (issue 16): every
message a person reads comes with a code the console translates (delivery reasons, errors
with their params), the home page's latest broadcasts are what has played, a test tone to
an offline terminal says it is queued, and the preview shows the drill framing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TEXT = "防汛通知：请沿河群众注意安全，远离河道。"


async def test_messages_a_person_reads_carry_codes(make_county: Any, console_login: Any) -> None:
    county = await make_county(villages=3)
    cut, offline, *_ = sorted(county.fleet.agents)
    admin = await console_login(county, "demo-admin")
    duty = await console_login(county, "duty1")

    # A validation error names its code and field; the console words it.
    status, err = await admin.api(
        "POST",
        "/api/users",
        json_body={"name": "clerk", "role": "township_staff", "password": "paddy-field-2026"},
    )
    assert status == 400
    assert err["error"]["code"] == "township_required"
    assert err["error"]["field"] == "township_id"
    status, err = await duty.api(
        "POST",
        "/api/broadcasts",
        json_body={
            "text": "长" * 5000,
            "category": "flood",
            "priority": "notice",
            "targets": {"all": True},
        },
    )
    assert status == 400 and err["error"]["code"] == "text_too_long"
    assert isinstance(err["error"]["params"]["max"], int)

    # The preview shows the words as heard: a drill is framed, a real alert is not.
    body = {"text": TEXT, "category": "flood", "priority": "emergency", "level": 3}
    _, drill = await duty.api("POST", "/api/preview", json_body={**body, "drill": True}, expect=200)
    assert drill["spoken"].startswith("现在进行的是演练")
    assert drill["spoken"].endswith("以上是演练。") and TEXT in drill["spoken"]
    _, real = await duty.api("POST", "/api/preview", json_body=body, expect=200)
    assert real["spoken"] == TEXT

    # A play cut by the speaker line: the board's reason is a code, not English only.
    county.fleet.set_speaker_line_cut(cut)
    bid = await county.broadcast(
        text=TEXT, category="flood", priority="notice", targets={"devices": [cut]}
    )
    await county.wait_states(bid, {cut: "failed"}, timeout_s=60)
    _, view = await duty.api("GET", f"/api/broadcasts/{bid}", expect=200)
    [delivery] = view["deliveries"]
    assert delivery["reason_code"] == "line_cut", delivery["reason"]
    _, listing = await duty.api("GET", f"/api/devices/{cut}/deliveries", expect=200)
    assert [d["reason_code"] for d in listing["deliveries"]] == ["line_cut"]

    # A test tone to an offline terminal says it is queued, not sent.
    await county.fleet.power_off(offline)

    async def gone() -> bool:
        _, dev = await county.api("GET", f"/api/devices/{offline}")
        return not dev["online"]

    await county.wait_for(gone, 30, "the terminal seen offline")
    _, tone = await duty.api("POST", f"/api/devices/{offline}/test-tone", expect=201)
    assert tone["delivery_state"] == "offline"
    assert tone["expires_in_s"] == 120
    _, view = await duty.api("GET", f"/api/broadcasts/{tone['id']}", expect=200)
    assert view["settled"], "an offline terminal leaves nothing to wait for on the board"
    assert view["deliveries"][0]["reason_code"] == "offline_at_send"

    # Latest broadcasts on the home page: what has played, not what is still to come.
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    _, coming = await duty.api(
        "POST",
        "/api/broadcasts",
        json_body={
            "text": TEXT,
            "category": "flood",
            "priority": "notice",
            "targets": {"all": True},
            "start_at": later,
        },
        expect=201,
    )
    _, everything = await duty.api("GET", "/api/records/broadcasts", expect=200)
    _, aired = await duty.api("GET", "/api/records/broadcasts?aired=true", expect=200)
    assert coming["id"] in {b["id"] for b in everything["broadcasts"]}
    assert coming["id"] not in {b["id"] for b in aired["broadcasts"]}
    assert {bid, tone["id"]} <= {b["id"] for b in aired["broadcasts"]}
    status, err = await duty.api("GET", "/api/records/broadcasts?aired=maybe")
    assert status == 400 and err["error"]["field"] == "aired"


async def test_a_correction_names_its_original_and_both_officers_are_named(
    make_county: Any, console_login: Any
) -> None:
    county = await make_county(villages=3, two_person_levels=(1, 2))
    duty1 = await console_login(county, "duty1")
    duty2 = await console_login(county, "duty2")
    alert = {
        "template": "heavy_rain_warning",
        "params": {"time": "今天下午", "place": "全县"},
        "level": 2,
        "drill": False,
        "targets": {"all": True},
    }
    # County-wide real level II: held for a second officer, who confirms it.
    status, held = await duty1.api("POST", "/api/broadcasts", json_body=alert)
    assert status == 202, held
    _, sent = await duty2.api(
        "POST", f"/api/approvals/{held['approval_id']}/approve", json_body={}, expect=201
    )
    _, original = await duty1.api("GET", f"/api/broadcasts/{sent['id']}", expect=200)
    assert (original["created_by"], original["approved_by"]) == ("duty1", "duty2")
    assert "暴雨橙色预警" in original["text"] and original["corrections"] == []
    _, log = await duty1.api("GET", "/api/records/broadcasts", expect=200)
    [row] = [b for b in log["broadcasts"] if b["id"] == sent["id"]]
    assert row["approved_by"] == "duty2"

    # The correction: the officer's own words, the original's category, linked both ways.
    text = "更正通知：今天播发的暴雨橙色预警是误报，现予撤销。"
    correction = {
        "text": text,
        "category": original["category"],
        "priority": "emergency",
        "level": 4,
        "title": "更正：暴雨橙色预警",
        "targets": {"all": True},
        "corrects": sent["id"],
    }
    _, fix = await duty1.api("POST", "/api/broadcasts", json_body=correction, expect=201)
    _, fixed = await duty1.api("GET", f"/api/broadcasts/{fix['id']}", expect=200)
    assert fixed["corrects"] == sent["id"] and fixed["text"] == text
    assert fixed["category"] == original["category"] and fixed["approved_by"] is None
    _, original = await duty1.api("GET", f"/api/broadcasts/{sent['id']}", expect=200)
    assert [c["id"] for c in original["corrections"]] == [fix["id"]]

    # A correction of nothing is refused, naming the field.
    status, err = await duty1.api(
        "POST", "/api/broadcasts", json_body={**correction, "corrects": "0" * 32}
    )
    assert status == 400
    assert (err["error"]["code"], err["error"]["field"]) == ("unknown_broadcast", "corrects")


async def test_next_never_shows_a_time_inside_quiet_hours(
    make_county: Any, console_login: Any
) -> None:
    county = await make_county(villages=3)
    duty = await console_login(county, "duty1")
    await duty.api(
        "PUT",
        "/api/townships/t01/quiet-hours",
        json_body={"start": "22:00", "end": "07:00"},
        expect=200,
    )
    schedule = {
        "name": "早晚提醒",
        "text": "请注意用火安全。",
        "category": "fire_prevention",
        "priority": "notice",
        "targets": {"townships": ["t01"]},
        "recurrence": {"kind": "daily", "times": ["06:30", "12:00"], "start_date": "2026-01-01"},
    }
    _, created = await duty.api("POST", "/api/schedules", json_body=schedule, expect=201)
    _, view = await duty.api("GET", f"/api/schedules/{created['id']}", expect=200)
    _, listing = await duty.api("GET", "/api/schedules", expect=200)
    [listed] = [s for s in listing["schedules"] if s["id"] == created["id"]]
    tz = ZoneInfo(county.prepared.settings.timezone)
    for nexts in (view["next"], listed["next"]):
        local = [datetime.fromisoformat(n).astimezone(tz).strftime("%H:%M") for n in nexts]
        assert local and set(local) == {"12:00"}, local
    # The calendar's own view still lists the silenced time, marked as such.
    _, coming = await duty.api("GET", f"/api/schedules/{created['id']}/next?count=4", expect=200)
    assert any(not n["plays"] for n in coming["next"])
    # The calendar says why in a code the console words: quiet hours, with their times.
    day = (datetime.now(tz) + timedelta(days=1)).date().isoformat()
    _, timeline = await duty.api("GET", f"/api/townships/t01/timeline?date={day}", expect=200)
    [silenced] = [e for e in timeline["entries"] if e["local_time"].startswith("06:30")]
    assert silenced["reason_code"] == "quiet_hours", silenced["reason"]
    assert silenced["reason_params"] == {"start": "22:00", "end": "07:00", "township": "t01"}
