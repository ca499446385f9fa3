"""A real emergency waiting for a second officer has its audio staged on the terminals it
targets while it waits (issue 15): fetched and verified, not played, not pinned. On
approval the terminals that reported holding it need no fetch, so the command carries
the sync lead only. Against a real controller, broker and fleet; "not fetched" and
"not played" are proved by counting requests and reading the speakers' records."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from controller.api import keys
from dalaba import protocol as p
from tests.integration.test_two_person import REAL

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# Level I, the whole county: waits for a second officer.
COUNTY_WIDE = {**REAL, "targets": {"all": True}}
NEW_AUDIO = b"OggS" + bytes(1000)


async def test_held_emergency_is_staged_while_it_waits_and_starts_on_the_sync_lead(
    make_county: Any, console_login: Any
) -> None:
    county = await make_county(villages=20, two_person_levels=(1, 2))
    settings = county.controller.settings
    media = county.controller.app[keys.MEDIA]
    terminals = sorted(county.fleet.agents)
    duty2, approval_id, sha = await held_and_staged(county, console_login)
    for device_id in terminals:
        agent = county.fleet.agents[device_id]
        assert agent.cache.has(sha), device_id
        assert county.plays(device_id) == [] and county.plays_started(device_id) == []
    # Each terminal fetched it once, while nobody was waiting on it.
    assert media.requests == len(terminals)
    _, listing = await county.api("GET", "/api/broadcasts")
    assert listing["broadcasts"] == []  # staged is not sent
    _, status_view = await county.api("GET", "/api/templates/preposition", expect=200)
    assert status_view["latest"] is None  # staging is not a preposition

    commands: list[p.Command] = []

    def keep(_topic: str, payload: bytes) -> None:
        command = county.open_unverified(payload)
        if isinstance(command.body, p.PlayBody):
            commands.append(command)

    listener = await county.attacker(subscribe=p.Topics.ALL_COMMANDS, on_message=keep)
    try:
        _, created = await duty2.api("POST", f"/api/approvals/{approval_id}/approve", expect=201)
        await county.wait_states(created["id"], {"done"}, timeout_s=60, targeted=terminals)
        await county.wait_for(lambda: _true(bool(commands)), 10, "the play command seen")
    finally:
        await listener.stop()
    (command,) = commands
    body = command.body
    assert isinstance(body, p.PlayBody) and body.media.sha256 == sha
    assert body.media.inline is None
    # Media in place: the sync lead only (with the fetch lead it could not start this
    # soon after it was issued).
    assert body.start_at - command.issued_at <= settings.sync_lead_ms
    assert media.requests == len(terminals)  # nothing fetched after the approval
    plays = county.all_plays(created["id"])
    assert sorted(plays) == terminals
    assert all(entry["completed"] for entries in plays.values() for (entry,) in [entries])


async def test_rejected_request_leaves_its_staged_audio_unpinned(
    make_county: Any, console_login: Any
) -> None:
    county = await make_county(villages=4, two_person_levels=(1, 2))
    terminals = sorted(county.fleet.agents)
    duty2, approval_id, sha = await held_and_staged(county, console_login)
    _, rejected = await duty2.api(
        "POST", f"/api/approvals/{approval_id}/reject", json_body={"reason": "误报"}, expect=200
    )
    assert rejected["status"] == "rejected"
    for device_id in terminals:
        agent = county.fleet.agents[device_id]
        assert agent.cache.has(sha)
        # Held like any unpinned entry: the cache evicts it first when it needs room.
        assert sha not in agent.cache._pinned
        assert county.plays(device_id) == []
        # A cache that needs the room for new audio lets it go.
        agent.cache.max_bytes = len(NEW_AUDIO)
        agent.cache.put(hashlib.sha256(NEW_AUDIO).hexdigest(), NEW_AUDIO)
        assert not agent.cache.has(sha)


async def held_and_staged(county: Any, console_login: Any) -> tuple[Any, str, str]:
    """A real county-wide emergency by duty1, held for a second officer, once the
    approval page says every terminal holds its audio: (duty2, request id, sha256)."""
    # Staging is for audio too long to travel inside the command (test_inline_audio.py).
    county.controller.settings.inline_media_max_bytes = 0
    duty1 = await console_login(county, "duty1")
    duty2 = await console_login(county, "duty2")
    status, pending = await duty1.api("POST", "/api/broadcasts", json_body=COUNTY_WIDE)
    assert status == 202, pending
    approval_id = pending["approval_id"]

    async def staged() -> bool:
        _, view = await duty2.api("GET", f"/api/approvals/{approval_id}", expect=200)
        counts = view["staged"]
        return counts is not None and counts["held"] == counts["of"] == len(county.fleet.agents)

    await county.wait_for(staged, 30, "every terminal holding the staged audio")
    return duty2, approval_id, pending["approval"]["media_id"]


async def _true(value: bool) -> bool:
    return value
