"""Proof that sound came out: the output monitor sampled during every play.

The DAC does not know whether the amplifier or the speaker line passed its signal on; a
current sense on the line (or a loopback capture) does. The agent reads it a few times
a second while a play sounds and counts the time the line was quiet, so a play that
ran to its end through a dead line is reported `silent` with the seconds affected
instead of `done`. On request, the first seconds of the capture go to the controller as
a WAV file (`capture_to_wav`), so a technician can hear the pole from the duty room.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import wave

from edge_agent.hardware import OutputMonitor

# How often the monitor is read while a play sounds: a real board's current sense is
# an ADC read, cheap enough for this, and a quarter second is far below what a listener
# would miss.
SAMPLE_S = 0.25


class SilenceWatch:
    """Samples `monitor` from `begin()` (the play's first sample) until `stop()`."""

    def __init__(self, monitor: OutputMonitor, sample_s: float = SAMPLE_S) -> None:
        self._monitor = monitor
        self._sample_s = sample_s
        self._task: asyncio.Task[None] | None = None
        self._began: float | None = None
        self.silent_ms = 0
        self.first_silent_at_ms: int | None = None  # offset into the play

    def begin(self) -> None:
        self._began = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._sample())

    def stop(self) -> None:
        # Called as soon as the play returns, before the loop runs anything else, so no
        # sample is taken after the DAC stopped (that would count as silence).
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _sample(self) -> None:
        assert self._began is not None
        last = self._began
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(self._sample_s)
                now = time.monotonic()
                # The time since the last reading counts as heard or silent as a whole:
                # on a loaded machine the sleep can overrun, and the reading is all we know.
                if not self._monitor.carrying():
                    if self.first_silent_at_ms is None:
                        self.first_silent_at_ms = int((last - self._began) * 1000)
                    self.silent_ms += int((now - last) * 1000)
                last = now

    def verdict(self, duration_ms: int) -> tuple[int, int] | None:
        """(silent ms, offset where it began) if the line was found quiet; else None."""
        if self.first_silent_at_ms is None:
            return None
        return min(self.silent_ms, duration_ms), min(self.first_silent_at_ms, duration_ms)


# The loopback capture's format (edge_agent.hardware.OutputMonitor.last_clip).
CAPTURE_RATE = 16_000


def capture_to_wav(pcm: bytes, rate: int = CAPTURE_RATE) -> bytes:
    """A loopback capture (mono 16-bit PCM) as the WAV file the controller keeps and the
    console plays."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()
