"""Emergencies in a recorded voice, against a real controller, broker and fleet: an
uploaded recording sent as an emergency is laid out like a spoken one (the emergency
signal, the drill framing spoken around it, repeated), and that is what terminals play;
audio that is not an uploaded recording, or a recording from another township, is
refused with the field named; a real county-wide level II emergency in a recorded voice
waits for a second officer, who hears the composed audio before approving."""

from __future__ import annotations

import math
import subprocess
import wave
from pathlib import Path
from typing import Any

import pytest

from controller.auth import Role, create_user_and_token
from controller.db import Database
from tests.integration.content_support import tokens
from tests.integration.test_content_uploads import upload

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TONE_HZ = 2300.0  # far from the emergency signal's tones (575-1050 Hz) and chimes
TONE_S = 1.5
BLOCK_MS = 100


def tone_wav(tmp_path: Path) -> bytes:
    """A recording that can be found again in what a speaker played: a steady tone."""
    target = tmp_path / "recording.wav"
    source = f"sine=frequency={TONE_HZ:g}:sample_rate=16000:duration={TONE_S}"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", source, "-ac", "1",
         str(target)],
        check=True,
    )  # fmt: skip
    return target.read_bytes()


def tone_blocks(wav_path: Path, freq: float = TONE_HZ) -> int:
    """How many 100 ms blocks of a played WAV are dominated by `freq` (Goertzel)."""
    with wave.open(str(wav_path)) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    assert width == 2
    samples = memoryview(raw).cast("h")[::channels]
    n = rate * BLOCK_MS // 1000
    coeff = 2 * math.cos(2 * math.pi * freq / rate)
    found = 0
    for start in range(0, len(samples) - n + 1, n):
        block = samples[start : start + n]
        s1 = s2 = 0.0
        energy = 0.0
        for x in block:
            s1, s2 = x + coeff * s1 - s2, s1
            energy += x * x
        power = s1 * s1 + s2 * s2 - coeff * s1 * s2
        # A pure tone puts about n/2 of its energy into the Goertzel bin.
        if energy > 1e6 and power / (energy * n / 2) > 0.5:
            found += 1
    return found


def played_wavs(county: Any, broadcast_id: str) -> dict[str, tuple[dict[str, Any], Path]]:
    out = {}
    for device_id, entries in county.all_plays(broadcast_id).items():
        (entry,) = entries
        out[device_id] = (entry, county.fleet.hardware[device_id].speaker.record_dir / entry["wav"])
    return out


