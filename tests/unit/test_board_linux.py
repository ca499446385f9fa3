"""The `linux` board driver against the real things Linux lets a test have: ALSA (a
`file` PCM and a `null` PCM that an asoundrc written here defines, played by the real
aplay), sysfs-style trees built here, the kernel's gpio-sim where it is available, and
systemd's notify socket as a datagram socket this test opens. `mmcli` and `chronyc` are
stand-ins on PATH printing those tools' documented output (neither ModemManager nor
chrony runs here); nothing inside the driver is mocked."""

from __future__ import annotations

import array
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.retention import _Summary
from dalaba import protocol as p
from edge_agent import sdnotify
from edge_agent.agent import EdgeAgent
from edge_agent.boards import readings
from edge_agent.boards.linux import CHUNK_MS, LEAD_MS, LinuxHardware
from edge_agent.boards.settings import GpioInput, LinuxBoard
from edge_agent.config import DeviceConfig
from edge_agent.decode import decode_file
from edge_agent.hardware import HardwareFault
from firmware_sim.hardware import SimHardware

REPO = Path(__file__).resolve().parents[2]
needs_aplay = pytest.mark.skipif(shutil.which("aplay") is None, reason="aplay (alsa-utils) missing")


def write_asoundrc(home: Path, out: Path, *, append: bool = False) -> None:
    """`dalaba_file`: every sample played lands in `out` as raw S16_LE; `null` is
    ALSA's own. Read by alsa-lib from $HOME/.asoundrc."""
    home.mkdir(parents=True, exist_ok=True)
    (home / ".asoundrc").write_text(
        "pcm.dalaba_file {\n"
        "  type file\n"
        '  slave.pcm "null"\n'
        f'  file "{out}"\n'
        '  format "raw"\n'
        f"  truncate {'false' if append else 'true'}\n"
        "}\n"
    )


@pytest.fixture
def alsa_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "played.raw"
    write_asoundrc(tmp_path / "home", out)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return out


def tone(path: Path, seconds: float, rate: int = 16_000) -> Path:
    subprocess.run(
        [
            *("ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi"),
            *("-i", f"sine=frequency=440:duration={seconds}"),
            *("-ar", str(rate), "-ac", "1", str(path)),
        ],
        check=True,
    )
    return path


def board(**settings: object) -> LinuxBoard:
    return LinuxBoard.model_validate({"kind": "linux", "sample_rate": 16_000, **settings})


def contents(path: Path) -> bytes:
    return path.read_bytes()


def samples(data: bytes) -> array.array[int]:
    a = array.array("h")
    a.frombytes(data)
    if sys.byteorder != "little":
        a.byteswap()
    return a


async def play_through(hw: LinuxHardware, media: Path) -> tuple[bytes, float, list[float]]:
    audio = await hw.speaker.prepare(media, "x" * 64)
    await hw.amplifier.power_on()
    started: list[float] = []
    t0 = time.monotonic()
    outcome = await hw.speaker.play(
        audio, start_at_ms=0, broadcast_id="b-1", on_started=lambda: started.append(1.0)
    )
    assert outcome.completed and outcome.played_ms == audio.duration_ms
    pcm = audio.handle
    assert isinstance(pcm, bytes)
    return pcm, time.monotonic() - t0, started


# --------------------------------------------------------------------------- ALSA


@needs_aplay
async def test_a_play_writes_the_media_samples_into_an_alsa_file_pcm(
    tmp_path: Path, alsa_file: Path
) -> None:
    media = tone(tmp_path / "tone.wav", 1.0)
    hw = LinuxHardware.create(board(pcm="dalaba_file"))
    hw.speaker.set_volume(100)
    pcm, elapsed, started = await play_through(hw, media)
    written = contents(alsa_file)
    # What the media decodes to, sample for sample; ALSA pads the last period with
    # silence.
    assert pcm == await decode_file(media, sample_rate=16_000)
    assert len(pcm) == 32_000
    assert written[: len(pcm)] == pcm
    assert set(written[len(pcm) :]) <= {0}
    assert started == [1.0]
    # Streamed at the pace of real time (a null slave would take it all at once), less
    # the lead the writer keeps over it.
    assert elapsed >= 1.0 - (LEAD_MS + CHUNK_MS) / 1000


@needs_aplay
async def test_without_a_mixer_the_volume_scales_the_samples(
    tmp_path: Path, alsa_file: Path
) -> None:
    media = tone(tmp_path / "tone.wav", 0.3)
    hw = LinuxHardware.create(board(pcm="dalaba_file"))
    hw.speaker.set_volume(50)
    pcm, _, _ = await play_through(hw, media)
    played = samples(contents(alsa_file)[: len(pcm)])
    assert list(played) == [int(s * 0.5) for s in samples(pcm)]
    assert max(played) > 1000  # not silence


