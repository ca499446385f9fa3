"""Broker memory benchmark: Mosquitto's resident memory with N idle terminal sessions.

One private Mosquitto with the product's configuration, password file and ACL
(`dalaba_ops.broker`: one account per terminal, persistent sessions), then N clients
that each do what a terminal does at start: CONNECT with MQTT 5 (its own account, client
id = username, clean start off, session expiry 14 days, keepalive 60 s) and SUBSCRIBE at
QoS 1 to its four command topics (county, township, village, itself). The clients are
bare asyncio sockets speaking MQTT by hand, so the benchmark's own cost stays small;
they answer nothing else and send a PINGREQ every 30 s. With --tls the listener is
TLS 1.2+ (the product's TLS listener) and every client completes a handshake.

Measured: the broker's VmRSS (from /proc) before any client, after every client is
connected and subscribed (then 5 s idle), and after the clients have disconnected (their
sessions stay: persistent). Reported per 10,000 terminals.

Run: .venv/bin/python bench/bench_broker_memory.py [--terminals 10000] [--tls]
Writes bench/results/broker-memory-<date>[-tls].md and .json. Everything runs under a
temporary directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import resource
import shlex
import shutil
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import machine_facts
from dalaba.protocol import Topics
from dalaba_ops.broker import (
    DeviceAccount,
    MosquittoProcess,
    free_port,
    write_acl,
    write_broker_config,
    write_password_file,
)

RESULTS = Path(__file__).resolve().parent / "results"
VILLAGES_PER_TOWNSHIP = 20
PING_EVERY_S = 30.0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id: str, password: str) -> bytes:
    # Clean start off, username and password flags; keepalive 60 s.
    props = b"\x11" + struct.pack("!I", 14 * 24 * 3600)  # session expiry interval
    variable = _str("MQTT") + bytes([5, 0xC0]) + struct.pack("!H", 60) + _varint(len(props)) + props
    payload = _str(client_id) + _str(client_id) + _str(password)
    body = variable + payload
    return b"\x10" + _varint(len(body)) + body


def subscribe_packet(topics: list[str]) -> bytes:
    body = struct.pack("!H", 1) + b"\x00" + b"".join(_str(t) + b"\x01" for t in topics)
    return b"\x82" + _varint(len(body)) + body


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Terminal:
    def __init__(self, account: DeviceAccount) -> None:
        self.account = account
        self.writer: asyncio.StreamWriter | None = None

    async def start(self, port: int, ctx: ssl.SSLContext | None) -> None:
        reader, writer = await asyncio.open_connection(
            "localhost" if ctx else "127.0.0.1", port, ssl=ctx
        )
        self.writer = writer
        writer.write(connect_packet(self.account.device_id, self.account.password))
        kind, body = await read_packet(reader)
        if kind != 0x20 or body[1] != 0:
            raise RuntimeError(f"{self.account.device_id}: CONNACK {body[:2].hex()}")
        a = self.account
        writer.write(
            subscribe_packet(Topics.subscriptions_for(a.device_id, a.village_id, a.township_id))
        )
        kind, body = await read_packet(reader)
        if kind != 0x90 or any(code > 2 for code in body[3:]):
            raise RuntimeError(f"{self.account.device_id}: SUBACK {body.hex()}")
        self._reader = reader

    def ping(self) -> None:
        if self.writer is not None:
            self.writer.write(b"\xc0\x00")

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.write(b"\xe0\x00")  # DISCONNECT, normal: the session stays
            self.writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await self.writer.wait_closed()


async def run(n: int, tls: bool, base: Path) -> dict[str, Any]:
    accounts = [
        DeviceAccount(
            f"t{i // (VILLAGES_PER_TOWNSHIP * 10):03d}-v{i // 10:05d}-d{i % 10}",
            f"t{i // (VILLAGES_PER_TOWNSHIP * 10):03d}-v{i // 10:05d}",
            f"t{i // (VILLAGES_PER_TOWNSHIP * 10):03d}",
            f"pw-{i:06d}-benchmark",
        )
        for i in range(n)
    ]
    port = free_port()
    files = write_broker_config(base, port, tls=tls)
    write_password_file(files.password_file, "controller-pw", accounts)
    write_acl(files.acl_file, accounts)
    # The broker inherits our open-file limit: one descriptor per connection.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    proc = await asyncio.create_subprocess_exec(
        MosquittoProcess.executable(),
        "-c",
        str(files.config),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ctx = None
    if files.tls is not None:
        ctx = files.tls.client_context()
    terminals = [Terminal(a) for a in accounts]
    try:
        probe = MosquittoProcess(files, port, host="localhost" if tls else "127.0.0.1")
        deadline = time.monotonic() + 10
        while not probe._answers():  # the broker's own readiness probe
            if time.monotonic() > deadline or proc.returncode is not None:
                raise RuntimeError("mosquitto did not start")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        rss_empty = vm_rss_kb(proc.pid)
        gate = asyncio.Semaphore(100)

        async def start(t: Terminal) -> None:
            async with gate:
                await t.start(port, ctx)

        t0 = time.monotonic()
        await asyncio.gather(*(start(t) for t in terminals))
        connect_s = time.monotonic() - t0

        async def keepalive() -> None:
            while True:
                await asyncio.sleep(PING_EVERY_S)
                for t in terminals:
                    t.ping()

        pinger = asyncio.create_task(keepalive())
        await asyncio.sleep(5.0)
        rss_connected = vm_rss_kb(proc.pid)
        pinger.cancel()
        for t in terminals:
            await t.stop()
        await asyncio.sleep(3.0)
        rss_sessions = vm_rss_kb(proc.pid)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    per_conn = (rss_connected - rss_empty) / n
    per_session = (rss_sessions - rss_empty) / n
    return {
        "terminals": n,
        "tls": tls,
        "rss_empty_kb": rss_empty,
        "rss_connected_kb": rss_connected,
        "rss_sessions_only_kb": rss_sessions,
        "per_connected_terminal_kb": round(per_conn, 2),
        "per_offline_session_kb": round(per_session, 2),
        "per_10k_connected_mb": round(per_conn * 10_000 / 1024, 1),
        "connect_all_s": round(connect_s, 1),
    }


def write_results(result: dict[str, Any], command: str, took_s: float) -> Path:
    facts = machine_facts()
    date = datetime.date.today().isoformat()
    name = f"broker-memory-{date}{'-tls' if result['tls'] else ''}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"machine": facts, "command": command, "result": result}, indent=1) + "\n"
    )
    load = os.getloadavg()
    n = f"{result['terminals']:,}"
    mb = {k: f"{int(result[k]) / 1024:.1f} MB" for k in ("rss_empty_kb", "rss_connected_kb")}
    mb["rss_sessions_only_kb"] = f"{int(result['rss_sessions_only_kb']) / 1024:.1f} MB"
    tls_note = ", TLS listener" if result["tls"] else ""
    lines = [
        f"# Broker memory: Mosquitto with {n} idle terminal sessions, {date}",
        "",
        f"- Machine: {facts['nproc']} CPUs, {facts['cpu']}, {facts['ram']} RAM; {facts['os']}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} after (shared machine; "
        "memory, not time, is measured)",
        f"- Versions: {facts['mosquitto']}; Python {facts['python']}",
        f"- Command: `{command}` (took {took_s:.0f} s)",
        "- Setup: a private Mosquitto with the product's configuration "
        f"(`dalaba_ops.broker.write_broker_config`{tls_note}), password file and ACL for {n} "
        "terminal accounts. Each client does what a terminal does at start: MQTT 5 CONNECT "
        "with its own account, clean start off, session expiry 14 days, then SUBSCRIBE QoS 1 "
        "to its four command topics. Bare asyncio sockets (the client's cost is not in the "
        "figure).",
        "- Memory is the broker's VmRSS from /proc.",
        "",
        "| | broker VmRSS |",
        "| --- | --- |",
        f"| started, no client | {mb['rss_empty_kb']} |",
        f"| {n} terminals connected and subscribed, 5 s idle | **{mb['rss_connected_kb']}** |",
        "| after they disconnect (sessions kept; freed memory stays with the process: "
        f"an upper bound) | {mb['rss_sessions_only_kb']} |",
        f"| per connected terminal | {result['per_connected_terminal_kb']} kB |",
        f"| per offline session, upper bound (as above) | {result['per_offline_session_kb']} kB |",
        f"| **per 10,000 connected terminals** | **{result['per_10k_connected_mb']} MB** |",
        "",
        f"Connecting all {n} ({'TLS handshakes, ' if result['tls'] else ''}100 at a time, "
        f"from the benchmark's one process on a loaded machine): {result['connect_all_s']} s.",
    ]
    md = "\n".join(lines) + "\n"
    (RESULTS / f"{name}.md").write_text(md)
    return RESULTS / f"{name}.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", type=int, default=10_000)
    parser.add_argument("--tls", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="dalaba-broker-memory-"))
    try:
        result = asyncio.run(run(args.terminals, args.tls, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    command = ".venv/bin/python bench/bench_broker_memory.py " + shlex.join(sys.argv[1:])
    path = write_results(result, command.strip(), time.monotonic() - started)
    print(path.read_text())


if __name__ == "__main__":
    main()
