"""`dalaba agent` on the `linux` board, end to end: a signed play command through a
private Mosquitto reaches the agent process, whose aplay writes the samples into an
ALSA `file` PCM defined here; under a notify socket opened here it says READY=1 and
pings the watchdog, as it does under systemd. The controller's side is the MQTT rig of
tests/unit/test_agent_truth.py (the controller's account, signing and collecting every
report)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest

from dalaba import protocol as p
from edge_agent.boards.settings import LinuxBoard
from edge_agent.decode import decode_file
from firmware_sim.fleet import device_dir
from tests.procs import (
    Api,
    FaultCounty,
    dalaba_argv,
    wait_deliveries,
    wait_online,
    wait_until,
)
from tests.support import DatabaseUrlFactory
from tests.unit.test_agent_truth import Rig
from tests.unit.test_board_linux import contents, samples, tone, write_asoundrc

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(shutil.which("aplay") is None, reason="aplay (alsa-utils) missing"),
]
S = p.DeliveryState


async def test_a_broadcast_plays_through_alsa_on_the_linux_board(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    played = tmp_path / "played.raw"
    write_asoundrc(tmp_path / "home", played, append=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    sysfs = tmp_path / "sysfs"  # a board with no sensors at all
    sysfs.mkdir()

    rig = Rig(tmp_path, devices=("d-1",))
    await rig.start()
    try:
        board = LinuxBoard(kind="linux", pcm="dalaba_file", sample_rate=16_000, sysfs_root=sysfs)
        config = rig.config("d-1", board=board, telemetry_interval_s=1.0)
        # Set only now: Mosquitto speaks the notify protocol too.
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # a ping every second
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        proc = rig.spawn_agent(config)
        await rig.wait(lambda: any(s.online for s in rig.statuses("d-1")), 60, "agent online")
        messages = [notify.recv(100) for _ in range(2)]
        assert messages[0] == b"READY=1" and messages[1] == b"WATCHDOG=1"

        media = tone(tmp_path / "tone.wav", 1.5)
        body = rig.play("b-1", media.read_bytes(), start_in_ms=2_000)
        await rig.send("d-1", body)
        done = await rig.wait_state("d-1", "b-1", S.DONE, 60)
        assert done.reason is None or done.reason == ""

        decoded = await decode_file(media, sample_rate=16_000)
        written = contents(played)
        # At the terminal's normal volume (70), scaled in software: this PCM has no mixer.
        volume = config.normal_volume / 100
        assert list(samples(written[: len(decoded)])) == [int(s * volume) for s in samples(decoded)]
        assert set(written[len(decoded) :]) <= {0}

        await rig.wait(lambda: bool(rig.telemetry("d-1")), 30, "telemetry")
        report = rig.telemetry("d-1")[-1]
        # The board has no thermometer, power supply or modem: absent, not zero.
        assert report.temperature_c is None and report.signal_dbm is None
        assert report.power_source is None and report.battery_pct is None
        assert report.operator is None
        proc.send_signal(2)  # SIGINT, as systemd stops it (KillSignal=SIGINT)
        assert proc.wait(30) == 0
        rest = []
        notify.settimeout(0.5)  # it has exited: whatever it said is queued already
        with pytest.raises(TimeoutError):
            while True:
                rest.append(notify.recv(100))
        assert b"STOPPING=1" in rest
    finally:
        notify.close()
        await rig.stop()


def spawn(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, cwd=cwd)


async def test_under_the_launcher_the_agent_pings_the_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the unit runs it: systemd's WATCHDOG_PID names `dalaba agent-launcher`, whose
    child agent says READY=1 and pings (NotifyAccess=all)."""
    write_asoundrc(tmp_path / "home", tmp_path / "played.raw")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    rig = Rig(tmp_path, devices=("d-1",))
    await rig.start()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    launcher: subprocess.Popen[bytes] | None = None
    try:
        board = LinuxBoard(kind="linux", pcm="dalaba_file", sysfs_root=tmp_path)
        config = rig.config("d-1", board=board)
        path = config.state_dir.parent / "device.json"
        config.save(path)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DALABA_")}
        env |= {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000"}
        # exec keeps the shell's pid: WATCHDOG_PID is the launcher's, as systemd sets it.
        script = 'export WATCHDOG_PID=$$; exec "$@"'
        argv = ["sh", "-c", script, "sh", *dalaba_argv("agent-launcher", "--config", str(path))]
        launcher = spawn(argv, env, tmp_path)
        got = [notify.recv(100) for _ in range(3)]
        assert got == [b"READY=1", b"WATCHDOG=1", b"WATCHDOG=1"]
        await rig.wait(lambda: any(s.online for s in rig.statuses("d-1")), 30, "agent online")
    finally:
        if launcher is not None:
            launcher.send_signal(2)
            launcher.wait(30)
        notify.close()
        await rig.stop()


def test_a_linux_board_with_unclaimable_gpio_is_refused_in_one_line(tmp_path: Path) -> None:
    device = {
        "device_id": "d-1", "village_id": "v-1", "township_id": "t-1",
        "broker_url": "mqtt://127.0.0.1:1", "mqtt_username": "d-1", "mqtt_password": "x",
        "media_base_url": "http://127.0.0.1:1/media/", "controller_public_keys": [],
        "state_dir": str(tmp_path / "state"),
        "board": {"kind": "linux", "gpio_chip": str(tmp_path / "gpiochip7"), "amplifier_relay": 3},
    }  # fmt: skip
    path = tmp_path / "device.json"
    path.write_text(json.dumps(device))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DALABA_")}
    result = subprocess.run(
        dalaba_argv("agent", "--config", str(path)), capture_output=True, text=True, env=env,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "board" in last and ("gpiochip7" in last or "gpiod" in last), result.stderr
    assert "Traceback" not in result.stderr


def test_a_technician_plays_a_test_tone_on_the_board(tmp_path: Path) -> None:
    played = tmp_path / "played.raw"
    write_asoundrc(tmp_path / "home", played)
    device = {
        "device_id": "d-1", "village_id": "v-1", "township_id": "t-1",
        "broker_url": "mqtt://127.0.0.1:1", "mqtt_username": "d-1", "mqtt_password": "x",
        "media_base_url": "http://127.0.0.1:1/media/", "controller_public_keys": [],
        "state_dir": str(tmp_path / "state"),
        "board": {"kind": "linux", "pcm": "dalaba_file", "sample_rate": 16000,
                  "sysfs_root": str(tmp_path)},
    }  # fmt: skip
    (tmp_path / "sys/class/thermal/thermal_zone0").mkdir(parents=True)
    (tmp_path / "sys/class/thermal/thermal_zone0/temp").write_text("41000\n")
    path = tmp_path / "device.json"
    path.write_text(json.dumps(device))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DALABA_")}
    env["HOME"] = str(tmp_path / "home")

    def board_test(*args: str) -> subprocess.CompletedProcess[str]:
        argv = dalaba_argv("board-test", "--config", str(path), *args)
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)

    result = board_test("--seconds", "0.5", "--volume", "40")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("played 500 ms at volume 40;"), result.stdout
    assert "temperature 41.0 C" in result.stdout and "power absent" in result.stdout
    tone = samples(contents(played)[:16_000])
    # ffmpeg's sine peaks at 1/8 of full scale (4096); played at 40 %.
    assert 0.35 * 4096 < max(tone) < 0.42 * 4096
    mistake = board_test("--volume", "200")
    assert mistake.returncode == 2 and "--volume" in mistake.stderr
    assert len(mistake.stderr.strip().splitlines()) == 1


@pytest.mark.slow
async def test_a_county_broadcast_plays_on_a_linux_board(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_database_url: DatabaseUrlFactory
) -> None:
    """The real controller (`dalaba controller`), its speech, its broker and a simulated
    fleet, and one terminal as `dalaba agent` on the linux board: a broadcast made
    through the API is played there, and the samples aplay wrote are the announcement's."""
    county = FaultCounty.prepare(
        tmp_path / "county", villages=2, loners=1, database_url=new_database_url()
    )
    (board_id,) = county.loner_ids
    played = tmp_path / "played.raw"
    write_asoundrc(tmp_path / "home", played)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the loner's aplay reads it
    path = device_dir(county.data_dir, board_id) / "device.json"
    board = LinuxBoard(kind="linux", pcm="dalaba_file", sample_rate=16_000, sysfs_root=tmp_path)
    config = county.device_config(board_id).model_copy(update={"board": board})
    config.save(path)
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(county, http)
            county.start_missing()
            await wait_until(api.healthy, 60, "the controller", detail=county.log_tails)
            await wait_online(api, county.terminals, True, 60)
            created = await api.broadcast(
                text="请注意，今晚有大风。", targets={"devices": [board_id]}
            )
            final = await wait_deliveries(api, created["id"], {board_id: {"done"}}, 90)
            assert final[board_id]["state"] == "done"
            devices = await api.devices()
        # The board has no sensors in its sysfs tree: the controller shows them absent.
        assert devices[board_id]["telemetry"]["temperature_c"] is None
        written = contents(played)
        volume = config.normal_volume / 100
        heard = []
        for media in (config.state_dir / "cache").glob("*.media"):  # what it fetched
            decoded = await decode_file(media, sample_rate=16_000)
            scaled = [int(x * volume) for x in samples(decoded)]
            if len(decoded) > 16_000 and list(samples(written[: len(decoded)])) == scaled:
                heard.append(media.name)
        assert len(heard) == 1, f"no announcement in the {len(written)} bytes written"
    finally:
        county.shutdown()
