"""A local STAND-IN for Microsoft's edge-tts read-aloud WebSocket service.

This is not the real service (tests have no internet, and the real one has no SLA). It
speaks just enough of the protocol the installed `edge_tts` 7.3.1 library uses that the
real library code runs unmodified against it; tests point the library here by patching
`edge_tts.communicate.WSS_URL` to this server's ws:// address.

What the library sends and expects (edge_tts/communicate.py):

- a WebSocket upgrade on `.../edge/v1?TrustedClientToken=...&ConnectionId=...`
  `&Sec-MS-GEC=...&Sec-MS-GEC-Version=...`; a refused upgrade (HTTP 403) makes the
  library adjust its clock skew from the `Date` header and retry once;
- a text frame `X-Timestamp/Content-Type/Path:speech.config` + JSON asking for
  `audio-24khz-48kbitrate-mono-mp3`;
- a text frame `X-RequestId/Content-Type/X-Timestamp/Path:ssml` + an SSML document with
  `<voice name=...><prosody rate=...>text</prosody></voice>`;
- back: text frames `Path:turn.start`, `Path:audio.metadata` (JSON `Metadata` list with
  `SentenceBoundary` entries), binary frames of `2-byte big-endian header length +
  header lines (X-RequestId, Content-Type:audio/mpeg, Path:audio) + MP3 bytes`, a final
  binary `Path:audio` frame with no Content-Type and no data, then `Path:turn.end`.

The audio is real MP3 (24 kHz, 48 kbit/s, mono, as the service sends), made here with
espeak-ng and ffmpeg from the text in the SSML, in a higher pitch so it is audibly not
the offline voice.

Modes for failure tests: "ok", "http403", "http503", "close" (accepts the socket, then
closes it without audio), "hang" (accepts and never answers).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from html import unescape
from typing import Any, Literal

from aiohttp import WSMsgType, web

Mode = Literal["ok", "http403", "http503", "close", "hang"]
PATH = "/consumer/speech/synthesize/readaloud/edge/v1"
TRUSTED_CLIENT_TOKEN = "6A5AA1D4EAFF4E9FB37E23D68491D6F4"
MP3_CHUNK = 4096


@dataclass
class SynthesisSeen:
    """One request as the stand-in received it (for assertions)."""

    voice: str
    rate: str
    text: str
    query: dict[str, str]
    config: dict[str, Any] = field(default_factory=dict)


def _split_text_frame(frame: str) -> tuple[dict[str, str], str]:
    head, _, body = frame.partition("\r\n\r\n")
    headers = dict(line.split(":", 1) for line in head.split("\r\n") if ":" in line)
    return headers, body


def _binary_audio_frame(request_id: str, data: bytes, content_type: bool = True) -> bytes:
    lines = [f"X-RequestId:{request_id}"]
    if content_type:
        lines.append("Content-Type:audio/mpeg")
    lines += [f"X-StreamId:{uuid.uuid4().hex.upper()}", "Path:audio"]
    # The library reads `data[:n]` (length bytes included) as the header lines and the
    # audio from `data[n + 2:]`, so the header text carries its own trailing CRLF.
    header = ("\r\n".join(lines) + "\r\n").encode("utf-8")
    return len(header).to_bytes(2, "big") + header + data


def _text_frame(request_id: str, path: str, body: str) -> str:
    return (
        f"X-RequestId:{request_id}\r\n"
        "Content-Type:application/json; charset=utf-8\r\n"
        f"Path:{path}\r\n\r\n{body}"
    )


async def speak_mp3(text: str, lang: str) -> bytes:
    """Real MP3 speech for `text`, in the format the service sends."""
    voice = "yue" if lang == "yue" else "cmn-latn-pinyin"
    espeak = await asyncio.create_subprocess_exec(
        "espeak-ng", "-v", voice, "-p", "75", "-b", "1", "--stdin", "--stdout",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    wav, _ = await espeak.communicate(text.encode("utf-8"))
    ffmpeg = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-nostdin", "-f", "wav", "-i", "pipe:0",
        "-ar", "24000", "-ac", "1", "-c:a", "libmp3lame", "-b:a", "48k", "-f", "mp3", "pipe:1",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    mp3, _ = await ffmpeg.communicate(wav)
    if espeak.returncode or ffmpeg.returncode or not mp3:
        raise RuntimeError("stand-in could not make its MP3")
    return mp3


class EdgeTTSStandIn:
    """Local stand-in server; use as `async with EdgeTTSStandIn(mode) as standin:`."""

    def __init__(self, mode: Mode = "ok") -> None:
        self.mode: Mode = mode
        self.seen: list[SynthesisSeen] = []
        self.connections = 0
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._release = asyncio.Event()

    @property
    def wss_url(self) -> str:
        """Value for `edge_tts.communicate.WSS_URL` (the library appends `&...`)."""
        return f"ws://127.0.0.1:{self._port}{PATH}?TrustedClientToken={TRUSTED_CLIENT_TOKEN}"

    async def __aenter__(self) -> EdgeTTSStandIn:
        app = web.Application()
        app.router.add_get(PATH, self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.connections += 1
        for name in ("TrustedClientToken", "ConnectionId", "Sec-MS-GEC", "Sec-MS-GEC-Version"):
            if name not in request.query:
                return web.Response(status=400, text=f"missing {name}")
        if self.mode == "http403":
            # aiohttp adds the Date header the library uses to correct its clock.
            return web.Response(status=403, text="Forbidden")
        if self.mode == "http503":
            return web.Response(status=503, text="Service Unavailable")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        config: dict[str, Any] = {}
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            headers, body = _split_text_frame(msg.data)
            if headers.get("Path") == "speech.config":
                config = json.loads(body)
                continue
            if headers.get("Path") != "ssml":
                continue
            if self.mode == "close":
                await ws.close()
                break
            if self.mode == "hang":
                await self._release.wait()
                break
            await self._answer(ws, headers["X-RequestId"], body, dict(request.query), config)
        return ws

    async def _answer(
        self,
        ws: web.WebSocketResponse,
        request_id: str,
        ssml: str,
        query: dict[str, str],
        config: dict[str, Any],
    ) -> None:
        root = ET.fromstring(ssml)
        ns = "{http://www.w3.org/2001/10/synthesis}"
        voice_el = root.find(f"{ns}voice")
        prosody = root.find(f".//{ns}prosody")
        assert voice_el is not None and prosody is not None
        voice = voice_el.attrib["name"]
        text = unescape("".join(prosody.itertext()))
        self.seen.append(SynthesisSeen(voice, prosody.attrib.get("rate", ""), text, query, config))
        lang = "yue" if re.match(r"zh-HK", voice) else "cmn"
        mp3 = await speak_mp3(text, lang)

        await ws.send_str(_text_frame(request_id, "turn.start", '{"context":{}}'))
        duration_ticks = len(mp3) * 8 * 10_000_000 // 48_000
        boundary = {
            "Type": "SentenceBoundary",
            "Data": {
                "Offset": 1_000_000,
                "Duration": duration_ticks,
                "text": {"Text": text, "Length": len(text), "BoundaryType": "SentenceBoundary"},
            },
        }
        metadata = json.dumps({"Metadata": [boundary]}, ensure_ascii=False)
        await ws.send_str(_text_frame(request_id, "audio.metadata", metadata))
        for start in range(0, len(mp3), MP3_CHUNK):
            await ws.send_bytes(_binary_audio_frame(request_id, mp3[start : start + MP3_CHUNK]))
        await ws.send_bytes(_binary_audio_frame(request_id, b"", content_type=False))
        await ws.send_str(_text_frame(request_id, "turn.end", "{}"))