@needs_aplay
async def test_a_null_pcm_plays_and_a_missing_pcm_is_a_hardware_fault(
    tmp_path: Path, alsa_file: Path
) -> None:
    media = tone(tmp_path / "tone.wav", 0.2)
    await play_through(LinuxHardware.create(board(pcm="null")), media)
    hw = LinuxHardware.create(board(pcm="no_such_pcm"))
    audio = await hw.speaker.prepare(media, "x" * 64)
    with pytest.raises(HardwareFault, match="no_such_pcm"):
        await hw.speaker.play(audio, start_at_ms=0, broadcast_id="b", on_started=lambda: None)


@needs_aplay
async def test_cancelling_a_play_stops_the_sound_and_aplay(tmp_path: Path, alsa_file: Path) -> None:
    media = tone(tmp_path / "tone.wav", 6.0)
    hw = LinuxHardware.create(board(pcm="dalaba_file"))
    audio = await hw.speaker.prepare(media, "x" * 64)
    started = asyncio.Event()
    play = asyncio.create_task(
        hw.speaker.play(audio, start_at_ms=0, broadcast_id="b", on_started=started.set)
    )
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.sleep(0.5)
    play.cancel()
    with pytest.raises(asyncio.CancelledError):
        await play
    size = len(contents(alsa_file))
    await asyncio.sleep(0.3)
    assert len(contents(alsa_file)) == size  # nothing more comes out
    assert 0 < size < 6 * 32_000 // 2
    # No aplay of ours is left: the file is closed by every writer.
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _holds(int(pid), alsa_file)]


def _holds(pid: int, path: Path) -> bool:
    try:
        return any(
            os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd")
        )
    except OSError:
        return False


async def test_without_a_relay_the_amplifier_is_always_warm_and_ok() -> None:
    hw = LinuxHardware.create(board())
    assert hw.amplifier.on and hw.amplifier.ok and hw.speaker.line_ok
    await hw.amplifier.power_on()
    await hw.amplifier.power_off()
    assert hw.amplifier.on


def test_a_pcm_name_cannot_smuggle_an_option() -> None:
    with pytest.raises(ValueError, match="pcm"):
        board(pcm="--device=hw:0")


# --------------------------------------------------------------------------- sysfs


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_a_board_without_sensors_reports_them_absent(tmp_path: Path) -> None:
    hw = LinuxHardware.create(board(sysfs_root=tmp_path))
    assert hw.sensors.temperature_c is None
    assert hw.power.source is None and hw.power.battery_pct is None
    assert hw.sensors.signal_dbm is None and hw.sensors.operator is None
    assert hw.network.up  # no links listed: cannot tell, so the agent keeps trying


def test_temperature_from_a_named_hwmon_chip_or_a_thermal_zone(tmp_path: Path) -> None:
    write(tmp_path / "sys/class/thermal/thermal_zone0/temp", "47312")
    write(tmp_path / "sys/class/hwmon/hwmon0/name", "cpu_thermal")
    write(tmp_path / "sys/class/hwmon/hwmon1/name", "lm75")
    write(tmp_path / "sys/class/hwmon/hwmon1/temp1_input", "-4500")
    assert LinuxHardware.create(board(sysfs_root=tmp_path)).sensors.temperature_c == 47.3
    named = board(sysfs_root=tmp_path, hwmon_sensor="lm75")
    assert LinuxHardware.create(named).sensors.temperature_c == -4.5
    missing = board(sysfs_root=tmp_path, hwmon_sensor="tmp102")
    assert LinuxHardware.create(missing).sensors.temperature_c is None
    write(tmp_path / "sys/class/thermal/thermal_zone0/temp", "garbage")
    assert LinuxHardware.create(board(sysfs_root=tmp_path)).sensors.temperature_c is None


def test_power_source_and_battery_from_power_supply(tmp_path: Path) -> None:
    supplies = tmp_path / "sys/class/power_supply"
    write(supplies / "ac/type", "Mains")
    write(supplies / "ac/online", "1")
    hw = LinuxHardware.create(board(sysfs_root=tmp_path))
    assert (hw.power.source, hw.power.battery_pct) == ("mains", None)  # no battery: absent
    write(supplies / "BAT0/type", "Battery")
    write(supplies / "BAT0/capacity", "83")
    write(supplies / "BAT0/status", "Charging")
    assert (hw.power.source, hw.power.battery_pct) == ("mains", 83)
    write(supplies / "ac/online", "0")
    write(supplies / "BAT0/status", "Discharging")
    assert (hw.power.source, hw.power.battery_pct) == ("battery", 83)


