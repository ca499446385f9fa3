"""Uploads made to read the server's files or fetch URLs through ffmpeg: the playlist trick
(an ID3 tag, then an HLS playlist naming a server file), concat scripts, `.m3u8`, SDP and
`file:`, `http:`, `subfile,` references. Each is refused with a 400 naming why, nothing is
stored, no secret byte leaves the server and no request goes out.

The tricks are first shown to work against ffmpeg used the old way (guessing the format,
given a file path), so the refusals below are of live attacks, not of duds.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from controller.speech import render, sniff
from tests.integration.content_support import audit_actions, tokens
from tests.integration.test_content_uploads import stored_files, upload

ID3 = b"ID3\x03\x00\x00\x00\x00\x00\x00"  # an empty ID3v2.3 tag: what makes it "an MP3"


@dataclass
class Secrets:
    """Files on the server that no upload may read: MPEG-TS audio (what an HLS playlist
    would happily play) and a text file, both holding a token."""

    token: bytes
    audio: Path
    text: Path


@pytest.fixture
def secrets(tmp_path: Path) -> Secrets:
    folder = tmp_path / "server-files"
    folder.mkdir()
    token = b"SECRET-" + random.Random().randbytes(12).hex().encode()
    audio = folder / "secret.ts"
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi"),
            *("-i", "sine=frequency=1000:sample_rate=16000:duration=4"),
            *("-metadata", f"service_name={token.decode()}", "-f", "mpegts", str(audio)),
        ],
        check=True,
    )
    assert token in audio.read_bytes()
    text = folder / "secret.txt"
    text.write_bytes(token + b"\n")
    return Secrets(token, audio, text)


@pytest.fixture
def tagged_mp3(tmp_path: Path) -> bytes:
    mp3 = tmp_path / "real.mp3"
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi"),
            *("-i", "sine=frequency=440:sample_rate=16000:duration=2"),
            *("-c:a", "libmp3lame", "-b:a", "32k", "-id3v2_version", "3"),
            *("-metadata", "title=通知", str(mp3)),
        ],
        check=True,
    )
    data = mp3.read_bytes()
    assert data.startswith(b"ID3")
    return data


@dataclass
class Bait:
    """A local web server that an upload might try to reach; it serves the secret audio
    to whoever asks and remembers every request."""

    url: str
    requests: list[str] = field(default_factory=list)


@pytest.fixture
async def bait(secrets: Secrets) -> AsyncIterator[Bait]:
    found: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        found.append(request.path_qs)
        return web.Response(body=secrets.audio.read_bytes(), content_type="video/mp2t")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Bait(f"http://{host}:{port}", found)
    finally:
        await runner.cleanup()


def hls(segment: str) -> bytes:
    return (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:5\n"
        f"#EXTINF:5.0,\n{segment}\n#EXT-X-ENDLIST\n"
    ).encode()


def sdp(port: int = 5004) -> bytes:
    return (
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\n"
    ).encode()


def attacks(secrets: Secrets, bait: Bait) -> dict[str, tuple[bytes, str | None, str, str]]:
    """name -> (upload, file name, error code, what the message must say)."""
    ts, txt = str(secrets.audio), str(secrets.text)
    subfile = f"subfile,,start,0,end,{secrets.audio.stat().st_size},,:{ts}"
    playlist = ("not_plain_audio", "not plain audio (playlist)")
    concat = ("not_plain_audio", "not plain audio (concat script)")
    reference = ("not_plain_audio", "not plain audio (a file or URL reference)")
    return {
        "playlist trick, path": (ID3 + hls(ts), "voice.mp3", *playlist),
        "playlist trick, file:": (ID3 + hls(f"file:{ts}"), "voice.mp3", *playlist),
        "playlist trick, http:": (ID3 + hls(f"{bait.url}/seg.ts"), "voice.mp3", *playlist),
        "playlist trick, subfile,": (ID3 + hls(subfile), "voice.mp3", *playlist),
        "m3u8": (hls(ts), "live.m3u8", *playlist),
        "m3u8, http:, raw body": (hls(f"{bait.url}/live.ts"), None, *playlist),
        "m3u8 with a BOM": (b"\xef\xbb\xbf" + hls(ts), "live.m3u8", *playlist),
        "DASH manifest": (
            f'<?xml version="1.0"?><MPD><BaseURL>{bait.url}/</BaseURL></MPD>'.encode(),
            "a.mpd",
            *playlist,
        ),
        "concat script": (f"ffconcat version 1.0\nfile '{ts}'\n".encode(), "a.mp3", *concat),
        "concat script, relative": (b"ffconcat version 1.0\nfile secret.ts\n", "a.wav", *concat),
        "concat list, no header": (f"# list\nfile '{txt}'\n".encode(), "a.ogg", *concat),
        "concat script behind ID3": (ID3 + f"file '{subfile}'\n".encode(), "a.mp3", *concat),
        "file: reference": (f"file:{txt}".encode(), "a.mp3", *reference),
        "http: reference": (f"{bait.url}/x.mp3".encode(), "a.mp3", *reference),
        "subfile, reference": (f"subfile,,start,0,end,64,,:{txt}".encode(), "a.mp3", *reference),
        "concat: reference": (f"concat:{ts}|{ts}".encode(), "a.mp3", *reference),
        "file: behind ID3": (ID3 + f"file:{ts}\n".encode(), "a.mp3", *reference),
        "SDP": (sdp(), "call.sdp", "not_plain_audio", "not plain audio (SDP session"),
        "SDP behind ID3": (ID3 + sdp(), "a.mp3", "not_plain_audio", "(SDP session"),
        "ID3 then garbage": (
            ID3 + random.Random(9).randbytes(3000),
            "a.mp3",
            "unsupported_audio",
            "its ID3 tag is not followed by MPEG audio",
        ),
    }


def naive_decode(data: bytes, folder: Path) -> bytes:
    """ffmpeg as the upload path once ran it: format guessed, input given as a path."""
    path = folder / "dalaba-audio-upload"
    path.write_bytes(data)
    return subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-"],
        capture_output=True,
        check=False,
    ).stdout


def test_the_tricks_are_live_against_ffmpeg_left_to_guess(secrets: Secrets) -> None:
    """Three seconds and more of the server's own audio file come out of each. (ffmpeg
    5.1 itself keeps a playlist read from a file to `file,crypto,data`, so the `http:`
    variant is not live here; it is refused all the same below.)"""
    folder = secrets.audio.parent
    for target in (str(secrets.audio), f"file:{secrets.audio}"):
        assert len(naive_decode(ID3 + hls(target), folder)) > 16_000 * 2 * 3, target
    assert len(naive_decode(b"ffconcat version 1.0\nfile secret.ts\n", folder)) > 16_000 * 2 * 3


async def test_ffmpeg_follows_nothing_even_if_the_sniffer_were_fooled(
    secrets: Secrets, bait: Bait
) -> None:
    """The second lock: told the format and fed on a pipe, ffmpeg cannot follow a
    playlist, whatever container the bytes are passed off as."""
    payloads = [
        ID3 + hls(str(secrets.audio)),
        ID3 + hls(f"{bait.url}/seg.ts"),
        hls(f"{bait.url}/seg.ts"),
        b"ffconcat version 1.0\nfile secret.ts\n",
        sdp(),
    ]
    containers = [sniff.MP3, sniff.AAC, sniff.WAV, sniff.OGG, sniff.MP4, sniff.WEBM, sniff.AMR]
    for data in payloads:
        for container in containers:
            with pytest.raises(ValueError):
                await render.decode_audio(data, container=container)
            with pytest.raises(ValueError):
                await render.probe_duration_s(data, container)
    assert bait.requests == []


@pytest.mark.broker
@pytest.mark.slow
async def test_upload_attacks_are_refused_and_read_nothing(
    make_county: Any, secrets: Secrets, bait: Bait, tagged_mp3: bytes
) -> None:
    county = await make_county(villages=1)
    staff = tokens(county)["staff"]  # the least role that may upload
    before = stored_files(county)
    _, listing_before = await county.api("GET", "/api/media?source=all", expect=200)

    for name, (data, filename, code, reason) in attacks(secrets, bait).items():
        status, body = await upload(county, data, filename=filename, token=staff)
        assert status == 400, (name, body)
        error = body["error"]
        assert error["field"] == "file" and error["code"] == code, (name, error)
        assert reason in error["message"], (name, error)

    assert stored_files(county) == before
    _, listing = await county.api("GET", "/api/media?source=all", expect=200)
    assert listing == listing_before
    assert not [a for a in audit_actions(county) if a[1] == "media.upload"]
    assert bait.requests == []
    data_dir = county.prepared.data_dir
    leaked = [p for p in data_dir.rglob("*") if p.is_file() and secrets.token in p.read_bytes()]
    assert leaked == []

    # A real MP3 with an ID3 tag, as phones and editors write it, still goes through.
    status, body = await upload(county, tagged_mp3, filename="real.mp3", token=staff)
    assert status == 201, body
    assert len(stored_files(county)) == len(before) + 1


@pytest.fixture
def phone_m4a(tmp_path: Path) -> tuple[bytes, bytes]:
    """A 30 s M4A laid out as phones write it (index after the audio), and its PCM as
    ffmpeg decodes it from the file."""
    path = tmp_path / "phone.m4a"
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi"),
            *("-i", "sine=frequency=440:sample_rate=16000:duration=30"),
            *("-c:a", "aac", "-b:a", "64k", str(path)),
        ],
        check=True,
    )
    pcm = subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-nostdin", "-i", str(path)),
            *("-ac", "1", "-ar", "16000", "-f", "s16le", "-"),
        ],
        capture_output=True,
        check=True,
    ).stdout
    return path.read_bytes(), pcm


async def test_an_m4a_with_its_index_last_streams_through_the_pipe(
    phone_m4a: tuple[bytes, bytes],
) -> None:
    data, pcm = phone_m4a
    assert data.index(b"moov") > data.index(b"mdat")  # the layout that cannot stream as is
    streamable = sniff.streamable_mp4(data)
    assert streamable.index(b"moov") < streamable.index(b"mdat") and len(streamable) == len(data)
    decoded = await render.decode_audio(data)
    assert decoded.raw_data == pcm
