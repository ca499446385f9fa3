"""The county's pronunciation dictionary changes what is spoken, through the API."""

from __future__ import annotations

import pytest

from controller.auth import Role, create_user_and_token
from controller.db import Database

pytestmark = [pytest.mark.broker]

BODY = {"text": "请龙塘坳村民注意防汛。", "category": "flood", "priority": "notice"}


async def test_a_dictionary_entry_changes_the_rendered_speech(make_county):
    county = await make_county(villages=2)
    _, before = await county.api("POST", "/api/preview", json_body=BODY, expect=200)

    status, body = await county.api(
        "PUT", "/api/pronunciations", json_body={"entries": {"龙塘坳": "龙塘凹"}}
    )
    assert status == 200 and body["custom"] == {"龙塘坳": "龙塘凹"}
    _, after = await county.api("POST", "/api/preview", json_body=BODY, expect=200)
    assert after["media_id"] != before["media_id"]  # spoken differently

    # Respelling it with the very word it sounds like gives the same speech.
    await county.api(
        "PUT", "/api/pronunciations", json_body={"entries": {"龙塘坳": "龙塘凹", "防汛": "防汛"}}
    )
    _, again = await county.api("POST", "/api/preview", json_body=BODY, expect=200)
    assert again["media_id"] == after["media_id"]

    # It survives a restart: it is on disk and loaded at start.
    await county.controller.stop()
    await county.controller.start()
    _, listed = await county.api("GET", "/api/pronunciations", expect=200)
    assert listed["custom"]["龙塘坳"] == "龙塘凹"
    _, restarted = await county.api("POST", "/api/preview", json_body=BODY, expect=200)
    assert restarted["media_id"] == after["media_id"]


async def test_bad_entries_and_wrong_roles_are_refused(make_county):
    county = await make_county(villages=2)
    status, err = await county.api(
        "PUT", "/api/pronunciations", json_body={"entries": {"六安": ""}}
    )
    assert status == 400 and err["error"]["field"] == "entries.六安"
    status, err = await county.api("PUT", "/api/pronunciations", json_body={"entries": [1]})
    assert status == 400 and err["error"]["field"] == "entries"

    db = Database(county.prepared.settings.db_url)
    db.start()
    clerk = db.run_sync(lambda s: create_user_and_token(s, "clerk9", Role.TOWNSHIP_STAFF, "t01"))
    db.stop()
    status, _ = await county.api(
        "PUT", "/api/pronunciations", token=clerk, json_body={"entries": {"a": "b"}}
    )
    assert status == 403
    _, listed = await county.api("GET", "/api/pronunciations", token=clerk, expect=200)
    assert listed["custom"] == {} and listed["builtin"]
