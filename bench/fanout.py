"""Raw broker fan-out: one QoS 1 message to N subscribers of one topic, nothing else.

The baseline for bench_spine.py: the same private Mosquitto configuration the product
uses (`dalaba_ops.broker.write_broker_config`, password file, ACL), N terminal accounts
subscribed to the county-wide command topic through `dalaba.mqtt.MqttConnection`
(source addresses spread like the simulated fleet), and one publisher holding the
controller's account. The payload has the size of a real signed play command. Nothing
is verified, stored or played: this is the floor the whole system sits on.

Subscribers run in this process (sharing its event loop, as the in-process fleet does)
or in child processes (`python bench/fanout.py subscribe ...`, used by `run_fanout`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dalaba import protocol as p
from dalaba.mqtt import BrokerAddress, MqttConnection
from dalaba.signing import Ed25519Signer
from dalaba_ops.broker import (
    CONTROLLER_USER,
    DeviceAccount,
    MosquittoProcess,
    free_port,
    write_acl,
    write_broker_config,
    write_password_file,
)
from firmware_sim.fleet import loopback_address

TOPIC = p.Topics.COMMAND_ALL
SCRIPT = Path(__file__).resolve()


def now_ns() -> int:
    return time.time_ns()  # wall clock: comparable across processes on one machine


def signed_play_command(signer: Ed25519Signer, broadcast_id: str | None = None) -> bytes:
    """A real signed county-wide emergency play command (its own broadcast id)."""
    body = p.PlayBody(
        broadcast_id=broadcast_id or secrets.token_hex(16),
        priority=p.Priority.EMERGENCY,
        level=1,
        category="flood",
        title="防汛紧急通知：请沿河村民立即转移",
        media=p.MediaRef(
            sha256=secrets.token_hex(32), url=secrets.token_hex(32), size=90_000, duration_ms=20_000
        ),
        start_at=p.now_ms() + 600,
        volume=100,
    )
    command = p.Command.new(body, p.Target(all=True), p.now_ms() + 3_600_000)
    return p.seal(command, signer)


def command_size() -> int:
    """Bytes of a real signed county-wide emergency play command."""
    return len(signed_play_command(Ed25519Signer.generate()))


def make_payload(seq: int, size: int) -> bytes:
    head = json.dumps({"seq": seq, "sent_ns": now_ns()}).encode()
    return head + b" " * max(0, size - len(head))


def parse_seq(payload: bytes) -> int:
    return int(json.loads(payload.split(b"}", 1)[0] + b"}")["seq"])


class Subscribers:
    """N subscriber connections in this event loop; records (seq -> receive times)."""

    def __init__(self, port: int, accounts: list[tuple[str, str]], first_index: int) -> None:
        self.port = port
        self.accounts = accounts
        self.first_index = first_index
        self.received: dict[int, list[int]] = {}
        self.conns: list[MqttConnection] = []

    def _handler(self) -> Callable[[str, bytes], None]:
        def on_message(_topic: str, payload: bytes) -> None:
            t = now_ns()
            self.received.setdefault(parse_seq(payload), []).append(t)

        return on_message

    async def start(self) -> None:
        for i, (user, password) in enumerate(self.accounts):
            conn = MqttConnection(
                client_id=user,
                broker=BrokerAddress("127.0.0.1", self.port, user, password),
                on_message=self._handler(),
                subscriptions=[(TOPIC, 1)],
                session_expiry_s=0,
                bind_address=loopback_address(self.first_index + i),
            )
            self.conns.append(conn)
        await asyncio.gather(*(c.start(timeout_s=60) for c in self.conns))

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.conns), return_exceptions=True)


async def _subscribe_main(
    port: int, accounts: list[tuple[str, str]], first_index: int
) -> dict[int, list[int]]:
    """Child process: connect, say `ready`, record until SIGTERM, return receipts."""
    subs = Subscribers(port, accounts, first_index)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await subs.start()
    print("ready", flush=True)
    await stop.wait()
    await subs.stop()
    return subs.received


def prepare_broker(
    work_dir: Path, port: int, controller_password: str, accounts: list[DeviceAccount]
) -> MosquittoProcess:
    work_dir.mkdir(parents=True, exist_ok=True)
    files = write_broker_config(work_dir / "broker", port)
    write_password_file(files.password_file, controller_password, accounts)
    write_acl(files.acl_file, accounts)
    return MosquittoProcess(files, port)


def write_private_json(path: Path, data: object) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _summary(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {"median": float("nan"), "max": float("nan"), "min": float("nan")}
    return {
        "median": statistics.median(values_ms),
        "max": max(values_ms),
        "min": min(values_ms),
    }


async def start_subscriber_processes(
    script: Path,
    argvs: list[list[str]],
    children: list[asyncio.subprocess.Process],
    timeout_s: float,
) -> None:
    """`python <script> subscribe <argv>` for each argv, appended to `children` as they
    start (so the caller's cleanup reaches them if one fails); returns once each has
    said `ready` (connected and subscribed)."""
    for argv in argvs:
        children.append(
            await asyncio.create_subprocess_exec(
                sys.executable, str(script), "subscribe", *argv, stdout=asyncio.subprocess.PIPE
            )
        )
    for child in children:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), timeout_s)
        if line.strip() != b"ready":
            raise RuntimeError(f"{script.name}: a subscriber process failed: {line!r}")


async def run_fanout(
    work_dir: Path,
    subscribers: int,
    messages: int = 20,
    *,
    subscriber_processes: int = 0,
    interval_s: float = 0.25,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Start a private broker, N subscribers and a publisher; publish `messages` QoS 1
    messages one at a time and time each to its first and last receipt."""
    port = free_port()
    controller_password = secrets.token_urlsafe(16)
    accounts = [
        DeviceAccount(f"fan-{i:05d}", "fan-village", "fan-township", secrets.token_urlsafe(12))
        for i in range(subscribers)
    ]
    pairs = [(a.device_id, a.password) for a in accounts]
    broker = await asyncio.to_thread(prepare_broker, work_dir, port, controller_password, accounts)
    size = command_size()
    children: list[asyncio.subprocess.Process] = []
    outs: list[Path] = []
    local: Subscribers | None = None
    publisher: MqttConnection | None = None
    await broker.start_async()
    try:
        t_conn = time.monotonic()
        if subscriber_processes > 0:
            argvs = []
            for k in range(subscriber_processes):
                share = list(range(k, subscribers, subscriber_processes))
                acc_file = work_dir / f"accounts-{k}.json"
                write_private_json(acc_file, [pairs[i] for i in share])
                out = work_dir / f"receipts-{k}.json"
                outs.append(out)
                # Each child spreads its own source addresses from a distinct block.
                first = k * -(-subscribers // subscriber_processes)
                argvs.append(
                    ["--port", str(port), "--accounts", str(acc_file), "--first-index",
                     str(first), "--out", str(out)]
                )  # fmt: skip
            await start_subscriber_processes(SCRIPT, argvs, children, timeout_s=120)
        else:
            local = Subscribers(port, pairs, 0)
            await local.start()
        connect_s = time.monotonic() - t_conn
        publisher = MqttConnection(
            client_id="fan-publisher",
            broker=BrokerAddress("127.0.0.1", port, CONTROLLER_USER, controller_password),
            on_message=lambda _t, _p: None,
            subscriptions=[],
            session_expiry_s=0,
            max_inflight=1000,
        )
        await publisher.start(timeout_s=30)

        sent: dict[int, int] = {}

        async def publish(seq: int) -> None:
            payload = make_payload(seq, size)
            sent[seq] = now_ns()
            assert publisher is not None
            await publisher.publish_confirmed(TOPIC, payload, timeout_s=10)

        # Subscriptions are made in the background after CONNACK: probe (negative
        # sequence numbers) until every subscriber gets messages, then warm up.
        if local is not None:
            seq = -1
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                await publish(seq)
                await asyncio.sleep(interval_s)
                if len(local.received.get(seq, [])) == subscribers:
                    break
                seq -= 1
            else:
                raise RuntimeError("fan-out: not every subscriber receives after 60 s")
        else:
            # Children connected and subscribed before `ready`; a few probes settle them.
            for seq in range(-1, -4, -1):
                await publish(seq)
                await asyncio.sleep(interval_s)
        for seq in range(-100, -103, -1):
            await publish(seq)
            await asyncio.sleep(interval_s)
        for seq in range(messages):
            await publish(seq)
            await asyncio.sleep(interval_s)
        await asyncio.sleep(1.0)

        received: dict[int, list[int]] = {}
        if local is not None:
            received = local.received
        else:
            for child in children:
                child.send_signal(signal.SIGTERM)
            for child in children:
                await asyncio.wait_for(child.wait(), 60)
            for out in outs:
                for k, v in (await asyncio.to_thread(_read_json, out)).items():
                    received.setdefault(int(k), []).extend(v)
    finally:
        if publisher is not None:
            await publisher.stop()
        if local is not None:
            await local.stop()
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
        broker.stop()

    last_ms: list[float] = []
    first_ms: list[float] = []
    median_ms: list[float] = []
    missing = 0
    for seq in range(messages):
        times = received.get(seq, [])
        missing += subscribers - len(times)
        if not times:
            continue
        lat = sorted((t - sent[seq]) / 1e6 for t in times)
        first_ms.append(lat[0])
        median_ms.append(statistics.median(lat))
        last_ms.append(lat[-1])
    result: dict[str, Any] = {
        "subscribers": subscribers,
        "subscriber_processes": subscriber_processes,
        "messages": messages,
        "payload_bytes": size,
        "qos": 1,
        "connect_s": round(connect_s, 2),
        "missing_receipts": missing,
        "last_ms": _summary(last_ms),
        "first_ms": _summary(first_ms),
        "median_receipt_ms": _summary(median_ms),
        "raw_last_ms": [round(x, 2) for x in last_ms],
    }
    where = f"{subscriber_processes} processes" if subscriber_processes else "in-process"
    log(
        f"fan-out {subscribers} subscribers ({where}): last receipt median "
        f"{result['last_ms']['median']:.1f} ms, max {result['last_ms']['max']:.1f} ms"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subscribe", help="(internal) a subscriber process for run_fanout")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--accounts", required=True)
    s.add_argument("--first-index", type=int, default=0)
    s.add_argument("--out", required=True)
    r = sub.add_parser("run", help="the fan-out baseline alone, in a temporary directory")
    r.add_argument("--subscribers", type=int, default=182)
    r.add_argument("--messages", type=int, default=20)
    r.add_argument("--processes", type=int, default=0, help="subscriber processes (0: here)")
    args = parser.parse_args()
    if args.cmd == "subscribe":
        accounts = [(str(a[0]), str(a[1])) for a in _read_json(Path(args.accounts))]
        received = asyncio.run(_subscribe_main(args.port, accounts, args.first_index))
        Path(args.out).write_text(json.dumps({str(k): v for k, v in received.items()}))
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dalaba-fanout-") as tmp:
        result = asyncio.run(
            run_fanout(
                Path(tmp),
                args.subscribers,
                args.messages,
                subscriber_processes=args.processes,
                log=print,
            )
        )
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
