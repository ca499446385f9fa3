"""The simulated terminal's audio decoder (its DAC path), backed by ffmpeg.

Decoding is the hardware's job on a real board too. Here one process may hold
thousands of terminals, all told to play the same announcement at once, so decoded
PCM is shared per media hash: one ffmpeg run per announcement, not per terminal.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path

from edge_agent.decode import decode_file as _decode

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
    """An audio file -> 16 kHz mono s16le PCM, exactly as the tests decode it too."""
    return await _decode(path, sample_rate=SAMPLE_RATE)