def test_a_battery_alone_says_by_its_status(tmp_path: Path) -> None:
    supplies = tmp_path / "sys/class/power_supply"
    write(supplies / "battery/type", "Battery")
    write(supplies / "battery/capacity", "100")
    write(supplies / "battery/status", "Full")
    assert readings.read_power(tmp_path) == readings.PowerReading("mains", 100)
    write(supplies / "battery/status", "Discharging")
    assert readings.read_power(tmp_path) == readings.PowerReading("battery", 100)


def test_the_network_is_down_when_every_link_but_loopback_is(tmp_path: Path) -> None:
    write(tmp_path / "sys/class/net/lo/operstate", "unknown")
    write(tmp_path / "sys/class/net/wwan0/operstate", "down")
    hw = LinuxHardware.create(board(sysfs_root=tmp_path))
    assert not hw.network.up
    write(tmp_path / "sys/class/net/wwan0/operstate", "up")
    assert hw.network.up


# --------------------------------------------------------------------------- mmcli, chronyc

MMCLI_STATUS = """\
modem.generic.state                              : connected
modem.generic.signal-quality.value               : 64
modem.3gpp.operator-name                         : CHINA MOBILE
"""
MMCLI_SIGNAL = """\
modem.signal.refresh.rate                        : 30
modem.signal.lte.rssi                            : -67.00
modem.signal.lte.rsrp                            : -95.00
modem.signal.umts.rssi                           : --
"""
CHRONYC_TRACKING = """\
Reference ID    : C0A80101 (192.168.1.1)
Stratum         : 3
System time     : 0.004215000 seconds slow of NTP time
Last offset     : -0.000012000 seconds
Leap status     : Normal
"""


def stand_in(bin_dir: Path, name: str, script: str) -> None:
    """A named stand-in for a tool this machine does not run, printing its output."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


async def test_signal_and_operator_from_modemmanager(tools: Path, tmp_path: Path) -> None:
    (tmp_path / "status").write_text(MMCLI_STATUS)
    (tmp_path / "signal").write_text(MMCLI_SIGNAL)
    stand_in(
        tools,
        "mmcli",
        f'case "$*" in *--signal-get*) cat {tmp_path}/signal;; '
        f"*--signal-setup*) ;; *) cat {tmp_path}/status;; esac\n",
    )
    hw = LinuxHardware.create(board(sysfs_root=tmp_path))
    assert hw.sensors.signal_dbm is None  # not asked yet: absent, and asked now
    await hw.start()
    assert hw.sensors.signal_dbm == -95  # LTE RSRP first
    assert hw.sensors.operator == "CHINA MOBILE"
    # No modem (mmcli fails): absent again at the next reading.
    stand_in(tools, "mmcli", "echo 'error: couldn't find modem' >&2; exit 1\n")
    await hw.sensors.refresh()
    assert hw.sensors.signal_dbm is None and hw.sensors.operator is None
    await hw.close()


async def test_the_clock_offset_from_chrony(tools: Path, tmp_path: Path) -> None:
    hw = LinuxHardware.create(board(sysfs_root=tmp_path))
    await hw.clock.refresh()
    assert hw.clock.ntp_offset_ms is None  # no chronyc: absent
    (tmp_path / "tracking").write_text(CHRONYC_TRACKING)
    stand_in(tools, "chronyc", f"cat {tmp_path}/tracking\n")
    await hw.clock.refresh()
    assert hw.clock.ntp_offset_ms == -4  # slow: behind NTP time
    # The agent reports chrony's offset as its clock's (the board's clock source).
    assert EdgeAgent(device_config(tmp_path), hw).telemetry().clock_offset_ms == -4
    fast = CHRONYC_TRACKING.replace("0.004215000 seconds slow", "1.250000000 seconds fast")
    assert readings.parse_chronyc_tracking(fast) == 1250
    unsynced = CHRONYC_TRACKING.replace("Normal", "Not synchronised")
    assert readings.parse_chronyc_tracking(unsynced) is None
    await hw.close()


async def test_a_hanging_tool_is_given_up(tools: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in(tools, "chronyc", "exec sleep 60\n")
    monkeypatch.setattr(readings, "TOOL_TIMEOUT_S", 0.5)
    assert await readings.read_chrony_offset() is None


# --------------------------------------------------------------------------- telemetry


def test_absent_readings_travel_as_absent() -> None:
    telemetry = p.Telemetry(
        device_id="d-1", at=1, firmware="x", uptime_s=1, amplifier_on=False,
        amplifier_ok=True, speaker_line_ok=True, volume=70, cache_bytes=0, cache_items=0,
    )  # fmt: skip
    data = telemetry.model_dump(mode="json")
    assert data["temperature_c"] is None and data["signal_dbm"] is None
    assert data["power_source"] is None and data["operator"] is None
    assert p.Telemetry.model_validate_json(telemetry.to_bytes()) == telemetry


def device_config(tmp_path: Path, **settings: object) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {
            "device_id": "d-1", "village_id": "v-1", "township_id": "t-1",
            "broker_url": "mqtt://127.0.0.1:1", "mqtt_username": "d-1", "mqtt_password": "x",
            "media_base_url": "http://127.0.0.1:1/media/", "controller_public_keys": [],
            "state_dir": str(tmp_path / "state"), **settings,
        }
    )  # fmt: skip


def test_the_agent_reports_a_missing_sensor_absent(tmp_path: Path) -> None:
    hw = SimHardware.create(tmp_path / "board")
    hw.sensors.has_thermometer = hw.sensors.has_modem = False
    hw.power.battery_pct_value = None
    telemetry = EdgeAgent(device_config(tmp_path), hw).telemetry()
    assert telemetry.temperature_c is None and telemetry.signal_dbm is None
    assert telemetry.operator is None and telemetry.battery_pct is None
    assert telemetry.power_source == "mains"
    hw.sensors.has_modem = True
    telemetry = EdgeAgent(device_config(tmp_path), hw).telemetry()
    assert telemetry.operator == "SIM-NET" and telemetry.signal_dbm is not None


def test_rollups_average_only_the_readings_that_were_there() -> None:
    """An absent reading is left out of the hour's summary, not averaged in as 0."""
    summary = _Summary()
    for at, temperature in enumerate((None, 20.0, None, 30.0)):
        telemetry = p.Telemetry(
            device_id="d-1", at=at, firmware="x", uptime_s=1, amplifier_on=False,
            amplifier_ok=True, speaker_line_ok=True, volume=70, cache_bytes=0,
            cache_items=0, temperature_c=temperature,
        )  # fmt: skip
        # As the ingest stores a sample.
        summary.add_sample(at, telemetry.model_dump(mode="json", exclude={"v", "device_id"}))
    data = summary.data()
    assert data["temperature_c"] == {"min": 20.0, "max": 30.0, "avg": 25.0, "n": 2}
    assert "signal_dbm" not in data and "battery_pct" not in data


