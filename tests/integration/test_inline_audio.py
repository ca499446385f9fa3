"""Short emergency audio travels inside the signed play command (issue 15: new audio to
every terminal fast): the terminals check it against its hash, store it and play it
without fetching anything, so the controller needs only the sync lead. Against a real
controller, broker and fleet; "not fetched" is proved by counting requests at the
controller and at the terminals, never by timing."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from controller import broadcasts as broadcasts_module
from controller.api import keys
from dalaba import protocol as p

pytestmark = [pytest.mark.broker, pytest.mark.slow]

QUICK = {
    "text": "紧急通知：山洪预警，请立即转移。",
    "category": "flood",
    "priority": "emergency",
    "level": 3,
    "repeat": 1,
}


def fetches(county: Any) -> int:
    return sum(agent.fetcher.requests for agent in county.fleet.agents.values())


async def capture_commands(county: Any) -> tuple[Any, list[p.Command]]:
    seen: list[p.Command] = []

    def keep(_topic: str, payload: bytes) -> None:
        command = county.open_unverified(payload)
        if isinstance(command.body, p.PlayBody):
            seen.append(command)

    return await county.attacker(subscribe=p.Topics.ALL_COMMANDS, on_message=keep), seen


async def test_new_emergency_audio_plays_without_any_media_request(make_county: Any) -> None:
    county = await make_county(villages=3)
    media = county.controller.app[keys.MEDIA]
    settings = county.controller.settings
    listener, commands = await capture_commands(county)
    try:
        served_before, fetched_before = media.requests, fetches(county)
        broadcast_id = await county.broadcast(**QUICK, targets={"all": True})
        await county.wait_states(broadcast_id, {"done"}, timeout_s=60)
        await county.wait_for(lambda: _true(bool(commands)), 10, "the play command seen")
    finally:
        await listener.stop()

    # Nobody asked the controller for the audio, and no terminal asked anyone.
    assert media.requests == served_before
    assert fetches(county) == fetched_before
    (command,) = commands
    body = command.body
    assert isinstance(body, p.PlayBody) and body.broadcast_id == broadcast_id
    assert body.media.inline is not None
    data = base64.b64decode(body.media.inline)
    assert len(data) == body.media.size <= settings.inline_media_max_bytes
    assert data == county.media_path(body.media.sha256).read_bytes()
    # Only the sync lead: with the fetch lead it could not start this soon after issue.
    assert body.start_at - command.issued_at <= settings.sync_lead_ms
    plays = county.all_plays(broadcast_id)
    assert set(plays) == set(county.fleet.agents)
    for device_id, agent in county.fleet.agents.items():
        (entry,) = plays[device_id]
        assert entry["completed"]
        assert agent.cache.has(body.media.sha256)
        assert agent.counters["inline_media_stored"] == 1
        # Not kept in the journal on flash: it names the audio by hash only.
        assert "inline" not in agent.journal.path.read_text()


async def test_a_signed_command_whose_inline_audio_is_not_its_hash_is_refused(
    make_county: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    county = await make_county(villages=1)
    media = county.controller.app[keys.MEDIA]
    genuine = broadcasts_module.with_inline

    def broken(ref: p.MediaRef, data: bytes) -> p.MediaRef:
        # A controller that signs other bytes than the hash it names.
        return genuine(ref, data[:-1] + bytes([data[-1] ^ 0xFF]))

    monkeypatch.setattr(broadcasts_module, "with_inline", broken)
    served_before, fetched_before = media.requests, fetches(county)
    broadcast_id = await county.broadcast(**QUICK, targets={"all": True})
    view = await county.wait_states(broadcast_id, {"failed"}, timeout_s=30)
    for delivery in view["deliveries"]:
        assert delivery["reason"].startswith("media: inline audio refused: hash mismatch")
        assert delivery["reason_code"] == "media_inline_refused"  # worded by the console
    sha = view["media_id"]
    await asyncio.sleep(0.5)  # a play wrongly queued would have been reported by now
    assert county.all_plays(broadcast_id) == {}
    for agent in county.fleet.agents.values():
        assert agent.counters["inline_media_refused"] == 1
        assert not agent.cache.has(sha)  # neither the bad bytes nor a fetched copy
    # Refused, not quietly fetched instead.
    assert media.requests == served_before
    assert fetches(county) == fetched_before


async def test_long_audio_is_fetched_after_the_fetch_lead(make_county: Any) -> None:
    county = await make_county(villages=1)
    media = county.controller.app[keys.MEDIA]
    settings = county.controller.settings
    settings.inline_media_max_bytes = 0  # the controller's own settings object: off
    listener, commands = await capture_commands(county)
    try:
        served_before = media.requests
        broadcast_id = await county.broadcast(**QUICK, targets={"all": True})
        await county.wait_states(broadcast_id, {"done"}, timeout_s=60)
        await county.wait_for(lambda: _true(bool(commands)), 10, "the play command seen")
    finally:
        await listener.stop()
    (command,) = commands
    body = command.body
    assert isinstance(body, p.PlayBody) and body.media.inline is None
    assert body.start_at - command.issued_at > settings.sync_lead_ms
    assert media.requests - served_before == len(county.fleet.agents)


async def _true(value: bool) -> bool:
    return value
