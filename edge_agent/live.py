"""Live paging on the terminal: receive a session's frames, verify each, hold them in a
jitter buffer, and hand them to the speaker at their playout instant.

The signed start command (a `PlayBody` with `live`) carries the session's Ed25519
public key; every frame must verify against it, so a frame published by anyone else on
the broker, or altered on the way, is counted and never played. A frame sounds at its
controller timestamp plus the session's playout delay on the terminal's NTP-synced
clock, which keeps every pole in step; a frame that arrives after its instant is
dropped, and a gap is silence (the speaker fills it), never noise. No verified frame
for `loss_timeout_ms` ends the session here as lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

from dalaba import protocol as p

log = logging.getLogger(__name__)


def _mulaw_tables() -> tuple[bytes, bytes]:
    """G.711 mu-law byte -> 16-bit little-endian sample, split into low and high bytes
    so a whole frame decodes with two `bytes.translate` calls (C speed, stdlib only)."""
    lo, hi = bytearray(256), bytearray(256)
    for code in range(256):
        u = ~code & 0xFF
        t = ((u & 0x0F) << 3) + 0x84
        t <<= (u & 0x70) >> 4
        sample = (0x84 - t) if u & 0x80 else (t - 0x84)
        word = sample & 0xFFFF
        lo[code], hi[code] = word & 0xFF, word >> 8
    return bytes(lo), bytes(hi)


_MULAW_LO, _MULAW_HI = _mulaw_tables()


def decode_mulaw(data: bytes) -> bytes:
    """mu-law bytes -> signed 16-bit little-endian PCM."""
    out = bytearray(2 * len(data))
    out[0::2] = data.translate(_MULAW_LO)
    out[1::2] = data.translate(_MULAW_HI)
    return bytes(out)


class LiveLost(Exception):
    """No verified frame for the session's loss timeout."""


class LiveReceiver:
    """One live session's frames on this terminal, from its start command to its end."""

    def __init__(self, broadcast_id: str, spec: p.LiveStream) -> None:
        self.broadcast_id = broadcast_id
        self.spec = spec
        self._key = spec.public_key()
        self._frames: dict[int, p.LiveFrame] = {}
        self._next_seq = 0
        self._ended = False
        self._last_verified = time.monotonic()
        self._arrived = asyncio.Event()
        self.counters: Counter[str] = Counter()

    def offer(self, raw: bytes) -> bool:
        """A payload from the session's topic: kept if it verifies, else counted."""
        try:
            frame = p.open_live_frame(raw, self.broadcast_id, self._key)
        except p.ProtocolError as exc:
            self.counters[f"refused_{exc.reason.value}"] += 1
            self.counters["refused"] += 1
            return False
        if frame.seq < self._next_seq or frame.seq in self._frames:
            self.counters["duplicate"] += 1  # a genuine frame replayed: already had it
            return False
        # Bounded: a burst can never hold more than a few seconds of audio.
        if len(self._frames) >= 10_000 // self.spec.frame_ms:
            self.counters["overflow"] += 1
            return False
        self._frames[frame.seq] = frame
        self._last_verified = time.monotonic()
        self.counters["verified"] += 1
        self._arrived.set()
        return True

    async def chunks(self, now_ms: Callable[[], int]) -> AsyncIterator[tuple[int, bytes]]:
        """(playout instant on the terminal clock, 16-bit PCM) in order, until the end
        frame; raises `LiveLost` when the frames stop coming."""
        spec = self.spec
        while not self._ended:
            if self._frames:
                seq = min(self._frames)
                frame = self._frames.pop(seq)
                self._next_seq = seq + 1
                if frame.end:
                    self._ended = True
                play_at = frame.t_ms + spec.playout_delay_ms
                if play_at + spec.frame_ms < now_ms():
                    self.counters["late"] += 1  # its instant has passed: silence instead
                    continue
                if frame.audio:
                    yield play_at, decode_mulaw(frame.audio)
                continue
            self._arrived.clear()
            waited = time.monotonic() - self._last_verified
            remaining = spec.loss_timeout_ms / 1000 - waited
            if remaining <= 0:
                raise LiveLost(f"no verified frame for {spec.loss_timeout_ms} ms")
            try:
                # Not wait_for: 3.11's loses a cancel that lands as a frame arrives
                # (bpo-42130), and a stopped session would go on playing.
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                continue