def test_the_device_file_chooses_the_board(tmp_path: Path) -> None:
    assert device_config(tmp_path).board.kind == "sim"
    linux = device_config(tmp_path, board={"kind": "linux", "pcm": "hw:1,0"})
    assert isinstance(linux.board, LinuxBoard) and linux.board.pcm == "hw:1,0"
    with pytest.raises(ValueError, match="pmc"):
        device_config(tmp_path, board={"kind": "linux", "pmc": "x"})


# --------------------------------------------------------------------------- GPIO

GPIO_SIM = Path("/sys/kernel/config/gpio-sim")


@pytest.fixture
def gpio_sim(tmp_path: Path) -> tuple[Path, Path]:
    """A simulated chip with 8 lines (the kernel's gpio-sim, through configfs): the
    chip's character device, and the sysfs folder whose `sim_gpioN/pull` drives an
    input and `value` reads an output."""
    if not GPIO_SIM.is_dir():
        pytest.skip(
            "gpio-sim unavailable: no /sys/kernel/config/gpio-sim "
            "(needs configfs mounted, CONFIG_GPIO_SIM and root; this kernel/container has none)"
        )
    pytest.importorskip("gpiod", reason="the gpiod binding (the `board` extra) is not installed")
    name = f"dalaba-{os.getpid()}"
    dev = GPIO_SIM / name
    (dev / "bank0").mkdir(parents=True)
    (dev / "bank0/num_lines").write_text("8")
    (dev / "bank0/line0").mkdir()
    (dev / "bank0/line0/name").write_text("AMP_EN")
    (dev / "live").write_text("1")
    chip_name = (dev / "bank0/chip_name").read_text().strip()
    device = (dev / "dev_name").read_text().strip()
    yield Path("/dev") / chip_name, Path(f"/sys/devices/platform/{device}/{chip_name}")
    (dev / "live").write_text("0")
    (dev / "bank0/line0").rmdir()
    (dev / "bank0").rmdir()
    dev.rmdir()


