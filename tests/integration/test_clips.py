"""Hear a pole from the duty room: a technician asks a terminal for the first seconds of
what it last played; the terminal uploads its loopback capture with the one-time token
of the signed request; the console plays it back from the media store. The clip is
checked against the simulated speaker's own WAV recording. Bad uploads refused."""

from __future__ import annotations

import asyncio
import io
import wave
from typing import Any

import pytest

from controller.clips import ClipRequest, token_digest
from controller.db import Database
from dalaba import protocol as p
from edge_agent.output_watch import capture_to_wav
from firmware_sim.fleet import device_dir
from tests.integration.content_support import tokens

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEVICE = "d-t01-v01-1"


def frames(wav_bytes: bytes) -> bytes:
    with wave.open(io.BytesIO(wav_bytes), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16_000)
        return w.readframes(w.getnframes())


async def test_a_clip_of_the_last_play_is_uploaded_and_played_back(make_county) -> None:
    county = await make_county(villages=1)
    users = tokens(county)
    bid = await county.broadcast(text="请注意，今晚有暴雨。", targets={"devices": [DEVICE]})
    await county.wait_states(bid, {DEVICE: "done"}, timeout_s=40)

    await county.api("POST", f"/api/devices/{DEVICE}/clip", token=users["viewer"], expect=403)
    _, asked = await county.api(
        "POST", f"/api/devices/{DEVICE}/clip", json_body={"seconds": 2}, expect=202
    )
    assert asked["status"] == "pending" and asked["published"] is True
    path = f"/api/devices/{DEVICE}/clip/{asked['request_id']}"
    clip: dict[str, Any] = {}
    for _ in range(100):
        _, clip = await county.api("GET", path, token=users["viewer"], expect=200)
        if clip["status"] != "pending":
            break
        await asyncio.sleep(0.2)
    assert clip["status"] == "uploaded" and clip["duration_ms"] == 2_000, clip

    # Played back as the console does, from the media store.
    async with county.http.get(county.url + clip["media_url"]) as resp:
        assert resp.status == 200
        uploaded = frames(await resp.read())
    # Exactly the first two seconds the simulated speaker recorded for that play.
    (played,) = county.plays(DEVICE)
    recorded = frames((device_dir(county.data_dir, DEVICE) / played["wav"]).read_bytes())
    assert uploaded == recorded[: 2 * 16_000 * 2] and any(uploaded)

    # The token was for one upload: a second one (or a guess) is refused.
    async with county.http.put(
        county.url + f"/device-clips/{asked['request_id']}",
        data=capture_to_wav(b"\0\0" * 16_000),
        headers={"X-Dalaba-Clip-Token": "x" * 43},
    ) as resp:
        assert resp.status == 403


def _pending(county: Any, token: str) -> str:
    """A request as the controller stores it, with a token the test knows."""
    db = Database(county.prepared.settings.db_url)
    db.start()
    try:

        def add(session: Any) -> None:
            session.add(
                ClipRequest(
                    id="req-test-0001",
                    device_id=DEVICE,
                    township_id="t01",
                    requested_by="admin",
                    requested_ms=p.now_ms(),
                    max_ms=3_000,
                    token_sha256=token_digest(token),
                )
            )

        db.run_sync(add)
    finally:
        db.stop()
    return "req-test-0001"


async def test_bad_clip_uploads_and_requests_are_refused(make_county) -> None:
    county = await make_county(villages=1)
    token = "t" * 43
    request_id = _pending(county, token)

    async def put(data: bytes, tok: str = token) -> tuple[int, Any]:
        async with county.http.put(
            county.url + f"/device-clips/{request_id}",
            data=data,
            headers={"X-Dalaba-Clip-Token": tok},
        ) as resp:
            return resp.status, await resp.json()

    assert (await put(capture_to_wav(b"\0\1" * 800), tok="wrong" * 9))[0] == 403
    status, body = await put(b"RIFF....not a wav at all")
    assert status == 400 and body["error"]["field"] == "body", body
    status, body = await put(capture_to_wav(b"\0\1" * 800, 8_000))
    assert status == 400 and "16 kHz" in body["error"]["message"], body
    status, body = await put(capture_to_wav(b"\0\1" * 16_000 * 10))  # 10 s, 3 s asked
    assert status == 400 and "longer" in body["error"]["message"], body
    status, body = await put(b"\0" * (p.MAX_CLIP_MS * 32 + 2048))
    assert status == 413 and body["error"]["field"] == "body", body
    # Still pending after every refusal: nothing stored, and the real upload works.
    status, body = await put(capture_to_wav(b"\0\1" * 1600))
    assert status == 201 and body["status"] == "uploaded" and body["duration_ms"] == 100, body

    _, answer = await county.api(
        "POST", f"/api/devices/{DEVICE}/clip", json_body={"seconds": 0}, expect=400
    )
    assert answer["error"]["field"] == "seconds", answer
    await county.api("POST", "/api/devices/no-such/clip", expect=404)
