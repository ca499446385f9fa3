"""Attention signals: each kind and each emergency level must sound different."""

from __future__ import annotations

import itertools

import pytest
from pydub.silence import detect_nonsilent

from controller.speech import tones


def bursts(level: int) -> int:
    alert = tones.emergency_alert(level)
    return len(detect_nonsilent(alert, min_silence_len=200, silence_thresh=-50))


@pytest.mark.parametrize(("level", "expected"), [(1, 4), (2, 3), (3, 2), (4, 1)])
def test_level_is_audible_in_the_number_of_bursts(level: int, expected: int) -> None:
    assert bursts(level) == expected


def test_every_level_sounds_different() -> None:
    alerts = {level: tones.emergency_alert(level) for level in (1, 2, 3, 4)}
    for a, b in itertools.combinations(alerts, 2):
        assert alerts[a].raw_data != alerts[b].raw_data
    # Higher urgency, higher pitch: the pattern table says so and the sound follows it.
    highs = [tones.EMERGENCY_PATTERNS[level][1] for level in (1, 2, 3, 4)]
    assert highs == sorted(highs, reverse=True)


def test_kinds_differ_and_notices_get_the_chime() -> None:
    chime = tones.attention_signal("notice", None)
    assert tones.attention_signal("routine", None).raw_data == chime.raw_data
    paging = tones.attention_signal("paging", None)
    emergency = tones.attention_signal("emergency", 4)
    assert len({chime.raw_data, paging.raw_data, emergency.raw_data}) == 3


@pytest.mark.parametrize(
    "signal",
    [tones.chime(), tones.paging_call(), *(tones.emergency_alert(n) for n in (1, 2, 3, 4))],
)
def test_signals_are_clean(signal) -> None:  # type: ignore[no-untyped-def]
    assert signal.frame_rate == tones.SAMPLE_RATE
    assert signal.channels == 1
    assert 300 < len(signal) < 6000
    assert signal.max_dBFS < -0.5  # no clipping
    # Starts and ends at zero, so there is no click at either edge.
    samples = signal.get_array_of_samples()
    assert abs(samples[0]) < 100
    assert abs(samples[-1]) < 100


def test_emergency_needs_a_valid_level() -> None:
    with pytest.raises(ValueError, match="level"):
        tones.attention_signal("emergency", None)
    with pytest.raises(ValueError, match="level"):
        tones.emergency_alert(5)
