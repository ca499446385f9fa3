"""A county Mosquitto bridged to a province Mosquitto, both real processes, with the
bridge section `dalaba broker-config --kind mosquitto-bridge` writes: commands go down,
reports go up under the county's prefix, the bridge account is held to that prefix, and
a report queued while the province broker is down arrives after it comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dalaba import protocol as p
from dalaba.mqtt import BrokerAddress, MqttConnection, TlsSettings
from dalaba_ops.broker import (
    BrokerFiles,
    DeviceAccount,
    MosquittoProcess,
    free_port,
    mosquitto_password_hash,
    write_acl,
    write_broker_config,
    write_password_file,
)
from dalaba_ops.broker_cluster import (
    bridge_username,
    province_prefix,
    render_province_bridge_acl,
    write_bridge_files,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

COUNTY = "c1"
OPS_USER, OPS_PASSWORD = "province-ops", "ops-secret-1"
CONTROLLER_PASSWORD = "county-controller-secret"
TERMINAL = DeviceAccount("t01-v01-d1", "t01-v01", "t01", "terminal-secret-1")
PREFIX = province_prefix(COUNTY)


@dataclass
class Brokers:
    province: MosquittoProcess
    province_files: BrokerFiles
    county: MosquittoProcess | None
    bridge_dir: Path

    def bridge_password(self) -> str:
        return (self.bridge_dir / f"{bridge_username(COUNTY)}.password").read_text().strip()


def start_province(base: Path) -> tuple[MosquittoProcess, BrokerFiles, Path]:
    """The province broker over TLS, with an operator account that reads and writes
    under counties/ and the bridge account of county c1 as generated."""
    port = free_port()
    files = write_broker_config(base / "province", port, tls=True)
    # Saved every second rather than every ten, so a session made just before the
    # kill below is on disk (the kill is SIGKILL: nothing is saved at exit).
    conf = files.config.read_text().replace("autosave_interval 10", "autosave_interval 1")
    files.config.write_text(conf)
    assert files.tls is not None
    bridge_dir = base / "bridge"
    bridge = write_bridge_files(
        bridge_dir,
        county_id=COUNTY,
        address=f"localhost:{port}",
        cafile=str(files.tls.ca_file),
        restart_timeout=(1, 2),
    )
    files.password_file.write_text(
        f"{OPS_USER}:{mosquitto_password_hash(OPS_PASSWORD)}\n"
        + bridge.province_passwd_line.read_text()
    )
    files.acl_file.write_text(
        f"user {OPS_USER}\ntopic readwrite counties/#\n" + render_province_bridge_acl(COUNTY)
    )
    proc = MosquittoProcess(files, port, host="localhost")
    proc.start()
    return proc, files, bridge_dir


def start_county(base: Path, bridge_dir: Path) -> MosquittoProcess:
    port = free_port()
    files = write_broker_config(base / "county", port)
    write_password_file(files.password_file, CONTROLLER_PASSWORD, [TERMINAL])
    write_acl(files.acl_file, [TERMINAL])
    section = (bridge_dir / f"{bridge_username(COUNTY)}.conf").read_text()
    files.config.write_text(files.config.read_text() + "\n" + section)
    proc = MosquittoProcess(files, port)
    proc.start()
    return proc


@pytest.fixture
def province_only(tmp_path: Path) -> Iterator[Brokers]:
    province, files, bridge_dir = start_province(tmp_path)
    try:
        yield Brokers(province, files, None, bridge_dir)
    finally:
        province.stop()


@pytest.fixture
def bridged(tmp_path: Path) -> Iterator[Brokers]:
    province, files, bridge_dir = start_province(tmp_path)
    county = None
    try:
        county = start_county(tmp_path, bridge_dir)
        yield Brokers(province, files, county, bridge_dir)
    finally:
        if county is not None:
            county.stop()
        province.stop()


Received = list[tuple[str, bytes]]


async def connect(
    proc: MosquittoProcess,
    username: str,
    password: str,
    subscribe: list[str],
    *,
    ca_file: Path | None = None,
    session_expiry_s: int = 0,
) -> tuple[MqttConnection, Received]:
    got: Received = []
    conn = MqttConnection(
        client_id=username,
        broker=BrokerAddress(
            proc.host,
            proc.port,
            username,
            password,
            TlsSettings(ca_file) if ca_file else None,
        ),
        on_message=lambda topic, payload: got.append((topic, payload)),
        subscriptions=[(t, 1) for t in subscribe],
        session_expiry_s=session_expiry_s,
    )
    await conn.start()
    return conn, got


async def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_bridge_state(state: Received, value: bytes, timeout_s: float) -> None:
    await wait_until(
        lambda: bool(state) and state[-1][1] == value,
        timeout_s,
        f"the county's bridge state to be {value!r} (seen {[m for _, m in state]})",
    )


async def test_commands_go_down_and_reports_go_up_under_the_county_prefix(
    bridged: Brokers,
) -> None:
    assert bridged.county is not None
    ca = bridged.province_files.tls.ca_file if bridged.province_files.tls else None
    ops, ops_got = await connect(
        bridged.province, OPS_USER, OPS_PASSWORD, [f"{PREFIX}{p.TOPIC_ROOT}/device/#"], ca_file=ca
    )
    controller, state = await connect(
        bridged.county, "dalaba-controller", CONTROLLER_PASSWORD, [f"{p.TOPIC_ROOT}/bridge/+/state"]
    )
    terminal, terminal_got = await connect(
        bridged.county,
        TERMINAL.device_id,
        TERMINAL.password,
        p.Topics.subscriptions_for(TERMINAL.device_id, TERMINAL.village_id, TERMINAL.township_id),
    )
    try:
        await wait_bridge_state(state, b"1", 20)
        # Down: the province publishes under the county's prefix; the terminal, on the
        # county broker, gets it on the plain topic. Repeated until it arrives, since
        # the bridge's SUBSCRIBE on the province may follow its CONNECT by a moment.
        command = p.Topics.command_village(TERMINAL.village_id)
        deadline = time.monotonic() + 20
        while (command, b"command-1") not in terminal_got:
            assert time.monotonic() < deadline, f"no command through the bridge: {terminal_got}"
            await ops.publish_confirmed(PREFIX + command, b"command-1")
            await asyncio.sleep(0.3)
        # Up: the terminal's acknowledgement reaches the province under the prefix.
        ack = p.Topics.device_ack(TERMINAL.device_id)
        await terminal.publish_confirmed(ack, b"ack-1")
        await wait_until(lambda: (PREFIX + ack, b"ack-1") in ops_got, 20, "the ack upstream")
        # Nothing else travels: the province sees only the county's device topics.
        assert {t for t, _ in ops_got} == {PREFIX + ack}
    finally:
        for conn in (ops, controller, terminal):
            await conn.stop()


async def test_the_bridge_account_cannot_leave_its_county_prefix(province_only: Brokers) -> None:
    ca = province_only.province_files.tls.ca_file if province_only.province_files.tls else None
    ops, ops_got = await connect(province_only.province, OPS_USER, OPS_PASSWORD, ["#"], ca_file=ca)
    other_county_cmd = f"counties/c2/{p.Topics.COMMAND_ALL}"
    bridge, bridge_got = await connect(
        province_only.province,
        bridge_username(COUNTY),
        province_only.bridge_password(),
        [f"counties/c2/{p.TOPIC_ROOT}/cmd/#", f"{PREFIX}{p.TOPIC_ROOT}/cmd/#"],
        ca_file=ca,
    )
    try:
        forbidden = [
            f"counties/c2/{p.Topics.device_ack('t01-v01-d1')}",  # another county's reports
            PREFIX + p.Topics.COMMAND_ALL,  # commands into its own county: province only
            PREFIX + p.Topics.live("b1"),
            f"{p.TOPIC_ROOT}/device/t01-v01-d1/ack",  # outside every prefix
            "counties/c1",
        ]
        for topic in forbidden:
            bridge.publish(topic, b"forged", qos=1)
        allowed = PREFIX + p.Topics.device_ack("t01-v01-d1")
        await bridge.publish_confirmed(allowed, b"marker")
        await wait_until(lambda: (allowed, b"marker") in ops_got, 10, "the allowed publish")
        assert [t for t, m in ops_got if m == b"forged"] == []
        # Reading: its own county's commands arrive, another county's do not.
        own = PREFIX + p.Topics.COMMAND_ALL
        await ops.publish_confirmed(other_county_cmd, b"not-yours")
        await ops.publish_confirmed(own, b"yours")
        await wait_until(lambda: (own, b"yours") in bridge_got, 10, "its own county's command")
        assert [t for t, _ in bridge_got] == [own]
    finally:
        await bridge.stop()
        await ops.stop()


async def test_a_report_queued_while_the_province_is_down_arrives_after_it_restarts(
    bridged: Brokers,
) -> None:
    assert bridged.county is not None
    ca = bridged.province_files.tls.ca_file if bridged.province_files.tls else None
    ack = p.Topics.device_ack(TERMINAL.device_id)
    # The province subscriber keeps its session (and so its subscription) across the
    # province broker's restart, as a province controller would.
    ops, ops_got = await connect(
        bridged.province, OPS_USER, OPS_PASSWORD, [PREFIX + ack], ca_file=ca, session_expiry_s=3600
    )
    controller, state = await connect(
        bridged.county, "dalaba-controller", CONTROLLER_PASSWORD, [f"{p.TOPIC_ROOT}/bridge/+/state"]
    )
    terminal, _ = await connect(bridged.county, TERMINAL.device_id, TERMINAL.password, [])
    try:
        await wait_bridge_state(state, b"1", 20)
        await terminal.publish_confirmed(ack, b"before")
        await wait_until(lambda: (PREFIX + ack, b"before") in ops_got, 20, "the first report")
        subscribed_at = time.time()
        db = bridged.province_files.data_dir / "mosquitto.db"
        await wait_until(
            lambda: db.exists() and db.stat().st_mtime > subscribed_at,
            10,
            "the province broker to save its sessions",
        )

        bridged.province.kill()
        await wait_bridge_state(state, b"0", 30)
        # Accepted by the county broker (PUBACK) while the province is unreachable.
        await terminal.publish_confirmed(ack, b"while-down")
        bridged.province.start()

        await wait_bridge_state(state, b"1", 30)
        await wait_until(
            lambda: (PREFIX + ack, b"while-down") in ops_got, 30, "the queued report upstream"
        )
    finally:
        for conn in (ops, controller, terminal):
            await conn.stop()
