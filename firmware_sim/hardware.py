"""A terminal's hardware in software: amplifier relay, speaker line, power, sensors,
clock and network, with faults that can be injected one terminal at a time.

The speaker records what was really played: a WAV file of the samples output and one
JSON line per play in `plays.jsonl`, with true wall-clock times, so tests and
benchmarks can check sync and content without trusting the agent's own reports.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from edge_agent.hardware import HardwareFault, PlayOutcome, PreparedAudio
from firmware_sim.audio import SAMPLE_RATE, decode_pcm


def _iso_ms(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")


def _true_now_ms() -> int:
    return time.time_ns() // 1_000_000


class SimClock:
    def __init__(self) -> None:
        self.offset_ms = 0  # fault: a terminal whose clock is off

    def now_ms(self) -> int:
        return _true_now_ms() + self.offset_ms


class SimAmplifier:
    def __init__(self, warmup_ms: int = 300) -> None:
        self.warmup_ms = warmup_ms
        self.failed = False  # fault: the amplifier does not come up
        self._on = False
        self.power_cycles = 0

    @property
    def on(self) -> bool:
        return self._on

    @property
    def ok(self) -> bool:
        return not self.failed

    async def power_on(self) -> None:
        if self.failed:
            raise HardwareFault("amplifier failed to power on")
        self._on = True
        self.power_cycles += 1
        await asyncio.sleep(self.warmup_ms / 1000)

    async def power_off(self) -> None:
        self._on = False


class SimSpeaker:
    def __init__(self, record_dir: Path, clock: SimClock, amplifier: SimAmplifier) -> None:
        self.record_dir = record_dir
        self.clock = clock
        self.amplifier = amplifier
        self.line_cut = False  # fault: the speaker line is cut
        self.record_wav = True
        self._volume = 70
        self.plays_log = record_dir / "plays.jsonl"
        self._play_count = 0

    @property
    def line_ok(self) -> bool:
        return not self.line_cut

    @property
    def volume(self) -> int:
        return self._volume

    def set_volume(self, volume: int) -> None:
        self._volume = max(0, min(100, volume))

    async def prepare(self, media_path: Path, sha256: str) -> PreparedAudio:
        pcm = await decode_pcm(media_path, sha256)
        duration_ms = len(pcm) * 1000 // (2 * SAMPLE_RATE)
        return PreparedAudio(sha256=sha256, duration_ms=duration_ms, handle=pcm)

    async def play(
        self,
        audio: PreparedAudio,
        *,
        start_at_ms: int,
        broadcast_id: str,
        on_started: Callable[[], None],
    ) -> PlayOutcome:
        if self.line_cut:
            raise HardwareFault("speaker line cut (no load on the amplifier output)")
        if not self.amplifier.on:
            raise HardwareFault("amplifier is off")
        delay_ms = start_at_ms - self.clock.now_ms()
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        started = _true_now_ms()
        on_started()
        completed = False
        try:
            await asyncio.sleep(audio.duration_ms / 1000)
            completed = True
        finally:
            # Runs on cancellation too: a cut-off play records exactly what went out.
            ended = _true_now_ms()
            played_ms = audio.duration_ms if completed else min(ended - started, audio.duration_ms)
            self._record(audio, broadcast_id, started, ended, played_ms, completed)
        return PlayOutcome(played_ms=played_ms, completed=completed)

    def _record(
        self,
        audio: PreparedAudio,
        broadcast_id: str,
        started: int,
        ended: int,
        played_ms: int,
        completed: bool,
    ) -> None:
        self.record_dir.mkdir(parents=True, exist_ok=True)
        self._play_count += 1
        entry: dict[str, object] = {
            "broadcast_id": broadcast_id,
            "media_sha256": audio.sha256,
            "start": _iso_ms(started),
            "end": _iso_ms(ended),
            "start_ms": started,
            "end_ms": ended,
            "duration_ms": played_ms,
            "completed": completed,
            "volume": self._volume,
        }
        if self.record_wav:
            pcm = audio.handle
            assert isinstance(pcm, bytes)
            samples = len(pcm) // 2 if completed else played_ms * SAMPLE_RATE // 1000
            wav_path = self.record_dir / "plays" / f"{self._play_count:04d}-{broadcast_id}.wav"
            wav_path.parent.mkdir(exist_ok=True)
            with wave.open(str(wav_path), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(SAMPLE_RATE)
                w.writeframes(pcm[: samples * 2])
            entry["wav"] = str(wav_path.relative_to(self.record_dir))
        with self.plays_log.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def plays(self) -> list[dict[str, object]]:
        if not self.plays_log.exists():
            return []
        return [json.loads(line) for line in self.plays_log.read_text().splitlines()]


class SimPower:
    def __init__(self) -> None:
        self.on_battery = False
        self.battery_pct_value = 100

    @property
    def source(self) -> Literal["mains", "battery"]:
        return "battery" if self.on_battery else "mains"

    @property
    def battery_pct(self) -> int | None:
        return self.battery_pct_value


class SimSensors:
    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self._base_temp = 18 + rng.random() * 12
        self._signal = -60 - rng.randint(0, 40)

    @property
    def temperature_c(self) -> float:
        return round(self._base_temp + random.random(), 1)

    @property
    def signal_dbm(self) -> int:
        return self._signal


class SimNetwork:
    def __init__(self, bind_address: str = "") -> None:
        self._bind_address = bind_address
        self.down = False  # fault: the link is lost
        self.bytes_per_s: float | None = None  # fault: a slow link (None = unthrottled)
        self.latency_s = 0.0

    @property
    def up(self) -> bool:
        return not self.down

    @property
    def bind_address(self) -> str:
        return self._bind_address

    async def transfer_delay(self, nbytes: int) -> None:
        delay = self.latency_s + (nbytes / self.bytes_per_s if self.bytes_per_s else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass
class SimHardware:
    """One simulated terminal's hardware; satisfies `edge_agent.hardware.Hardware`."""

    amplifier: SimAmplifier
    speaker: SimSpeaker
    power: SimPower
    sensors: SimSensors
    clock: SimClock
    network: SimNetwork

    @classmethod
    def create(cls, record_dir: Path, *, seed: int = 0, bind_address: str = "") -> SimHardware:
        clock = SimClock()
        amplifier = SimAmplifier()
        return cls(
            amplifier=amplifier,
            speaker=SimSpeaker(record_dir, clock, amplifier),
            power=SimPower(),
            sensors=SimSensors(seed),
            clock=clock,
            network=SimNetwork(bind_address),
        )
