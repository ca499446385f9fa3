"""Decoding a cached media file into PCM, the format a DAC takes, with ffmpeg.

Both the real board's speaker (edge_agent/boards/linux.py) and the simulated one
(firmware_sim/audio.py) decode here, so a test can decode a file exactly as a terminal
did and compare samples.
"""

from __future__ import annotations

import asyncio
from pathlib import Path


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


async def decode_file(path: Path, *, sample_rate: int, channels: int = 1) -> bytes:
    """An audio file -> signed 16-bit little-endian PCM at `sample_rate`, `channels`
    interleaved.

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
        *("-ac", str(channels), "-ar", str(sample_rate), "pipe:1"),
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
