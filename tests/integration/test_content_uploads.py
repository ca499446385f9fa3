"""Recorded announcements through the API: the formats phones and PCs make are accepted,
told apart by content, normalised and played; anything else is refused with a 400 and
leaves nothing behind."""

from __future__ import annotations

import random
import subprocess
import wave
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.api import keys
from tests.integration.content_support import audit_actions, post_broadcast, tokens

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SOURCE_MS = 2000
# normalise_upload puts 500 ms of lead-in (amplifier wake-up) and 300 ms of tail around it.
PADDING_MS = 800


def ffmpeg(tmp_path: Path, name: str, *args: str) -> bytes:
    target = tmp_path / name
    source = f"sine=frequency=440:sample_rate=16000:duration={SOURCE_MS / 1000}"
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", source,
            "-ac", "1", *args, str(target),
        ],
        check=True,
    )  # fmt: skip
    return target.read_bytes()


def amr_nb(frames: int, seed: int = 7) -> bytes:
    """AMR-NB built by hand (this ffmpeg decodes AMR but cannot encode it): mode 7 frames
    of one header byte and 31 bytes of speech bits, 20 ms each."""
    rng = random.Random(seed)
    return b"#!AMR\n" + b"".join(bytes([0x3C]) + rng.randbytes(31) for _ in range(frames))


