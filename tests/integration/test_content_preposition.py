"""Pre-positioned emergency audio: pushed to terminals ahead of need, so an emergency
that uses it starts on time even where the network is slow."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.content_support import audit_actions, tokens

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# Short, so the test does not wait through a long announcement.
QUICK_QUAKE = {
    "id": "quick_quake",
    "name": "地震速报",
    "category": "earthquake",
    "body": "地震{level_colour}预警：请{place}村民立即就近避险。",
    "placeholders": [{"name": "place", "required": False, "default": "全体"}],
    "priority": "emergency",
    "level": 3,
    "repeat": 1,
}


def devices_of(county: Any, village: str) -> list[str]:
    return sorted(d for d in county.fleet.hardware if d.startswith(f"d-{village}-"))


async def test_prepositioned_emergency_plays_without_download(make_county):
    county = await make_county(villages=3)
    # Pre-positioning is for audio too long to travel inside the play command; this
    # test's short one would otherwise reach the cold terminal inline too.
    county.controller.settings.inline_media_max_bytes = 0
    who = tokens(county)
    await county.api("POST", "/api/templates", json_body=QUICK_QUAKE, expect=201)
    ready, cold = devices_of(county, "t01-v01"), devices_of(county, "t01-v02")
    assert ready and cold

    request = {
        "templates": ["quick_quake", "flood_evacuation"],
        "levels": [3, 4],
        "targets": {"villages": ["t01-v01"]},
    }
    for token in (who["staff"], who["viewer"]):
        status, _ = await county.api(
            "POST", "/api/templates/preposition", token=token, json_body=request
        )
        assert status == 403
    bad = [
        ({**request, "templates": ["meeting_notice"]}, "templates[0]"),
        ({**request, "templates": ["nope_nope"]}, "templates[0]"),
        ({**request, "levels": [5]}, "levels[0]"),
        (
            {**request, "params": {"earthquake_warning": {"place": "x"}}},
            "params.earthquake_warning",
        ),
        ({**request, "templates": ["flood_evacuation"]}, "templates"),
    ]
    for body, field in bad:
        status, err = await county.api("POST", "/api/templates/preposition", json_body=body)
        assert status == 400 and err["error"]["field"] == field, (field, err)

    _, done = await county.api(
        "POST", "/api/templates/preposition", token=who["duty"], json_body=request, expect=201
    )
    assert done["dispatch"] == "published" and done["device_count"] == len(ready)
    assert [(i["template"], i["level"]) for i in done["items"]] == [
        ("quick_quake", 3),
        ("quick_quake", 4),
    ]
    # Flood evacuation must name a place and a shelter: it is rendered when it is used.
    (skipped,) = done["skipped"]
    assert skipped["template"] == "flood_evacuation" and "params.place" in skipped["reason"]
    by_level = {i["level"]: i for i in done["items"]}

    async def preloaded() -> bool:
        _, status = await county.api("GET", "/api/templates/preposition")
        states = {d["device_id"]: d["state"] for d in status["devices"]}
        return all(states[d] == "ok" for d in ready)

    await county.wait_for(preloaded, 15, "terminals reporting the pre-positioned audio")
    _, status = await county.api("GET", "/api/templates/preposition", token=who["staff"])
    assert {d["township_id"] for d in status["devices"]} == {"t01"}
    assert {d["device_id"]: d["state"] for d in status["devices"]}[cold[0]] == "none"
    for device_id in ready:
        assert county.fleet.agents[device_id].cache.has(by_level[3]["media_id"])
        assert county.fleet.agents[device_id].cache.has(by_level[4]["media_id"])

    # Now the network is slow everywhere; a fetch would take seconds.
    for device_id in ready + cold:
        county.fleet.set_slow_link(device_id, bytes_per_s=20_000, latency_s=2.0)
    requests_before = {d: county.fleet.agents[d].fetcher.requests for d in ready + cold}
    _, created = await county.api(
        "POST",
        "/api/broadcasts",
        json_body={"template": "quick_quake", "targets": {"villages": ["t01-v01", "t01-v02"]}},
        expect=201,
    )
    view = await county.wait_states(created["id"], {"done"}, timeout_s=30)
    assert view["media_id"] == by_level[3]["media_id"]  # the very file pre-positioned
    plays = county.all_plays(created["id"])
    # Proved by counting, not by timing: the terminals holding the pre-positioned audio
    # made no request for it, the cold one had to fetch it.
    for device_id in ready:
        assert county.fleet.agents[device_id].fetcher.requests == requests_before[device_id]
        (entry,) = plays[device_id]
        assert entry["completed"]
    for device_id in cold:
        assert county.fleet.agents[device_id].fetcher.requests > requests_before[device_id]
        (entry,) = plays[device_id]
        assert entry["completed"]

    # An edit makes the pre-positioned audio stale, and the console is told.
    await county.api("PATCH", "/api/templates/quick_quake", json_body={"repeat": 2}, expect=200)
    _, status = await county.api("GET", "/api/templates/preposition", expect=200)
    assert status["stale_templates"] == ["quick_quake"]
    assert ("officer", "template.preposition", done["id"]) in audit_actions(county)


async def test_prepositioning_defaults_to_every_complete_emergency_template(make_county):
    county = await make_county(villages=2)
    # Disabled templates are left out (and fewer long renders keep the test quick).
    for template_id in ("forest_fire_warning", "typhoon_warning", "epidemic_alert"):
        await county.api(
            "PATCH", f"/api/templates/{template_id}", json_body={"disabled": True}, expect=200
        )
    _, templates = await county.api("GET", "/api/templates?enabled=1", expect=200)
    complete = sorted(
        t["id"]
        for t in templates["templates"]
        if t["priority"] == "emergency" and not t["needs_params"]
    )
    assert complete == ["earthquake_warning", "false_alarm_correction", "heavy_rain_warning"]
    _, done = await county.api(
        "POST",
        "/api/templates/preposition",
        json_body={"levels": [1], "targets": {"all": True}},
        expect=201,
    )
    assert sorted(i["template"] for i in done["items"]) == complete
    assert [s["template"] for s in done["skipped"]] == ["flood_evacuation"]
    # Given its parameters, the evacuation notice can be pre-positioned too.
    _, done = await county.api(
        "POST",
        "/api/templates/preposition",
        json_body={
            "templates": ["flood_evacuation"],
            "levels": [1],
            "params": {"flood_evacuation": {"place": "沿河一组", "shelter": "村小学"}},
        },
        expect=201,
    )
    assert [i["template"] for i in done["items"]] == ["flood_evacuation"]
    _, broadcast = await county.api(
        "POST",
        "/api/preview",
        json_body={
            "template": "flood_evacuation",
            "params": {"place": "沿河一组", "shelter": "村小学"},
            "targets": {"all": True},
        },
        expect=200,
    )
    # A level I county-wide emergency waits for a second officer, so the match is shown
    # with preview, which renders exactly what the broadcast would send.
    assert broadcast["media_id"] == done["items"][0]["media_id"]
