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


async def decode_file(path: Path) -> bytes:
    """Any audio file -> 16 kHz mono s16le PCM, exactly as the tests decode it too."""
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        "-i",
        str(path),
        "-f",
        "s16le",
        "-acodec",
        "pcm_s16le",
        "-ac",
        "1",
        "-ar",
        str(SAMPLE_RATE),
        "-",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:
        # A terminal switched off mid-decode must not leave ffmpeg behind.
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise ValueError(f"cannot decode {path.name}: {err.decode(errors='replace')[:200]}")
    return out
