"""Speech backends: one small interface, an online voice and an offline voice.

edge-tts (Microsoft's read-aloud service) sounds far better but has no SLA and has broken
upstream with 403/503 more than once; espeak-ng runs on the box and must always work.
The renderer (`service.AnnouncementRenderer`) tries them in a configured order.

`rate` everywhere is a relative speaking rate in percent (0 = the voice's normal pace,
-10 = ten percent slower), the same unit edge-tts uses, so a configured rate means the
same thing whichever voice ends up speaking.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from pydub import AudioSegment

from controller.speech.render import decode_audio

EDGE_VOICES: dict[str, str] = {"cmn": "zh-CN-XiaoxiaoNeural", "yue": "zh-HK-HiuGaaiNeural"}
# Alternative Mandarin voice (male); pass {"cmn": EDGE_MALE_CMN, ...} to use it.
EDGE_MALE_CMN = "zh-CN-YunxiNeural"
# Debian's plain `cmn` voice reads Han characters through its English fallback; the
# pinyin variant is the one that actually reads them as Mandarin.
ESPEAK_VOICES: dict[str, str] = {"cmn": "cmn-latn-pinyin", "yue": "yue"}
ESPEAK_BASE_WPM = 175


class SynthesisError(Exception):
    """A backend could not produce speech; the renderer moves on to the next one."""


@runtime_checkable
class SpeechBackend(Protocol):
    """What the renderer needs from a voice.

    `voice_for` is known before synthesis so that the segment cache can be consulted
    without touching the backend at all (which is what lets cached speech survive an
    outage of the online voice).
    """

    name: str

    def voice_for(self, lang: str) -> str:
        """The voice this backend uses for `lang`; raise SynthesisError if it has none."""
        ...

    async def synthesize(self, text: str, *, lang: str, rate: int) -> AudioSegment:
        """Speak `text` (already normalised) in `lang` and return the audio."""
        ...


def _voice(voices: Mapping[str, str], backend: str, lang: str) -> str:
    try:
        return voices[lang]
    except KeyError:
        raise SynthesisError(f"{backend} has no voice configured for {lang!r}") from None


class EspeakBackend:
    """espeak-ng, offline. Robotic but always available; a few milliseconds per sentence."""

    name = "espeak-ng"

    def __init__(
        self, *, voices: Mapping[str, str] | None = None, executable: str = "espeak-ng"
    ) -> None:
        self.voices = dict(ESPEAK_VOICES if voices is None else voices)
        self.executable = executable

    def voice_for(self, lang: str) -> str:
        return _voice(self.voices, self.name, lang)

    async def synthesize(self, text: str, *, lang: str, rate: int) -> AudioSegment:
        voice = self.voice_for(lang)
        wpm = max(80, min(450, round(ESPEAK_BASE_WPM * (100 + rate) / 100)))
        try:
            # Text goes through stdin, never argv, so a leading "-" cannot become an option.
            proc = await asyncio.create_subprocess_exec(
                self.executable,
                "-v",
                voice,
                "-s",
                str(wpm),
                "-b",
                "1",
                "--stdin",
                "--stdout",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise SynthesisError(f"cannot run {self.executable}: {exc}") from exc
        try:
            out, err = await proc.communicate(text.encode("utf-8"))
        finally:
            # A cancelled render (timeout) must not leave espeak-ng running.
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            raise SynthesisError(
                f"espeak-ng exited with {proc.returncode}: {err.decode(errors='replace')[:200]}"
            )
        return parse_streamed_wav(out)


def parse_streamed_wav(data: bytes) -> AudioSegment:
    """Read the WAV espeak-ng writes to stdout.

    Its header carries 0x7fffffff as the sizes because it is written before the length is
    known, which the strict parser in pydub rejects; the format fields are still right.
    """
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SynthesisError("espeak-ng did not produce a WAV stream")
    pos = 12
    fmt: tuple[int, int, int] | None = None
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        body = pos + 8
        if chunk_id == b"fmt ":
            audio_format, channels, rate = struct.unpack("<HHI", data[body : body + 8])
            (bits,) = struct.unpack("<H", data[body + 14 : body + 16])
            if audio_format != 1:
                raise SynthesisError("espeak-ng produced non-PCM audio")
            fmt = (channels, rate, bits // 8)
        elif chunk_id == b"data":
            if fmt is None:
                break
            channels, rate, width = fmt
            pcm = data[body:]
            pcm = pcm[: len(pcm) - len(pcm) % (width * channels)]
            if not pcm:
                raise SynthesisError("espeak-ng produced no audio")
            return AudioSegment(data=pcm, sample_width=width, frame_rate=rate, channels=channels)
        pos = body + size + (size & 1)
    raise SynthesisError("espeak-ng produced a WAV stream without audio data")


class EdgeTTSBackend:
    """Microsoft Edge read-aloud voices through the `edge-tts` library (needs internet)."""

    name = "edge-tts"

    def __init__(
        self, *, voices: Mapping[str, str] | None = None, silence_timeout_s: float = 3.0
    ) -> None:
        """`silence_timeout_s`: give up when the service has sent nothing for this long
        (before the first chunk or between chunks). A hard total limit would cut off long
        texts that are streaming fine; a dead or stalled service is what must fail fast."""
        self.voices = dict(EDGE_VOICES if voices is None else voices)
        self.silence_timeout_s = silence_timeout_s

    def voice_for(self, lang: str) -> str:
        return _voice(self.voices, self.name, lang)

    async def synthesize(self, text: str, *, lang: str, rate: int) -> AudioSegment:
        import edge_tts  # imported here: the library pulls in a TLS context and DRM helpers

        voice = self.voice_for(lang)
        mp3 = bytearray()
        wait_s = max(1, math.ceil(self.silence_timeout_s))
        try:
            communicate = edge_tts.Communicate(
                text, voice, rate=f"{rate:+d}%", connect_timeout=wait_s, receive_timeout=wait_s
            )
            stream = communicate.stream()
            try:
                while True:
                    async with asyncio.timeout(self.silence_timeout_s):
                        chunk = await anext(stream, None)
                    if chunk is None:
                        break
                    if chunk["type"] == "audio" and "data" in chunk:
                        mp3 += chunk["data"]
            finally:
                await stream.aclose()
        except TimeoutError:
            raise SynthesisError(
                f"edge-tts sent nothing for {self.silence_timeout_s:g} s"
            ) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the library raises aiohttp, edge_tts and ValueError types
            raise SynthesisError(f"edge-tts failed: {type(exc).__name__}: {exc}") from exc
        if not mp3:
            raise SynthesisError("edge-tts returned no audio")
        try:
            return await decode_audio(bytes(mp3))
        except ValueError as exc:
            raise SynthesisError(f"edge-tts returned undecodable audio: {exc}") from exc
