"""The simulated terminal's audio decoder (its DAC path), backed by ffmpeg.

Decoding is the hardware's job on a real board too. Here one process may hold
thousands of terminals, all told to play the same announcement at once, so decoded
PCM is shared per media hash: one ffmpeg run per announcement, not per terminal.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path

SAMPLE_RATE = 16_000  # mono, signed 16-bit: what the simulated amplifier outputs

_decoded: OrderedDict[str, bytes] = OrderedDict()
_locks: dict[str, asyncio.Lock] = {}
_MAX_ITEMS = 32


async def decode_pcm(path: Path, sha256: str) -> bytes:
    lock = _locks.setdefault(sha256, asyncio.Lock())
    async with lock:
        pcm = _decoded.get(sha256)
        if pcm is None:
            pcm = await decode_file(path)
            _decoded[sha256] = pcm
            while len(_decoded) > _MAX_ITEMS:
                _decoded.popitem(last=False)
        _decoded.move_to_end(sha256)
        return pcm


def _demuxer(data: bytes) -> str:
    """The container of a cached media file, from its bytes: what the controller sends
    (Ogg/Opus) and the WAV and MP3 files tests hand to terminals directly."""
    if data[:4] == b"OggS":
        return "ogg"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE6 == 0xE2):
        return "mp3"
    raise ValueError("not Ogg, WAV or MP3 audio")


async def decode_file(path: Path) -> bytes:
    """An audio file -> 16 kHz mono s16le PCM, exactly as the tests decode it too.

    As on the controller, ffmpeg is told the format and reads the bytes from stdin with
    `pipe` as its only protocol: a media file can never make it open another file or URL.
    """
    data = await asyncio.to_thread(path.read_bytes)
    try:
        demuxer = _demuxer(data)
    except ValueError as exc:
        raise ValueError(f"cannot decode {path.name}: {exc}") from None
    proc = await asyncio.create_subprocess_exec(
        *("ffmpeg", "-nostdin", "-v", "error"),
        *("-f", demuxer, "-format_whitelist", demuxer, "-protocol_whitelist", "pipe"),
        *("-i", "pipe:0", "-f", "s16le", "-acodec", "pcm_s16le"),
        *("-ac", "1", "-ar", str(SAMPLE_RATE), "pipe:1"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate(data)
    except asyncio.CancelledError:
        # A terminal switched off mid-decode must not leave ffmpeg behind.
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise ValueError(f"cannot decode {path.name}: {err.decode(errors='replace')[:200]}")
    return out
