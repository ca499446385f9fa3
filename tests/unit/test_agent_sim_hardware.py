"""The simulated terminal hardware the agent plays through: the amplifier's warm-up, the
speaker's records (at the first sample and at the end) and faults during a play."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edge_agent.hardware import HardwareFault, PreparedAudio
from firmware_sim.audio import SAMPLE_RATE
from firmware_sim.hardware import SimAmplifier, SimHardware

pytestmark = pytest.mark.asyncio


def audio(duration_ms: int) -> PreparedAudio:
    pcm = b"\x01\x00" * (SAMPLE_RATE * duration_ms // 1000)
    return PreparedAudio(sha256="c" * 64, duration_ms=duration_ms, handle=pcm)


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def test_the_amplifier_is_not_on_until_its_warm_up_is_over() -> None:
    amp = SimAmplifier(warmup_ms=200)
    warming = asyncio.create_task(amp.power_on())
    await asyncio.sleep(0)  # the warm-up has begun
    assert amp.warming and not amp.on
    await warming
    assert amp.on and not amp.warming
    assert amp.power_cycles == 1
    await amp.power_on()  # already warm: at once, no second cycle
    assert amp.power_cycles == 1


async def test_calls_during_a_warm_up_share_it() -> None:
    amp = SimAmplifier(warmup_ms=200)
    prewarm = asyncio.create_task(amp.power_on())
    await asyncio.sleep(0)
    play = asyncio.create_task(amp.power_on())
    await asyncio.gather(prewarm, play)
    assert amp.on
    assert amp.power_cycles == 1


async def test_one_caller_giving_up_does_not_stop_the_warm_up_for_the_others() -> None:
    amp = SimAmplifier(warmup_ms=200)
    quitter = asyncio.create_task(amp.power_on())
    stayer = asyncio.create_task(amp.power_on())
    await asyncio.sleep(0)
    quitter.cancel()
    await stayer
    assert amp.on


async def test_switching_off_or_failing_during_the_warm_up_fails_the_waiters() -> None:
    amp = SimAmplifier(warmup_ms=10_000)
    waiter = asyncio.create_task(amp.power_on())
    await asyncio.sleep(0)
    await amp.power_off()
    with pytest.raises(HardwareFault, match="switched off while warming up"):
        await waiter
    assert not amp.on and not amp.warming

    waiter = asyncio.create_task(amp.power_on())
    await asyncio.sleep(0)
    amp.failed = True
    with pytest.raises(HardwareFault, match="failed while warming up"):
        await waiter
    with pytest.raises(HardwareFault, match="failed to power on"):
        await amp.power_on()
    amp.failed = False
    amp.warmup_ms = 1
    await amp.power_on()
    assert amp.on


async def test_no_first_sample_through_a_cold_amplifier(tmp_path: Path) -> None:
    hw = SimHardware.create(tmp_path)
    started: list[int] = []
    with pytest.raises(HardwareFault, match="not warm"):
        await hw.speaker.play(
            audio(500),
            start_at_ms=hw.clock.now_ms(),
            broadcast_id="b-1",
            on_started=lambda: started.append(1),
        )
    assert started == []
    assert hw.speaker.plays_started() == [] and hw.speaker.plays() == []


async def test_a_play_is_recorded_at_its_first_sample_and_at_its_end(tmp_path: Path) -> None:
    hw = SimHardware.create(tmp_path)
    hw.speaker.record_wav = False
    await hw.amplifier.power_on()
    seen_at_start: list[list[dict[str, object]]] = []
    start_at = hw.clock.now_ms() + 50
    outcome = await hw.speaker.play(
        audio(300),
        start_at_ms=start_at,
        broadcast_id="b-1",
        attempt=2,
        # What a killed simulator would have left: the start line, no end line yet.
        on_started=lambda: seen_at_start.append(lines(tmp_path / "plays-started.jsonl")),
    )
    assert outcome.completed
    ((at_start,),) = seen_at_start
    assert at_start["broadcast_id"] == "b-1" and at_start["attempt"] == 2
    assert at_start["start_at_ms"] == start_at
    assert isinstance(at_start["amplifier_warm_ms"], int) and at_start["amplifier_warm_ms"] >= 0
    (end,) = hw.speaker.plays()
    assert end["completed"] is True and end["duration_ms"] == 300
    assert end["start_ms"] == at_start["start_ms"]
    assert end["amplifier_warm_ms"] == at_start["amplifier_warm_ms"]
    assert "fault" not in end


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("line", "speaker line cut during the play"), ("amplifier", "amplifier failed during")],
)
async def test_a_fault_during_a_play_silences_the_line_and_the_monitor_sees_it(
    tmp_path: Path, fault: str, reason: str
) -> None:
    # A real DAC does not know the line is cut: it plays on. The current sense (output
    # monitor) and the loopback capture are what show the silence.
    hw = SimHardware.create(tmp_path)
    await hw.amplifier.power_on()
    sounding = asyncio.Event()
    play = asyncio.create_task(
        hw.speaker.play(
            audio(1_500),
            start_at_ms=hw.clock.now_ms(),
            broadcast_id="b-1",
            on_started=sounding.set,
        )
    )
    await sounding.wait()
    assert hw.output_monitor.carrying()
    await asyncio.sleep(0.3)
    if fault == "line":
        hw.speaker.line_cut = True
    else:
        hw.amplifier.failed = True
    assert not hw.output_monitor.carrying()
    outcome = await play
    assert outcome.completed and outcome.played_ms == 1_500
    (end,) = hw.speaker.plays()
    assert reason in str(end["fault"])
    silent_ms = end["silent_ms"]
    assert isinstance(silent_ms, int) and 0 < silent_ms < 1_500, silent_ms
    # What the loopback captured: sound before the fault, silence after it.
    clip = hw.output_monitor.last_clip(10_000)
    assert clip is not None and len(clip) == 1_500 * SAMPLE_RATE // 1000 * 2
    assert clip[:2] == b"\x01\x00" and clip[-2:] == b"\x00\x00"
    assert hw.output_monitor.last_clip(100) == clip[: 100 * SAMPLE_RATE // 1000 * 2]


async def test_a_line_mended_mid_play_carries_sound_again(tmp_path: Path) -> None:
    hw = SimHardware.create(tmp_path)
    hw.speaker.record_wav = False
    await hw.amplifier.power_on()
    sounding = asyncio.Event()
    play = asyncio.create_task(
        hw.speaker.play(
            audio(1_500), start_at_ms=hw.clock.now_ms(), broadcast_id="b-1", on_started=sounding.set
        )
    )
    await sounding.wait()
    hw.speaker.line_cut = True
    await asyncio.sleep(0.2)
    hw.speaker.line_cut = False
    assert hw.output_monitor.carrying()
    await play
    (end,) = hw.speaker.plays()
    silent_ms = end["silent_ms"]
    assert isinstance(silent_ms, int) and 150 <= silent_ms < 1_500, silent_ms


async def test_a_fault_before_the_play_refuses_it(tmp_path: Path) -> None:
    hw = SimHardware.create(tmp_path)
    await hw.amplifier.power_on()
    hw.speaker.line_cut = True  # no play sounding: nothing to stop, nothing recorded
    with pytest.raises(HardwareFault, match="speaker line cut"):
        await hw.speaker.play(
            audio(100), start_at_ms=0, broadcast_id="b-1", on_started=lambda: None
        )
    hw.speaker.line_cut = False
    hw.amplifier.failed = True
    with pytest.raises(HardwareFault, match="amplifier failed"):
        await hw.speaker.play(
            audio(100), start_at_ms=0, broadcast_id="b-1", on_started=lambda: None
        )
    assert hw.speaker.plays_started() == []


async def test_a_restarted_simulator_does_not_overwrite_earlier_recordings(
    tmp_path: Path,
) -> None:
    for _ in range(2):  # the same terminal's hardware, created again after a restart
        hw = SimHardware.create(tmp_path)
        await hw.amplifier.power_on()
        await hw.speaker.play(audio(20), start_at_ms=0, broadcast_id="b-1", on_started=lambda: None)
    wavs = [e["wav"] for e in hw.speaker.plays()]
    assert len(set(wavs)) == 2
    assert all((tmp_path / str(w)).exists() for w in wavs)