async def test_the_relay_and_status_lines_on_gpio_sim(gpio_sim: tuple[Path, Path]) -> None:
    chip, sim = gpio_sim
    hw = LinuxHardware.create(
        board(
            gpio_chip=chip, amplifier_relay="AMP_EN", amplifier_warmup_ms=50,
            amplifier_fault=GpioInput(line=1), speaker_line_ok=GpioInput(line=2),
        )
    )  # fmt: skip
    (sim / "sim_gpio2/pull").write_text("pull-up")  # a load on the line
    assert (sim / "sim_gpio0/value").read_text().strip() == "0"  # requested off
    assert not hw.amplifier.on and hw.amplifier.ok and hw.speaker.line_ok
    await hw.amplifier.power_on()
    assert hw.amplifier.on
    assert (sim / "sim_gpio0/value").read_text().strip() == "1"
    (sim / "sim_gpio1/pull").write_text("pull-up")  # the amplifier reports a fault
    assert not hw.amplifier.ok
    (sim / "sim_gpio2/pull").write_text("pull-down")
    assert not hw.speaker.line_ok
    await hw.close()
    assert (sim / "sim_gpio0/value").read_text().strip() == "0"


def test_gpio_lines_without_the_binding_fail_with_a_reason(tmp_path: Path) -> None:
    try:
        import gpiod  # noqa: F401
    except ImportError:
        with pytest.raises(HardwareFault, match="gpiod"):
            LinuxHardware.create(board(amplifier_relay="AMP_EN"))
        return
    # With the binding, a chip that is not there is a fault naming it.
    with pytest.raises(HardwareFault, match="gpiochip99"):
        LinuxHardware.create(board(gpio_chip=tmp_path / "gpiochip99", amplifier_relay=0))


# --------------------------------------------------------------------------- systemd


def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    return sock


def test_notify_writes_to_the_socket_systemd_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with notify_socket(tmp_path, monkeypatch) as sock:
        assert sdnotify.notify("READY=1")
        assert sock.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.notify("READY=1")  # not under systemd: nothing, no error


def test_the_watchdog_interval_is_half_what_systemd_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))  # the launcher, which passes it on
    assert sdnotify.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "999999999")  # meant for another process
    assert sdnotify.watchdog_interval_s() is None


UNIT = REPO / "deploy/systemd/dalaba-agent.service"


def test_the_unit_sandboxes_the_agent_and_watches_it() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify", "WatchdogSec=", "Restart=on-failure", "NoNewPrivileges=yes",
        "ProtectSystem=strict", "DevicePolicy=closed", "DeviceAllow=char-alsa rw",
        "DeviceAllow=char-gpiochip rw", "ReadWritePaths=/var/lib/dalaba-agent", "KillSignal=SIGINT",
        "StandardOutput=journal",
    ):  # fmt: skip
        assert line in text, line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    # The unit names /usr/local/bin/dalaba; verify wants the binary to exist, so the
    # unit is checked with ExecStart pointed at one that does.
    unit = tmp_path / "dalaba-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/dalaba/venv/bin/dalaba", "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    problems = [
        line for line in (result.stdout + result.stderr).splitlines()
        if "dalaba-agent.service" in line
    ]  # fmt: skip
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


# --------------------------------------------------------------------------- live audio


@needs_aplay
async def test_live_chunks_reach_the_alsa_file_pcm_with_gaps_as_silence(
    tmp_path: Path, alsa_file: Path
) -> None:
    """Live paging and phone calls: 16 kHz chunks at their instants, through one aplay;
    a missing frame is written as silence, and the output monitor's clip holds what
    went out while the line was whole."""
    hw = LinuxHardware.create(board(pcm="dalaba_file", sample_rate=48_000))
    hw.speaker.set_volume(100)
    await hw.amplifier.power_on()
    frame = array.array("h", [1000, -1000] * 480).tobytes()  # 60 ms at 16 kHz
    now = int(time.time() * 1000)

    async def chunks() -> AsyncIterator[tuple[int, bytes]]:
        yield now + 100, frame
        yield now + 220, frame  # the frame at +160 ms was lost: 60 ms of silence

    outcome = await hw.speaker.play_stream(chunks(), broadcast_id="live-1")
    assert outcome.completed and outcome.played_ms == 120
    written = samples(contents(alsa_file))
    # 48 kHz: each 16 kHz sample three times; 60 ms = 2,880 samples per frame.
    assert list(written[:6]) == [1000, 1000, 1000, -1000, -1000, -1000]
    assert set(written[2880 : 2 * 2880]) == {0}
    assert list(written[2 * 2880 : 2 * 2880 + 3]) == [1000, 1000, 1000]
    assert hw.output_monitor.carrying()
    assert hw.output_monitor.last_clip(1000) == frame + frame
    assert hw.modem is None