async def test_recorded_drill_is_framed_and_played_and_other_audio_is_refused(
    make_county: Any, tmp_path: Path
) -> None:
    county = await make_county(villages=20)  # t01 and t02
    who = tokens(county)
    status, recording = await upload(
        county, tone_wav(tmp_path), filename="duty.wav", title="值班室录音", token=who["staff"]
    )
    assert status == 201, recording
    drill = {
        "media_id": recording["media_id"],
        "title": "值班室录音",
        "category": "flood",
        "priority": "emergency",
        "level": 3,
        "drill": True,
        "repeat": 3,
        "targets": {"townships": ["t01"]},
    }

    # The preview is the composed announcement, not the bare recording.
    _, preview = await county.api("POST", "/api/preview", json_body=drill, expect=200)
    assert preview["media_id"] != recording["media_id"]
    assert preview["voices"][0] == "upload" and len(preview["voices"]) == 2  # + framing voice
    _, plain = await county.api(
        "POST", "/api/preview", json_body={**drill, "drill": False}, expect=200
    )
    assert plain["voices"] == ["upload"]
    # The framing adds two spoken phrases: the drill is longer than the real one.
    assert preview["duration_ms"] > plain["duration_ms"] + 1500
    assert plain["duration_ms"] > 3 * recording["duration_ms"]

    # Sent by the clerk who recorded it: what the speakers play is the preview, with the
    # recording three times in it.
    _, sent = await county.api(
        "POST", "/api/broadcasts", json_body=drill, token=who["staff"], expect=201
    )
    view = await county.wait_states(sent["id"], {"done"}, timeout_s=60)
    assert view["media_id"] == preview["media_id"] and view["drill"] is True
    played = played_wavs(county, sent["id"])
    assert played
    assert {entry["media_sha256"] for entry, _ in played.values()} == {preview["media_id"]}
    for device_id in sorted(played)[:3]:  # the same file everywhere: a few suffice
        blocks = tone_blocks(played[device_id][1])
        expected = 3 * TONE_S * 1000 / BLOCK_MS
        assert expected - 6 <= blocks <= expected + 3, (device_id, blocks)

    # Rendered speech is no recording: refused for an emergency, the field named.
    _, speech = await county.api(
        "POST",
        "/api/preview",
        json_body={"text": "测试", "category": "flood", "priority": "notice"},
        expect=200,
    )
    for path in ("/api/preview", "/api/broadcasts"):
        status, err = await county.api(
            "POST", path, json_body={**drill, "media_id": speech["media_id"]}
        )
        assert status == 400, err
        assert err["error"]["field"] == "media_id"
        assert err["error"]["code"] == "media_not_recording"

    # A clerk of another township may not use t01's recording.
    db = Database(county.prepared.settings.db_url)
    db.start()
    try:
        other = db.run_sync(
            lambda s: create_user_and_token(s, "clerk-t02", Role.TOWNSHIP_STAFF, "t02")
        )
    finally:
        db.stop()
    status, err = await county.api(
        "POST",
        "/api/preview",
        json_body={**drill, "targets": {"townships": ["t02"]}},
        token=other,
    )
    assert status == 400 and err["error"]["field"] == "media_id", err
    assert err["error"]["code"] == "media_not_yours"
    # ... and is not offered it on the emergency page, where t01's clerk is.
    path = "/api/media?source=upload&usable=1"
    _, offered = await county.api("GET", path, token=other, expect=200)
    assert recording["media_id"] not in {m["media_id"] for m in offered["media"]}
    _, offered = await county.api("GET", path, token=who["staff"], expect=200)
    assert recording["media_id"] in {m["media_id"] for m in offered["media"]}


async def test_real_county_wide_recorded_emergency_waits_for_the_second_officer(
    make_county: Any, console_login: Any, tmp_path: Path
) -> None:
    county = await make_county(villages=3, two_person_levels=(1, 2))
    who = tokens(county)
    status, recording = await upload(
        county, tone_wav(tmp_path), filename="r.wav", title="县级录音", token=who["duty"]
    )
    assert status == 201, recording
    duty1 = await console_login(county, "duty1")
    duty2 = await console_login(county, "duty2")
    body = {
        "media_id": recording["media_id"],
        "category": "flood",
        "priority": "emergency",
        "level": 2,
        "repeat": 1,
        "targets": {"all": True},
    }
    status, held = await duty1.api("POST", "/api/broadcasts", json_body=body)
    assert status == 202, held
    _, queue = await duty2.api("GET", "/api/approvals", expect=200)
    [item] = queue["approvals"]
    # What the second officer hears is the composed emergency, not the bare recording.
    assert item["media_id"] != recording["media_id"]
    _, info = await duty2.api("GET", f"/api/media/{item['media_id']}", expect=200)
    assert info["voices"] == ["upload"]
    assert info["duration_ms"] > recording["duration_ms"]
    assert county.plays_started("d-t01-v01-1") == []

    _, approved = await duty2.api("POST", f"/api/approvals/{item['id']}/approve", expect=201)
    assert approved["approval"]["decided_by"] == "duty2"
    assert approved["title"] == "县级录音"  # named by its upload's title
    await county.wait_states(approved["id"], {"done"}, timeout_s=60)
    played = played_wavs(county, approved["id"])
    assert played
    for device_id, (entry, wav_path) in played.items():
        assert entry["media_sha256"] == item["media_id"], device_id
        blocks = tone_blocks(wav_path)
        assert TONE_S * 1000 / BLOCK_MS - 4 <= blocks <= TONE_S * 1000 / BLOCK_MS + 2, blocks
