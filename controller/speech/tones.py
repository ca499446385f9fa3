"""Attention signals played before the speech, generated synthetically.

Listeners learn the sound before they hear the words, so each kind must be told apart at
once: a soft two-note bell for daily notices and programmes, a brisk rising three-note
call for live paging, and a hard hi-lo alert for emergencies in which the level can be
heard — level I (red) gives four bursts at the highest pitch, level IV (blue) one burst at
the lowest. No audio files are shipped: everything is computed here, so the signals are
identical on every controller and cannot go missing.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from functools import lru_cache

from pydub import AudioSegment

SAMPLE_RATE = 16_000
_PEAK = 0.5 * 32767  # headroom: the mix is loudness-normalised later anyway


@dataclass(frozen=True)
class Burst:
    """One emergency burst: `cycles` hi-lo alternations between two pitches."""

    high_hz: float
    low_hz: float
    cycles: int
    half_cycle_ms: int


# Level -> (number of bursts, high pitch, low pitch, half cycle). Both the count and the
# pitch change with the level, so a listener who misses the count still hears the urgency.
EMERGENCY_PATTERNS: dict[int, tuple[int, float, float, int]] = {
    1: (4, 1050.0, 840.0, 180),
    2: (3, 930.0, 745.0, 220),
    3: (2, 820.0, 655.0, 260),
    4: (1, 720.0, 575.0, 300),
}
BURST_GAP_MS = 300
CHIME_NOTES_HZ = (659.25, 523.25)  # E5 then C5: the familiar "ding-dong"
PAGING_NOTES_HZ = (523.25, 659.25, 783.99)  # C5 E5 G5, rising


def _to_segment(samples: list[float]) -> AudioSegment:
    pcm = array("h", (max(-32767, min(32767, int(s))) for s in samples))
    return AudioSegment(data=pcm.tobytes(), sample_width=2, frame_rate=SAMPLE_RATE, channels=1)


def _bell(freq: float, duration_ms: int, decay_s: float) -> list[float]:
    """A struck-bell note: a few inharmonic-free partials under an exponential decay."""
    n = SAMPLE_RATE * duration_ms // 1000
    attack = int(0.005 * SAMPLE_RATE)  # 5 ms: long enough to avoid a click
    release = int(0.03 * SAMPLE_RATE)  # the tail of the decay is faded to true zero
    out = []
    w = 2 * math.pi * freq / SAMPLE_RATE
    for i in range(n):
        env = math.exp(-i / (decay_s * SAMPLE_RATE))
        if i < attack:
            env *= i / attack
        if i > n - 1 - release:
            env *= (n - 1 - i) / release
        partials = math.sin(w * i) + 0.35 * math.sin(2 * w * i) + 0.12 * math.sin(3 * w * i)
        out.append(_PEAK * env * partials / 1.47)
    return out


def _mix_at(base: list[float], part: list[float], offset: int) -> None:
    if len(base) < offset + len(part):
        base.extend([0.0] * (offset + len(part) - len(base)))
    for i, s in enumerate(part):
        base[offset + i] += s


def _alert_tone(freq: float, duration_ms: int) -> list[float]:
    """A bright, square-like tone (first odd harmonics) that carries over distance."""
    n = SAMPLE_RATE * duration_ms // 1000
    ramp = int(0.004 * SAMPLE_RATE)
    w = 2 * math.pi * freq / SAMPLE_RATE
    out = []
    for i in range(n):
        env = min(1.0, i / ramp, (n - 1 - i) / ramp) if ramp else 1.0
        s = math.sin(w * i) + math.sin(3 * w * i) / 3 + math.sin(5 * w * i) / 5
        out.append(_PEAK * env * s / 1.2)
    return out


@lru_cache(maxsize=1)
def chime() -> AudioSegment:
    """Gentle two-note bell for notices and routine programmes."""
    samples: list[float] = []
    step = SAMPLE_RATE * 450 // 1000
    for k, freq in enumerate(CHIME_NOTES_HZ):
        _mix_at(samples, _bell(freq, 1200, 0.35), k * step)
    return _to_segment(samples)


@lru_cache(maxsize=1)
def paging_call() -> AudioSegment:
    """Rising three-note call before live paging."""
    samples: list[float] = []
    step = SAMPLE_RATE * 220 // 1000
    for k, freq in enumerate(PAGING_NOTES_HZ):
        _mix_at(samples, _bell(freq, 700, 0.18), k * step)
    return _to_segment(samples)


@lru_cache(maxsize=4)
def emergency_alert(level: int) -> AudioSegment:
    """Hi-lo alert whose burst count and pitch identify the emergency level (1..4)."""
    if level not in EMERGENCY_PATTERNS:
        raise ValueError(f"level: must be 1..4, not {level!r}")
    bursts, high, low, half = EMERGENCY_PATTERNS[level]
    burst = Burst(high_hz=high, low_hz=low, cycles=2, half_cycle_ms=half)
    gap = [0.0] * (SAMPLE_RATE * BURST_GAP_MS // 1000)
    samples: list[float] = []
    for b in range(bursts):
        if b:
            samples.extend(gap)
        for _ in range(burst.cycles):
            samples.extend(_alert_tone(burst.high_hz, burst.half_cycle_ms))
            samples.extend(_alert_tone(burst.low_hz, burst.half_cycle_ms))
    return _to_segment(samples)


def attention_signal(priority: str, level: int | None) -> AudioSegment:
    """The signal that precedes an announcement of this priority (and level)."""
    if priority == "emergency":
        if level is None:
            raise ValueError("level: an emergency needs a level")
        return emergency_alert(level)
    if priority == "paging":
        return paging_call()
    return chime()
