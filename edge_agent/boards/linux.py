"""The `linux` board: edge_agent.hardware on a small Linux board.

Audio goes out through ALSA: the announcement is decoded once (ffmpeg) to the PCM
format the device file names, and streamed into `aplay` on the configured PCM device
at the pace of real time, so cancelling a play stops the sound within one chunk and a
fault seen between chunks stops it too. Volume is the ALSA mixer's when a control is
named, else the samples are scaled. The amplifier relay and the status inputs are GPIO
lines (edge_agent/boards/gpio.py); sensors come from sysfs, ModemManager and chrony
(edge_agent/boards/readings.py). Whatever the board lacks is reported absent.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge_agent.boards.gpio import GpioInputLine, GpioOutput
from edge_agent.boards.readings import (
    ModemReading,
    Refreshed,
    read_chrony_offset,
    read_modem,
    read_power,
    read_temperature,
    run_tool,
    setup_modem_signal,
)
from edge_agent.boards.settings import GpioInput, LinuxBoard
from edge_agent.decode import decode_file
from edge_agent.hardware import HardwareFault, PlayOutcome, PreparedAudio

log = logging.getLogger(__name__)

CHUNK_MS = 20  # what is written to aplay at a time: the reaction time to a cancel or fault
# The device's buffer. aplay starts the sound once it is full (its default, 500 ms,
# would delay every start by that much); writing runs ahead of real time by a little
# more, so it fills at once and absorbs a loaded board's scheduling jitter.
BUFFER_MS = 200
LEAD_MS = 250
# Live audio (paging, calls) and the output monitor's clips: 16 kHz mono 16-bit.
LIVE_RATE = 16_000
MAX_CLIP_BYTES = 30 * LIVE_RATE * 2


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _input(chip: Path, wired: GpioInput | None) -> GpioInputLine | None:
    return None if wired is None else GpioInputLine(chip, wired.line, active_low=wired.active_low)


class LinuxAmplifier:
    """The class-D amplifier behind a relay on a GPIO line. Without a relay it is always
    powered (and warm); without a fault input it is always ok."""

    def __init__(
        self, relay: GpioOutput | None, fault: GpioInputLine | None, warmup_ms: int
    ) -> None:
        self.warmup_ms = warmup_ms if relay is not None else 0
        self._relay, self._fault = relay, fault
        self._warm = relay is None
        self._warming: asyncio.Future[None] | None = None

    @property
    def on(self) -> bool:
        return self._warm

    @property
    def ok(self) -> bool:
        return self._fault is None or not self._fault.active()

    async def power_on(self) -> None:
        if not self.ok:
            raise HardwareFault("amplifier reports a fault")
        if self._warm or self._relay is None:
            return
        if self._warming is None:
            self._relay.set(True)
            self._warming = asyncio.get_running_loop().create_task(self._warm_up())
        # Shielded: one caller giving up does not stop the others' warm-up.
        await asyncio.shield(self._warming)

    async def _warm_up(self) -> None:
        try:
            await asyncio.sleep(self.warmup_ms / 1000)
            if not self.ok:
                raise HardwareFault("amplifier failed while warming up")
            self._warm = True
        finally:
            self._warming = None

    async def power_off(self) -> None:
        if self._relay is None:
            return
        if self._warming is not None:
            self._warming.cancel()
        self._warm = False
        self._relay.set(False)


class AlsaSpeaker:
    def __init__(
        self, board: LinuxBoard, amplifier: LinuxAmplifier, line_sense: GpioInputLine | None
    ) -> None:
        self.board = board
        self.amplifier = amplifier
        self._line_sense = line_sense
        self._volume = 70
        self._mixer_lock = asyncio.Lock()
        self._mixer_task: asyncio.Task[None] | None = None
        self._frame_bytes = 2 * board.channels
        self._chunk_bytes = board.sample_rate * CHUNK_MS // 1000 * self._frame_bytes
        self.monitor = LineMonitor(self)

    @property
    def line_ok(self) -> bool:
        # Without a sense input the line cannot be checked: believed whole.
        return self._line_sense is None or self._line_sense.active()

    @property
    def volume(self) -> int:
        return self._volume

    def set_volume(self, volume: int) -> None:
        self._volume = max(0, min(100, volume))
        if self.board.mixer_control is not None:
            with contextlib.suppress(RuntimeError):  # no loop yet: applied at the next play
                self._mixer_task = asyncio.get_running_loop().create_task(self._apply_mixer())

    async def _apply_mixer(self) -> None:
        async with self._mixer_lock:  # in order, the last value wins
            control = self.board.mixer_control
            assert control is not None
            out = await run_tool(
                "amixer", "-q", "-c", self.board.mixer_card, "sset", control, f"{self._volume}%"
            )
            if out is None:
                log.warning("amixer could not set %s to %d%%", control, self._volume)

    def _gain(self) -> float:
        # The mixer does the volume when there is one; else the samples are scaled.
        return 1.0 if self.board.mixer_control is not None else self._volume / 100

    async def prepare(self, media_path: Path, sha256: str) -> PreparedAudio:
        pcm = await decode_file(
            media_path, sample_rate=self.board.sample_rate, channels=self.board.channels
        )
        duration_ms = len(pcm) * 1000 // (self._frame_bytes * self.board.sample_rate)
        return PreparedAudio(sha256=sha256, duration_ms=duration_ms, handle=pcm)

    def _check_ready(self) -> None:
        if not self.line_ok:
            raise HardwareFault("speaker line cut (no load on the amplifier output)")
        if not self.amplifier.ok:
            raise HardwareFault("amplifier reports a fault")
        if not self.amplifier.on:
            raise HardwareFault("amplifier not warm at the first sample")

    async def _open(self) -> asyncio.subprocess.Process:
        if shutil.which("aplay") is None:
            raise HardwareFault("aplay not found (install alsa-utils)")
        b = self.board
        return await asyncio.create_subprocess_exec(
            *("aplay", "-q", "-D", b.pcm, "-t", "raw", "-f", "S16_LE"),
            *("-r", str(b.sample_rate), "-c", str(b.channels)),
            *(f"--buffer-time={BUFFER_MS * 1000}", f"--period-time={CHUNK_MS * 1000}", "-"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )

    async def play(
        self,
        audio: PreparedAudio,
        *,
        start_at_ms: int,
        broadcast_id: str,
        on_started: Callable[[], None],
        attempt: int = 0,
    ) -> PlayOutcome:
        pcm = audio.handle
        assert isinstance(pcm, bytes)
        self._check_ready()
        # aplay is started before the instant: it opens the device and waits on its
        # input, so the first sample goes out when written, not after a process start.
        proc = await self._open()
        started: float | None = None
        try:
            delay_ms = start_at_ms - _now_ms()
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000)
            self._check_ready()
            started = time.monotonic()
            self.monitor.begin()
            on_started()
            await self._stream(proc, pcm, started)
            assert proc.stdin is not None
            proc.stdin.close()
            await proc.wait()  # aplay drains what the device still holds
            if proc.returncode != 0:
                raise HardwareFault(f"aplay on {self.board.pcm}: {await _stderr(proc)}")
            return PlayOutcome(played_ms=audio.duration_ms, completed=True)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise HardwareFault(f"aplay on {self.board.pcm}: {await _stderr(proc)}") from exc
        finally:
            if proc.returncode is None:  # cancelled or faulted: the sound stops now
                proc.kill()
                await proc.wait()

    async def _stream(self, proc: asyncio.subprocess.Process, pcm: bytes, started: float) -> None:
        assert proc.stdin is not None
        gain = self._gain()
        bytes_per_ms = self.board.sample_rate * self._frame_bytes / 1000
        for offset in range(0, len(pcm), self._chunk_bytes):
            # Paced: never more than LEAD_MS ahead of real time (a `null` or `file`
            # PCM would take it all at once; a real one blocks in aplay).
            ahead_ms = offset / bytes_per_ms - (time.monotonic() - started) * 1000
            if ahead_ms > LEAD_MS:
                await asyncio.sleep((ahead_ms - LEAD_MS) / 1000)
            self._check_ready()  # a fault between chunks stops the sound
            chunk = pcm[offset : offset + self._chunk_bytes]
            proc.stdin.write(_scaled(chunk, gain))
            self.monitor.note_written(self._to_live(chunk))
            await proc.stdin.drain()


    async def play_stream(
        self, chunks: AsyncIterable[tuple[int, bytes]], *, broadcast_id: str
    ) -> PlayOutcome:
        """Live audio (16 kHz mono chunks, each at its instant on the board clock) through
        one aplay: a chunk that comes late is written at once, a gap is written as
        silence so the device never underruns into noise."""
        self._check_ready()
        proc = await self._open()
        assert proc.stdin is not None
        gain = self._gain()
        written_until: int | None = None  # board-clock instant the device is fed up to
        played = 0
        self.monitor.begin()
        try:
            async for play_at, pcm in chunks:
                delay_ms = play_at - _now_ms() - LEAD_MS
                if delay_ms > 0:
                    await asyncio.sleep(delay_ms / 1000)
                self._check_ready()
                out = self._from_live(pcm)
                if written_until is not None and play_at > written_until:
                    gap = (play_at - written_until) * self.board.sample_rate // 1000
                    proc.stdin.write(bytes(gap * self._frame_bytes))
                proc.stdin.write(_scaled(out, gain))
                await proc.stdin.drain()
                chunk_ms = len(pcm) * 1000 // (2 * LIVE_RATE)
                written_until = max(written_until or play_at, play_at) + chunk_ms
                played += chunk_ms
                self.monitor.note_written(pcm)
            proc.stdin.close()
            await proc.wait()
            return PlayOutcome(played_ms=played, completed=True)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise HardwareFault(f"aplay on {self.board.pcm}: {await _stderr(proc)}") from exc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    def _to_live(self, chunk: bytes) -> bytes:
        """The board's samples → 16 kHz mono (first channel, nearest sample) for clips."""
        src = array.array("h")
        src.frombytes(chunk[: len(chunk) // 2 * 2])
        step = self.board.channels
        frames = len(src) // step
        n_out = frames * LIVE_RATE // self.board.sample_rate
        return array.array(
            "h", (src[(i * self.board.sample_rate // LIVE_RATE) * step] for i in range(n_out))
        ).tobytes()

    def _from_live(self, pcm: bytes) -> bytes:
        """16 kHz mono 16-bit → the board's rate and channels (nearest sample: live
        speech through a loudspeaker horn needs nothing finer)."""
        src = array.array("h")
        src.frombytes(pcm[: len(pcm) // 2 * 2])
        n_out = len(src) * self.board.sample_rate // LIVE_RATE
        out = array.array("h", bytes(2 * n_out * self.board.channels))
        for i in range(n_out):
            sample = src[i * LIVE_RATE // self.board.sample_rate]
            for c in range(self.board.channels):
                out[i * self.board.channels + c] = sample
        return out.tobytes()


class LineMonitor:
    """The output monitor a board without a loopback capture can have: the speaker-line
    sense input (when wired) and the amplifier's fault input say whether the line
    carries sound; the clip is what was written to the DAC while they said so (silence
    where they did not). Not a loopback: a DAC that writes but does not sound is only
    caught by the line sense."""

    def __init__(self, speaker: AlsaSpeaker) -> None:
        self._speaker = speaker
        self._clip = bytearray()
        self._max = MAX_CLIP_BYTES

    def carrying(self) -> bool:
        s = self._speaker
        return s.line_ok and s.amplifier.ok and s.amplifier.on

    def begin(self) -> None:
        self._clip = bytearray()

    def note_written(self, pcm16k: bytes) -> None:
        if len(self._clip) >= self._max:
            return
        piece = pcm16k if self.carrying() else bytes(len(pcm16k))
        self._clip.extend(piece[: self._max - len(self._clip)])

    def last_clip(self, max_ms: int) -> bytes | None:
        if not self._clip:
            return None
        return bytes(self._clip[: max_ms * LIVE_RATE * 2 // 1000])


def _scaled(chunk: bytes, gain: float) -> bytes:
    if gain >= 1.0:
        return chunk
    samples = array.array("h")
    samples.frombytes(chunk)
    if sys.byteorder != "little":
        samples.byteswap()
    scaled = array.array("h", [int(s * gain) for s in samples])
    if sys.byteorder != "little":
        scaled.byteswap()
    return scaled.tobytes()


async def _stderr(proc: asyncio.subprocess.Process) -> str:
    if proc.stderr is None:
        return f"exit {proc.returncode}"
    with contextlib.suppress(Exception):
        text = (await asyncio.wait_for(proc.stderr.read(400), 1.0)).decode(errors="replace")
        if text.strip():
            return text.strip().splitlines()[0]
    return f"exit {proc.returncode}"


class SysfsPower:
    def __init__(self, sysfs_root: Path) -> None:
        self._root = sysfs_root

    @property
    def source(self) -> Literal["mains", "battery"] | None:
        return read_power(self._root).source

    @property
    def battery_pct(self) -> int | None:
        return read_power(self._root).battery_pct


class LinuxSensors:
    def __init__(self, board: LinuxBoard) -> None:
        self.board = board
        self._modem = Refreshed(read_modem, ModemReading(), board.slow_sensor_interval_s)

    @property
    def temperature_c(self) -> float | None:
        b = self.board
        return read_temperature(b.sysfs_root, hwmon=b.hwmon_sensor, zone=b.thermal_zone)

    @property
    def signal_dbm(self) -> int | None:
        return self._modem.get().signal_dbm

    @property
    def operator(self) -> str | None:
        return self._modem.get().operator

    async def refresh(self) -> None:
        await setup_modem_signal(int(self.board.slow_sensor_interval_s))
        await self._modem.refresh()

    def close(self) -> None:
        self._modem.cancel()


class SystemClock:
    """The board's wall clock, kept by NTP. `ntp_offset_ms` is chrony's own estimate of
    how far it is off (None without chrony or while it is not synchronised)."""

    def __init__(self, interval_s: float) -> None:
        self._offset = Refreshed(read_chrony_offset, None, interval_s)

    def now_ms(self) -> int:
        return _now_ms()

    @property
    def ntp_offset_ms(self) -> int | None:
        return self._offset.get()

    async def refresh(self) -> None:
        await self._offset.refresh()

    def close(self) -> None:
        self._offset.cancel()


class LinuxNetwork:
    """The board's own network: the kernel routes, and the 4G link costs what it costs."""

    def __init__(self, sysfs_root: Path) -> None:
        self._root = sysfs_root

    @property
    def up(self) -> bool:
        # Down only when the kernel lists links and says every one but loopback is down:
        # a wrong "down" would keep the agent from even trying its broker. Some modems'
        # interfaces say "unknown" while they carry traffic.
        states = [
            _operstate(iface)
            for iface in (self._root / "sys/class/net").glob("*")
            if iface.name != "lo"
        ]
        return not states or any(state != "down" for state in states)

    @property
    def bind_address(self) -> str:
        return ""

    async def transfer_delay(self, nbytes: int) -> None:
        return None


def _operstate(iface: Path) -> str:
    try:
        return (iface / "operstate").read_text().strip()
    except OSError:
        return "down"


@dataclass
class LinuxHardware:
    """A Linux board's hardware; satisfies `edge_agent.hardware.Hardware`."""

    amplifier: LinuxAmplifier
    speaker: AlsaSpeaker
    power: SysfsPower
    sensors: LinuxSensors
    clock: SystemClock
    network: LinuxNetwork
    _lines: tuple[GpioOutput | GpioInputLine, ...] = ()
    # Phone-call broadcast needs voice calls through ModemManager: not driven yet on a
    # board (docs/terminal.md); the simulator's modem is the only one today.
    modem: None = None

    @property
    def output_monitor(self) -> LineMonitor:
        return self.speaker.monitor

    @classmethod
    def create(cls, board: LinuxBoard) -> LinuxHardware:
        """Claims the GPIO lines the device file names (HardwareFault if it cannot)."""
        chip = board.gpio_chip
        relay = None
        if board.amplifier_relay is not None:
            low = board.amplifier_relay_active_low
            relay = GpioOutput(chip, board.amplifier_relay, active_low=low)
        fault = _input(chip, board.amplifier_fault)
        sense = _input(chip, board.speaker_line_ok)
        amplifier = LinuxAmplifier(relay, fault, board.amplifier_warmup_ms)
        lines = tuple(x for x in (relay, fault, sense) if x is not None)
        return cls(
            amplifier=amplifier,
            speaker=AlsaSpeaker(board, amplifier, sense),
            power=SysfsPower(board.sysfs_root),
            sensors=LinuxSensors(board),
            clock=SystemClock(board.slow_sensor_interval_s),
            network=LinuxNetwork(board.sysfs_root),
            _lines=lines,
        )

    async def start(self) -> None:
        """First readings of the slow sensors, so the first report carries them; the
        board as found goes to the log (what a technician reads first)."""
        await asyncio.gather(self.sensors.refresh(), self.clock.refresh())
        log.info("board linux: %s", self.summary())

    def summary(self) -> str:
        b = self.speaker.board

        def shown(value: object, unit: str = "") -> str:
            return "absent" if value is None else f"{value}{unit}"

        relay = "none (always on)" if b.amplifier_relay is None else f"{b.amplifier_relay!r}"
        return (
            f"pcm {b.pcm} {b.sample_rate} Hz x{b.channels}, "
            f"volume by {'mixer ' + b.mixer_control if b.mixer_control else 'software'}; "
            f"relay {relay}, amplifier {'ok' if self.amplifier.ok else 'FAULT'}, "
            f"speaker line {'ok' if self.speaker.line_ok else 'CUT'}; "
            f"temperature {shown(self.sensors.temperature_c, ' C')}, "
            f"power {shown(self.power.source)}, battery {shown(self.power.battery_pct, '%')}, "
            f"signal {shown(self.sensors.signal_dbm, ' dBm')} ({shown(self.sensors.operator)}), "
            f"chrony offset {shown(self.clock.ntp_offset_ms, ' ms')}"
        )

    async def close(self) -> None:
        await self.amplifier.power_off()
        self.sensors.close()
        self.clock.close()
        for line in self._lines:
            line.close()


async def play_test_tone(hw: LinuxHardware, *, seconds: float, volume: int) -> str:
    """A 1 kHz tone through the relay, amplifier and speaker; one line saying how it
    went and what the board reads. Raises HardwareFault as a play would."""
    board = hw.speaker.board
    with tempfile.TemporaryDirectory(prefix="dalaba-tone-") as folder:
        path = Path(folder) / "tone.wav"
        proc = await asyncio.create_subprocess_exec(
            *("ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi"),
            *("-i", f"sine=frequency=1000:duration={seconds}"),
            *("-ar", str(board.sample_rate), "-ac", "1", str(path)),
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise HardwareFault(f"ffmpeg could not make the tone: {err.decode()[:200]}")
        audio = await hw.speaker.prepare(path, "test-tone")
    hw.speaker.set_volume(volume)
    await hw.amplifier.power_on()
    try:
        outcome = await hw.speaker.play(
            audio, start_at_ms=0, broadcast_id="test-tone", on_started=lambda: None
        )
    finally:
        await hw.amplifier.power_off()
    return f"played {outcome.played_ms} ms at volume {volume}; {hw.summary()}"