async def upload(
    county: Any,
    data: bytes,
    *,
    filename: str | None = None,
    title: str | None = None,
    token: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """Multipart when a file name is given (as a browser sends it), else the raw body."""
    headers = county.headers(token)
    if filename is None:
        async with county.http.post(
            county.url + "/api/media",
            data=data,
            headers={**headers, "Content-Type": "application/octet-stream"},
        ) as resp:
            return resp.status, await resp.json()
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    if title is not None:
        form.add_field("title", title)
    async with county.http.post(county.url + "/api/media", data=form, headers=headers) as resp:
        return resp.status, await resp.json()


def stored_files(county: Any) -> set[Path]:
    return set(county.prepared.settings.media_dir.rglob("*.ogg"))


async def test_uploads_in_every_common_format_play_on_terminals(make_county, tmp_path):
    county = await make_county(villages=6)
    who = tokens(county)
    files = {
        # Named as the wrong type on purpose: the content decides, not the name.
        "wav": (ffmpeg(tmp_path, "a.wav"), "recording.mp3"),
        "mp3": (ffmpeg(tmp_path, "a.mp3", "-c:a", "libmp3lame", "-b:a", "32k"), None),
        "ogg": (ffmpeg(tmp_path, "a.ogg", "-c:a", "libopus", "-b:a", "24k"), "voice.ogg"),
        "m4a": (ffmpeg(tmp_path, "a.m4a", "-c:a", "aac", "-b:a", "48k"), "语音.m4a"),
        "amr": (amr_nb(SOURCE_MS // 20), "phone.amr"),
    }
    media: dict[str, dict[str, Any]] = {}
    for kind, (data, filename) in files.items():
        status, body = await upload(county, data, filename=filename, title=f"录音 {kind}")
        assert status == 201, (kind, body)
        assert body["mime"] == "audio/ogg" and body["source"] == "upload", kind
        assert abs(body["duration_ms"] - (SOURCE_MS + PADDING_MS)) <= 120, (kind, body)
        media[kind] = body
    assert len({m["media_id"] for m in media.values()}) == len(files)

    _, info = await county.api("GET", f"/api/media/{media['amr']['media_id']}", expect=200)
    assert info["text"] == "录音 amr" and info["url"] == f"/media/{media['amr']['media_id']}"
    _, listing = await county.api("GET", "/api/media", token=who["viewer"], expect=200)
    assert {m["media_id"] for m in media.values()} <= {m["media_id"] for m in listing["media"]}
    status, _ = await upload(county, files["wav"][0], token=who["viewer"])
    assert status == 403
    status, _ = await upload(county, files["wav"][0], token=who["staff"])
    assert status == 201  # township staff record their own notices

    # Each recording to its own village, all at once.
    _, villages = await county.api("GET", "/api/villages", expect=200)
    village_ids = [v["id"] for v in villages["villages"] if v["device_count"]][: len(files)]
    sent = {}
    for kind, village in zip(files, village_ids, strict=True):
        sent[kind] = await post_broadcast(
            county,
            media_id=media[kind]["media_id"],
            category="other",
            priority="notice",
            targets={"villages": [village]},
        )
    for kind, bid in sent.items():
        view = await county.wait_states(bid, {"done"}, timeout_s=30)
        assert view["media_id"] == media[kind]["media_id"]
        for device_id, entries in county.all_plays(bid).items():
            (entry,) = entries
            wav_path = county.fleet.hardware[device_id].speaker.record_dir / entry["wav"]
            with wave.open(str(wav_path)) as w:
                played_ms = w.getnframes() * 1000 // w.getframerate()
            assert abs(played_ms - media[kind]["duration_ms"]) <= 40, (kind, played_ms)

    actions = audit_actions(county)
    uploads = [a for a in actions if a[1] == "media.upload"]
    assert len(uploads) == len(files) + 1


async def test_bad_uploads_are_refused_and_nothing_is_stored(make_county, tmp_path):
    county = await make_county(villages=2)
    wav = ffmpeg(tmp_path, "a.wav")
    mp3 = ffmpeg(tmp_path, "a.mp3", "-c:a", "libmp3lame", "-b:a", "32k", "-write_xing", "0")
    ogg = ffmpeg(tmp_path, "a.ogg", "-c:a", "libopus", "-b:a", "24k")
    assert county.controller.app is not None
    settings = county.controller.app[keys.SETTINGS]
    before = stored_files(county)
    _, listing_before = await county.api("GET", "/api/media?source=all", expect=200)

    refused = {
        "empty": (b"", None, "empty"),
        "random bytes": (random.Random(1).randbytes(40_000), "song.mp3", "not a recognised"),
        "text renamed": (b"this is not audio at all\n" * 200, "notice.wav", "not a recognised"),
        "png renamed": (b"\x89PNG\r\n\x1a\n" + bytes(4000), "voice.m4a", "not a recognised"),
        "truncated mp3": (mp3[: len(mp3) // 2 + 7], "cut.mp3", "corrupt or incomplete"),
        "truncated ogg": (ogg[: len(ogg) // 2], "cut.ogg", "corrupt or incomplete"),
        "wav header, junk": (wav[:44] + random.Random(2).randbytes(200), "x.wav", "corrupt"),
    }
    for name, (data, filename, reason) in refused.items():
        status, body = await upload(county, data, filename=filename)
        assert status == 400, (name, body)
        assert body["error"]["field"] == "file" and reason in body["error"]["message"], (name, body)

    status, body = await county.api("POST", "/api/media", json_body=None)
    assert status == 400 and body["error"]["field"] == "file"  # an empty raw body
    form = aiohttp.FormData()
    form.add_field("recording", wav, filename="a.wav")
    async with county.http.post(
        county.url + "/api/media", data=form, headers=county.headers()
    ) as resp:
        body = await resp.json()
        assert resp.status == 400 and body["error"]["field"] == "recording"

    settings.upload_max_duration_s = 1.0
    try:
        status, body = await upload(county, wav, filename="long.wav")
        assert status == 400 and "longer than the limit of 1 seconds" in body["error"]["message"]
    finally:
        settings.upload_max_duration_s = 600.0
    settings.upload_max_bytes = 20_000
    try:
        for filename in ("big.wav", None):
            status, body = await upload(county, wav, filename=filename)
            assert status == 400, body
            assert body["error"]["code"] == "too_large" and body["error"]["field"] == "file"
    finally:
        settings.upload_max_bytes = 20_000_000

    assert stored_files(county) == before
    _, listing = await county.api("GET", "/api/media?source=all", expect=200)
    assert listing == listing_before
    assert not [a for a in audit_actions(county) if a[1] == "media.upload"]
    # And a good file still goes through afterwards.
    status, _ = await upload(county, wav, filename="a.wav")
    assert status == 201
