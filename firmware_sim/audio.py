"""The simulated terminal's audio decoder (its DAC path), backed by ffmpeg.

Decoding is the hardware's job on a real board too. Here one process may hold
thousands of terminals, all told to play the same announcement at once, so decoded
PCM is shared per media hash: one ffmpeg run per announcement, not per terminal.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from pathlib import Path

from edge_agent.decode import decode_file as _decode

SAMPLE_RATE = 16_000  # mono, signed 16-bit: what the simulated amplifier outputs

_decoded: OrderedDict[str, bytes] = OrderedDict()
# One lock per media hash and event loop: an asyncio.Lock that has had a waiter belongs
# to that loop, and a process that runs one fleet after another (the test suite, one
# event loop per test) would otherwise fail every play of the same audio with "bound to
# a different event loop" (a CI run failed 33 of 34 terminals that way).
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)
_MAX_ITEMS = 32


async def decode_pcm(path: Path, sha256: str) -> bytes:
    locks = _locks.setdefault(asyncio.get_running_loop(), {})
    lock = locks.setdefault(sha256, asyncio.Lock())
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
