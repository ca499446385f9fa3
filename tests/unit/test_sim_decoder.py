"""The simulator's shared decoder (firmware_sim/audio.py) across event loops."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

from firmware_sim import audio
from firmware_sim.audio import SAMPLE_RATE


def test_the_shared_decoder_serves_fleets_in_one_event_loop_after_another(
    tmp_path: Path,
) -> None:
    """The simulator decodes each announcement once per process for all its terminals.
    A process that runs one fleet after another, each in its own event loop (the test
    suite), must not find the decoder's lock tied to the first loop: a CI run failed
    33 of 34 terminals' plays with "bound to a different event loop"."""
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(b"\x00\x10" * (SAMPLE_RATE // 5))
    sha = "ab" * 32

    async def fleet() -> list[bytes]:
        audio._decoded.pop(sha, None)  # every fleet decodes it again, all at once
        return await asyncio.gather(*(audio.decode_pcm(path, sha) for _ in range(5)))

    first = asyncio.run(fleet())  # contended: its lock had waiters in this loop
    second = asyncio.run(fleet())
    assert len(set(first + second)) == 1 and len(first[0]) > 0
