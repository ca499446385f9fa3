"""A terminal's hardware in software: amplifier relay, speaker line, power, sensors,
clock and network, with faults that can be injected one terminal at a time.

A fault that strikes mid-play does not stop the DAC (a real one does not know): the
line goes quiet, the output monitor (a current sense) sees it, the WAV holds silence for
those seconds and the play's record says how many (`silent_ms`).

The speaker records what was really played: one JSON line per play in
`plays-started.jsonl` at its first sample, one in `plays.jsonl` when it ends, and a WAV
file of the samples output, with true wall-clock times, so tests and benchmarks can check
sync and content without trusting the agent's own reports. The amplifier models its
warm-up, and the speaker refuses to output a first sample through a cold amplifier.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import wave
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from edge_agent.hardware import HardwareFault, PlayOutcome, PreparedAudio
from firmware_sim.audio import SAMPLE_RATE, decode_pcm
from firmware_sim.modem import SimModem


def _iso_ms(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")


def _true_now_ms() -> int:
    return time.time_ns() // 1_000_000


class SimClock:
    """The board's wall clock: off by `offset_ms` (fault: broken NTP) and running fast or
    slow by `drift_ppm` (a cheap crystal is tens of ppm off), from when drift was set."""

    def __init__(self) -> None:
        self.offset_ms = 0
        self._drift_ppm = 0.0
        self._drift_since_ms = _true_now_ms()

    @property
    def drift_ppm(self) -> float:
        return self._drift_ppm

    @drift_ppm.setter
    def drift_ppm(self, ppm: float) -> None:
        # The error drifted so far is kept in the offset, so the clock does not jump.
        now = _true_now_ms()
        self.offset_ms += self._drifted_ms(now)
        self._drift_ppm, self._drift_since_ms = ppm, now

    def _drifted_ms(self, true_ms: int) -> int:
        return round((true_ms - self._drift_since_ms) * self._drift_ppm / 1e6)

    def now_ms(self) -> int:
        now = _true_now_ms()
        return now + self.offset_ms + self._drifted_ms(now)


class SimAmplifier:
    """The amplifier relay and its warm-up: powered on, it passes sound only after
    `warmup_ms`. Calls to `power_on` made while it warms up share that one warm-up."""

    def __init__(self, warmup_ms: int = 300) -> None:
        self.warmup_ms = warmup_ms
        self._failed = False
        self._warm_since_ms: int | None = None  # true wall clock when it became warm
        self._warming: asyncio.Future[None] | None = None
        self._warm_timer: asyncio.TimerHandle | None = None
        self.power_cycles = 0
        self._fault_listeners: list[Callable[[str], None]] = []

    @property
    def failed(self) -> bool:
        return self._failed

    @failed.setter
    def failed(self, failed: bool) -> None:
        """Fault switch: the amplifier fails (or is repaired). Failing takes effect at
        once: a warm-up in progress fails and a play that is sounding stops."""
        self._failed = failed
        if not failed:
            return
        self._stop_warming(HardwareFault("amplifier failed while warming up"))
        was_on = self._warm_since_ms is not None
        self._warm_since_ms = None
        if was_on:
            for listener in list(self._fault_listeners):
                listener("amplifier failed during the play")

    @property
    def on(self) -> bool:
        return self._warm_since_ms is not None

    @property
    def ok(self) -> bool:
        return not self._failed

    @property
    def warming(self) -> bool:
        return self._warming is not None

    def warm_for_ms(self, at_ms: int) -> int | None:
        """How long it had been warm at `at_ms` (true wall clock); None if not warm."""
        return None if self._warm_since_ms is None else at_ms - self._warm_since_ms

    def add_fault_listener(self, listener: Callable[[str], None]) -> None:
        self._fault_listeners.append(listener)

    async def power_on(self) -> None:
        if self._failed:
            raise HardwareFault("amplifier failed to power on")
        if self._warm_since_ms is not None:
            return
        if self._warming is None:
            loop = asyncio.get_running_loop()
            self.power_cycles += 1
            self._warming = loop.create_future()
            self._warm_timer = loop.call_later(self.warmup_ms / 1000, self._warmed)
        # Shielded: one caller giving up (cancelled) does not stop the others' warm-up.
        await asyncio.shield(self._warming)

    def _warmed(self) -> None:
        warming, self._warming, self._warm_timer = self._warming, None, None
        self._warm_since_ms = _true_now_ms()
        if warming is not None and not warming.done():
            warming.set_result(None)

    async def power_off(self) -> None:
        self._stop_warming(HardwareFault("amplifier switched off while warming up"))
        self._warm_since_ms = None

    def _stop_warming(self, error: HardwareFault) -> None:
        if self._warm_timer is not None:
            self._warm_timer.cancel()
        warming, self._warming, self._warm_timer = self._warming, None, None
        if warming is not None and not warming.done():
            warming.set_exception(error)
            warming.exception()  # retrieved: no "never retrieved" noise if nobody waits


class SimSpeaker:
    """The speaker line and the DAC. Records what really went out: one line per play in
    `plays-started.jsonl` at its first sample (so a killed simulator still leaves
    evidence), one line per play in `plays.jsonl` when it ends, and the samples
    themselves as WAV files."""

    def __init__(self, record_dir: Path, clock: SimClock, amplifier: SimAmplifier) -> None:
        self.record_dir = record_dir
        self.clock = clock
        self.amplifier = amplifier
        self._line_cut = False
        self.record_wav = True
        # Set by a fleet with batched records (firmware_sim.records): lines go there
        # instead of to this terminal's own files.
        self.records: Callable[[str, dict[str, Any]], None] | None = None
        self._volume = 70
        self.plays_log = record_dir / "plays.jsonl"
        self.starts_log = record_dir / "plays-started.jsonl"
        self._play_count = 0
        self._sounding: asyncio.Future[None] | None = None
        # During a play: the true wall-clock spans the line was silent ([start, end or
        # None while still silent]) and the first fault's reason.
        self._silent_spans: list[list[int | None]] = []
        self._silence_reason: str | None = None
        self.last_output: bytes | None = None  # the loopback capture of the last play
        self._streaming = False  # a live stream (paging, a phone call) is sounding
        amplifier.add_fault_listener(self._fault)

    @property
    def line_cut(self) -> bool:
        return self._line_cut

    @line_cut.setter
    def line_cut(self, cut: bool) -> None:
        """Fault switch: the speaker line is cut (or mended). A play that is sounding
        stops at once."""
        self._line_cut = cut
        if cut:
            self._fault("speaker line cut during the play")
        elif self._silent_spans and self._silent_spans[-1][1] is None and self.amplifier.on:
            self._silent_spans[-1][1] = _true_now_ms()  # mended: sound again

    def _fault(self, reason: str) -> None:
        # Event-driven rather than polled: 10,000 simulated speakers cost nothing while
        # nothing fails. The DAC plays on; only what reaches the line goes quiet.
        if self._sounding is None or self._sounding.done():
            return
        self._silence_reason = self._silence_reason or reason
        if not self._silent_spans or self._silent_spans[-1][1] is not None:
            self._silent_spans.append([_true_now_ms(), None])

    def carrying(self) -> bool:
        """The current sense: a play is sounding through a warm amplifier and a whole line."""
        sounding = self._sounding is not None or self._streaming
        return sounding and not self._line_cut and self.amplifier.on

    @property
    def line_ok(self) -> bool:
        return not self._line_cut

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
        attempt: int = 0,
    ) -> PlayOutcome:
        self._check_ready()
        delay_ms = start_at_ms - self.clock.now_ms()
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        # The first sample: nothing goes out unless the line is whole and the
        # amplifier is warm (a cold amplifier cuts the first words).
        self._check_ready()
        started = _true_now_ms()
        warm_ms = self.amplifier.warm_for_ms(started)
        self._record_start(audio, broadcast_id, started, start_at_ms, attempt, warm_ms)
        loop = asyncio.get_running_loop()
        sounding = self._sounding = loop.create_future()
        self._silent_spans, self._silence_reason = [], None
        timer = loop.call_later(audio.duration_ms / 1000, _settle, sounding)
        # The agent's bookkeeping for the first sample runs after the other simulated
        # terminals whose first sample is due now have started theirs: on a board each
        # agent has its own CPU, and in one simulator process serial bookkeeping would
        # otherwise show up as start skew.
        noted = loop.call_soon(on_started)
        completed = False
        fault: str | None = None
        try:
            await sounding
            completed = True
        except HardwareFault as exc:
            fault = str(exc)
            raise
        finally:
            # Runs on cancellation too: a cut-off play records exactly what went out.
            noted.cancel()
            timer.cancel()
            self._sounding = None
            ended = _true_now_ms()
            played_ms = audio.duration_ms if completed else min(ended - started, audio.duration_ms)
            silent = self._silent_spans_ms(started, started + played_ms)
            self._record(
                audio, broadcast_id, started, ended, played_ms, completed, warm_ms,
                fault or self._silence_reason, silent,
            )  # fmt: skip
        return PlayOutcome(played_ms=played_ms, completed=completed)

    def _silent_spans_ms(self, started: int, ended: int) -> list[tuple[int, int]]:
        """The play's silent spans as offsets into it (ms), closed at the end of its audio."""
        spans = [
            (max(0, int(a) - started), max(0, (ended if b is None else int(b)) - started))
            for a, b in self._silent_spans
            if a is not None
        ]
        self._silent_spans = []
        return [(a, b) for a, b in spans if b > a]

    async def play_stream(
        self, chunks: AsyncIterable[tuple[int, bytes]], *, broadcast_id: str
    ) -> PlayOutcome:
        """Live audio, recorded like any play: the WAV holds exactly what went out, each
        chunk placed at the true instant it sounded (its playout instant, or later if it
        came late), with silence in the gaps."""
        timeline = bytearray()
        started: int | None = None
        fault: str | None = None
        completed = False
        audio = PreparedAudio(sha256="live", duration_ms=0, handle=b"")
        try:
            async for play_at, pcm in chunks:
                delay_ms = play_at - self.clock.now_ms()
                if delay_ms > 0:
                    await asyncio.sleep(delay_ms / 1000)
                self._check_ready()
                now = _true_now_ms()
                if started is None:
                    started = now
                    self._streaming = True
                    warm_ms = self.amplifier.warm_for_ms(now)
                    self._record_start(audio, broadcast_id, now, play_at, 0, warm_ms)
                at_sample = (now - started) * SAMPLE_RATE // 1000
                if at_sample * 2 > len(timeline):
                    timeline.extend(bytes(at_sample * 2 - len(timeline)))
                timeline.extend(pcm)
            completed = True
        except HardwareFault as exc:
            fault = str(exc)
            raise
        finally:
            self._streaming = False
            if started is not None:
                ended = _true_now_ms()
                played_ms = len(timeline) * 1000 // (2 * SAMPLE_RATE)
                audio = PreparedAudio(sha256="live", duration_ms=played_ms, handle=bytes(timeline))
                self._record(
                    audio,
                    broadcast_id,
                    started,
                    ended,
                    played_ms,
                    completed,
                    self.amplifier.warm_for_ms(started),
                    fault,
                )
        return PlayOutcome(played_ms=len(timeline) * 1000 // (2 * SAMPLE_RATE), completed=completed)

    def _check_ready(self) -> None:
        if self._line_cut:
            raise HardwareFault("speaker line cut (no load on the amplifier output)")
        if not self.amplifier.ok:
            raise HardwareFault("amplifier failed")
        if not self.amplifier.on:
            raise HardwareFault("amplifier not warm at the first sample")

    def _record_start(
        self,
        audio: PreparedAudio,
        broadcast_id: str,
        started: int,
        asked_ms: int,
        attempt: int,
        warm_ms: int | None,
    ) -> None:
        entry = {
            "broadcast_id": broadcast_id,
            "media_sha256": audio.sha256,
            "start": _iso_ms(started),
            "start_ms": started,
            # The instant the agent asked for, on the terminal's clock (the signed start,
            # or a step of the late grid).
            "start_at_ms": asked_ms,
            "attempt": attempt,
            "amplifier_warm_ms": warm_ms,
        }
        if self.records is not None:
            self.records("plays-started", entry)
            return
        self.record_dir.mkdir(parents=True, exist_ok=True)
        with self.starts_log.open("a") as f:  # closed at once: a SIGKILL cannot lose it
            f.write(json.dumps(entry) + "\n")

    def _record(
        self,
        audio: PreparedAudio,
        broadcast_id: str,
        started: int,
        ended: int,
        played_ms: int,
        completed: bool,
        warm_ms: int | None,
        fault: str | None,
        silent: list[tuple[int, int]] | None = None,
    ) -> None:
        self.record_dir.mkdir(parents=True, exist_ok=True)
        if self._play_count == 0 and self.plays_log.exists():
            # A restarted simulator numbers on after the plays it already recorded, so
            # no earlier WAV file is overwritten.
            self._play_count = len(self.plays_log.read_text().splitlines())
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
            "amplifier_warm_ms": warm_ms,
        }
        if fault is not None:
            entry["fault"] = fault
        pcm = audio.handle
        assert isinstance(pcm, bytes)
        samples = len(pcm) // 2 if completed else played_ms * SAMPLE_RATE // 1000
        if silent:
            # What really reached the line: silence where the amplifier or line failed.
            out = bytearray(pcm[: samples * 2])
            for a, b in silent:
                lo, hi = a * SAMPLE_RATE // 1000 * 2, b * SAMPLE_RATE // 1000 * 2
                out[lo:hi] = bytes(len(out[lo:hi]))
            pcm = bytes(out)
            entry["silent_ms"] = min(played_ms, sum(b - a for a, b in silent))
        self.last_output = pcm[: min(samples, CAPTURE_MAX_MS * SAMPLE_RATE // 1000) * 2]
        if self.record_wav:
            wav_path = self.record_dir / "plays" / f"{self._play_count:04d}-{broadcast_id}.wav"
            wav_path.parent.mkdir(exist_ok=True)
            with wave.open(str(wav_path), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(SAMPLE_RATE)
                w.writeframes(pcm[: samples * 2])
            entry["wav"] = str(wav_path.relative_to(self.record_dir))
        if self.records is not None:
            self.records("plays", entry)
            return
        with self.plays_log.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def plays(self) -> list[dict[str, object]]:
        return _read_json_lines(self.plays_log)

    def plays_started(self) -> list[dict[str, object]]:
        return _read_json_lines(self.starts_log)


# The loopback keeps this much of the last play (a real board's capture buffer).
CAPTURE_MAX_MS = 30_000


class SimOutputMonitor:
    """The speaker line's current sense and loopback capture, read from what the
    simulated speaker really put out; satisfies `edge_agent.hardware.OutputMonitor`."""

    def __init__(self, speaker: SimSpeaker) -> None:
        self._speaker = speaker

    def carrying(self) -> bool:
        return self._speaker.carrying()

    def last_clip(self, max_ms: int) -> bytes | None:
        pcm = self._speaker.last_output
        return None if pcm is None else pcm[: max(0, max_ms) * SAMPLE_RATE // 1000 * 2]


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _read_json_lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


class SimPower:
    def __init__(self) -> None:
        self.on_battery = False
        # None: a board without a battery (its charge is absent, not 0 %).
        self.battery_pct_value: int | None = 100

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
        # False: a board without that sensor, whose readings are reported absent.
        self.has_thermometer = True
        self.has_modem = True

    @property
    def temperature_c(self) -> float | None:
        if not self.has_thermometer:
            return None
        return round(self._base_temp + random.random(), 1)

    @property
    def signal_dbm(self) -> int | None:
        return self._signal if self.has_modem else None

    @property
    def operator(self) -> str | None:
        return "SIM-NET" if self.has_modem else None


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
    output_monitor: SimOutputMonitor
    modem: SimModem | None = None

    @classmethod
    def create(cls, record_dir: Path, *, seed: int = 0, bind_address: str = "") -> SimHardware:
        clock = SimClock()
        amplifier = SimAmplifier()
        speaker = SimSpeaker(record_dir, clock, amplifier)
        return cls(
            amplifier=amplifier,
            speaker=speaker,
            power=SimPower(),
            sensors=SimSensors(seed),
            clock=clock,
            network=SimNetwork(bind_address),
            output_monitor=SimOutputMonitor(speaker),
            modem=SimModem(),
        )
