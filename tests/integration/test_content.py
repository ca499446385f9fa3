"""Templates through the API, broadcasts by template, and preview, end to end: real
Mosquitto, real controller (SQLite, espeak-ng, ffmpeg), real agents on simulated hardware."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from controller.api import keys
from tests.integration.content_support import audit_actions, post_broadcast, tokens

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def probe_duration_ms(path: Path) -> int:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
        check=True,
        capture_output=True,
    ).stdout
    return round(float(json.loads(out)["format"]["duration"]) * 1000)


NEW_TEMPLATE = {
    "id": "water_cut_notice",
    "name": "停水通知",
    "category": "other",
    "body": "停水通知：因{reason}，{time}{place}停水，请提前储水。",
    "placeholders": [
        {"name": "reason", "label": "原因", "required": False, "default": "管道检修"},
        {"name": "time", "label": "时间", "example": "明天上午8点到12点"},
        {"name": "place", "label": "范围", "required": False, "default": "全村"},
    ],
    "priority": "notice",
}


async def test_templates_crud_validation_and_roles(make_county):
    county = await make_county(villages=2)
    who = tokens(county)

    # Everyone signed in reads; the built-in Chinese set is there from the start.
    for token in (None, who["staff"], who["viewer"]):
        _, listing = await county.api("GET", "/api/templates", token=token, expect=200)
        ids = {t["id"] for t in listing["templates"]}
        assert {"anti_fraud_reminder", "earthquake_warning", "false_alarm_correction"} <= ids
    _, fraud = await county.api("GET", "/api/templates/anti_fraud_reminder", expect=200)
    assert fraud["builtin"] and fraud["category"] == "anti_fraud" and "{hotline}" in fraud["body"]
    assert fraud["placeholders"][0]["default"] == "96110" and fraud["needs_params"] == []
    _, floods = await county.api("GET", "/api/templates?category=flood", expect=200)
    assert {t["category"] for t in floods["templates"]} == {"flood"}
    await county.api("GET", "/api/templates/nope", expect=404)

    # Only admins and duty officers write.
    for token in (who["staff"], who["viewer"]):
        status, _ = await county.api("POST", "/api/templates", token=token, json_body=NEW_TEMPLATE)
        assert status == 403
        status, _ = await county.api(
            "PATCH", "/api/templates/meeting_notice", token=token, json_body={"repeat": 2}
        )
        assert status == 403
    _, created = await county.api(
        "POST", "/api/templates", token=who["duty"], json_body=NEW_TEMPLATE, expect=201
    )
    assert created["version"] == 1 and created["needs_params"] == ["time"]
    assert created["languages"] == ["cmn"] and not created["builtin"]
    await county.api("POST", "/api/templates", json_body=NEW_TEMPLATE, expect=409)

    bad = [
        ({**NEW_TEMPLATE, "id": "Bad Id"}, "id"),
        ({**NEW_TEMPLATE, "id": "preposition"}, "id"),
        ({**NEW_TEMPLATE, "id": "x2", "category": "volcano"}, "category"),
        ({**NEW_TEMPLATE, "id": "x2", "body": "停水{when}"}, "body"),
        ({**NEW_TEMPLATE, "id": "x2", "priority": "emergency"}, "level"),
        ({**NEW_TEMPLATE, "id": "x2", "languages": ["fr"]}, "languages[0]"),
        ({**NEW_TEMPLATE, "id": "x2", "repeat": 11}, "repeat"),
        ({**NEW_TEMPLATE, "id": "x2", "colour": "red"}, "colour"),
        (
            {**NEW_TEMPLATE, "id": "x2", "placeholders": [{"name": "Time"}]},
            "placeholders[0].name",
        ),
    ]
    for body, field in bad:
        status, err = await county.api("POST", "/api/templates", json_body=body)
        assert status == 400 and err["error"]["field"] == field, (field, err)

    # Edits bump the version; a stale version is refused.
    _, patched = await county.api(
        "PATCH",
        "/api/templates/water_cut_notice",
        json_body={"repeat": 2, "languages": ["cmn", "yue"], "version": 1},
        expect=200,
    )
    assert patched["version"] == 2 and patched["repeat"] == 2
    status, err = await county.api(
        "PATCH", "/api/templates/water_cut_notice", json_body={"repeat": 3, "version": 1}
    )
    assert status == 409 and err["error"]["field"] == "version"
    status, err = await county.api(
        "PATCH", "/api/templates/water_cut_notice", json_body={"name": None}
    )
    assert status == 400 and err["error"]["field"] == "name"
    replacement = {k: v for k, v in NEW_TEMPLATE.items() if k != "id"}
    _, replaced = await county.api(
        "PUT",
        "/api/templates/water_cut_notice",
        json_body={**replacement, "body": "停水：{time}{place}停水（{reason}）。"},
        expect=200,
    )
    assert replaced["version"] == 3 and replaced["repeat"] is None

    # Built-ins are disabled, not deleted; a disabled template cannot be broadcast.
    status, err = await county.api("DELETE", "/api/templates/anti_drug_campaign")
    assert status == 409 and "disable" in err["error"]["message"]
    await county.api(
        "PATCH", "/api/templates/anti_drug_campaign", json_body={"disabled": True}, expect=200
    )
    status, err = await county.api(
        "POST",
        "/api/broadcasts",
        json_body={"template": "anti_drug_campaign", "targets": {"all": True}},
    )
    assert status == 400 and err["error"]["field"] == "template"
    _, enabled = await county.api("GET", "/api/templates?enabled=1", expect=200)
    assert "anti_drug_campaign" not in {t["id"] for t in enabled["templates"]}
    await county.api("DELETE", "/api/templates/water_cut_notice", token=who["duty"], expect=200)
    await county.api("GET", "/api/templates/water_cut_notice", expect=404)

    actions = audit_actions(county)
    assert ("officer", "template.create", "water_cut_notice") in actions
    assert ("demo-admin", "template.update", "water_cut_notice") in actions
    assert ("officer", "template.delete", "water_cut_notice") in actions
    assert ("demo-admin", "template.update", "anti_drug_campaign") in actions


async def test_broadcast_by_template_plays_and_records_text_and_voice(make_county):
    county = await make_county(villages=2)
    device = "d-t01-v01-1"
    # Short, so that it plays within a couple of seconds.
    await county.api(
        "POST",
        "/api/templates",
        json_body={
            "id": "short_meeting",
            "name": "开会",
            "category": "meeting",
            "body": "{time}在{place}开{meeting}。",
            "placeholders": [
                {"name": "time"},
                {"name": "place", "required": False, "default": "村委会"},
                {"name": "meeting"},
            ],
            "priority": "notice",
            "repeat": 1,
        },
        expect=201,
    )
    params = {"time": "周六9点", "meeting": "大会"}

    # Bad params: 400 naming the parameter, and nothing is created.
    cases: list[tuple[dict[str, Any], str]] = [
        ({"template": "short_meeting", "params": {"time": "9点"}}, "params.meeting"),
        ({"template": "short_meeting", "params": {**params, "colour": "red"}}, "params.colour"),
        ({"template": "short_meeting", "params": {**params, "time": ["9点"]}}, "params.time"),
        ({"template": "no_such_template"}, "template"),
        ({"template": "short_meeting", "params": params, "text": "x"}, "body"),
        ({"text": "x", "category": "other", "params": params}, "body"),
        ({"template": "short_meeting", "params": params, "level": 2}, "level"),
        ({"text": "x", "priority": "notice"}, "category"),
    ]
    for body, field in cases:
        status, err = await county.api(
            "POST", "/api/broadcasts", json_body={**body, "targets": {"villages": ["t01-v01"]}}
        )
        assert status == 400 and err["error"]["field"] == field, (field, err)
    _, listing = await county.api("GET", "/api/broadcasts")
    assert listing["broadcasts"] == []

    _, created = await county.api(
        "POST",
        "/api/broadcasts",
        json_body={
            "template": "short_meeting",
            "params": params,
            "targets": {"villages": ["t01-v01"]},
        },
        expect=201,
    )
    bid = created["id"]
    view = await county.wait_states(bid, {"done"}, timeout_s=30)
    assert view["text"] == "周六9点在村委会开大会。"
    assert (view["category"], view["priority"], view["level"]) == ("meeting", "notice", None)
    assert view["title"] == "开会"
    assert view["voices"] and view["voices"][0].startswith("espeak-ng:")
    assert [e["broadcast_id"] for e in county.plays(device)] == [bid]
    assert ("demo-admin", "broadcast.create", bid) in audit_actions(county)


async def test_preview_renders_without_broadcasting_and_is_reused(make_county):
    county = await make_county(villages=2)
    who = tokens(county)
    body = {
        "template": "false_alarm_correction",
        "params": {"subject": "暴雨红色预警"},
        "level": 4,
        "repeat": 1,
    }
    _, preview = await county.api("POST", "/api/preview", json_body=body, expect=200)
    assert preview["text"].startswith("更正通知：刚才播发的暴雨红色预警是误报")
    assert (preview["priority"], preview["level"], preview["category"]) == ("emergency", 4, "other")
    assert preview["voices"][0].startswith("espeak-ng:")
    assert county.controller.app is not None
    path = county.controller.app[keys.MEDIA].path_for(preview["media_id"])
    assert abs(probe_duration_ms(path) - preview["duration_ms"]) < 100

    # The audio itself, exactly the stored file.
    async with county.http.post(
        county.url + "/api/preview?format=audio", json=body, headers=county.headers()
    ) as resp:
        assert resp.status == 200 and resp.content_type == "audio/ogg"
        assert resp.headers["X-Media-Id"] == preview["media_id"]
        assert int(resp.headers["X-Duration-Ms"]) == preview["duration_ms"]
        assert await resp.read() == path.read_bytes()

    # Township staff may preview within reach; viewers may not; targets are checked.
    await county.api("POST", "/api/preview", token=who["staff"], json_body=body, expect=200)
    await county.api("POST", "/api/preview", token=who["viewer"], json_body=body, expect=403)
    status, _ = await county.api(
        "POST",
        "/api/preview",
        token=who["staff"],
        json_body={**body, "targets": {"all": True}},
    )
    assert status == 403
    status, err = await county.api(
        "POST", "/api/preview", json_body={**body, "params": {"subject": "x", "zone": "y"}}
    )
    assert status == 400 and err["error"]["field"] == "params.zone"

    # Nothing was broadcast.
    _, listing = await county.api("GET", "/api/broadcasts")
    assert listing["broadcasts"] == []
    assert all(county.plays(d) == [] for d in county.fleet.hardware)

    # Broadcasting the same content sends the previewed file (no second render), and the
    # terminal plays it; it is cut short here because it is long.
    bid = await post_broadcast(county, **body, targets={"villages": ["t01-v01"]})
    view = await county.wait_states(bid, {"playing"}, timeout_s=30)
    assert view["media_id"] == preview["media_id"]
    await county.api("POST", f"/api/broadcasts/{bid}/cancel", expect=200)
    await county.wait_states(bid, {"cancelled"}, timeout_s=10)
    (entry,) = county.plays("d-t01-v01-1")
    assert entry["media_sha256"] == preview["media_id"] and not entry["completed"]


async def test_township_languages_shape_preview_and_broadcast(make_county):
    county = await make_county(villages=2)
    who = tokens(county)
    status, _ = await county.api(
        "PUT",
        "/api/township-languages/t01",
        token=who["staff"],
        json_body={"languages": ["cmn", "yue"]},
    )
    assert status == 403
    status, err = await county.api(
        "PUT", "/api/township-languages/t01", json_body={"languages": ["fr"]}
    )
    assert status == 400 and err["error"]["field"] == "languages[0]"
    await county.api(
        "PUT", "/api/township-languages/t01", json_body={"languages": ["cmn", "yue"]}, expect=200
    )
    _, listing = await county.api("GET", "/api/township-languages", token=who["staff"], expect=200)
    assert listing["townships"] == [
        {"township_id": "t01", "name": listing["townships"][0]["name"], "languages": ["cmn", "yue"]}
    ]

    body = {"template": "anti_fraud_reminder", "targets": {"townships": ["t01"]}}
    _, both = await county.api("POST", "/api/preview", json_body=body, expect=200)
    assert both["languages"] == ["cmn", "yue"] and len(both["voices"]) == 2
    _, untargeted = await county.api(
        "POST", "/api/preview", json_body={"template": "anti_fraud_reminder"}, expect=200
    )
    assert untargeted["languages"] == ["cmn"] and untargeted["media_id"] != both["media_id"]
    _, named = await county.api(
        "POST", "/api/preview", json_body={**body, "languages": ["cmn"]}, expect=200
    )
    assert named["media_id"] == untargeted["media_id"]

    bid = await post_broadcast(county, **body)
    view = await county.get_broadcast(bid)
    assert view["media_id"] == both["media_id"] and len(view["voices"]) == 2
    await county.api("POST", f"/api/broadcasts/{bid}/cancel", expect=200)
    await county.api("DELETE", "/api/township-languages/t01", expect=200)
    _, listing = await county.api("GET", "/api/township-languages", expect=200)
    assert listing["townships"][0]["languages"] is None
