"""The floor: one signed command to N subscribers through a bare asyncio MQTT 5 client.

bench/fanout.py measures the fan-out through the project's MQTT adapter
(`dalaba.mqtt.MqttConnection`, paho underneath). This one strips the client down to
what a subscriber cannot do without, so that what is left is the broker and the kernel:
a hand-rolled MQTT 5 CONNECT / SUBSCRIBE / PUBACK over an `asyncio.Protocol`, one socket
per subscriber (source addresses spread over 127.0.x.y like the simulated fleet), the
subscribers split over `processes` child processes, one publisher (the controller's
account) that publishes QoS 1 and waits for the broker's PUBACK before the next message.
The broker is a private Mosquitto with the product's configuration, password file and
ACL, on the county-wide command topic.

Each message is a real signed play command (`protocol.seal`, a fresh Ed25519 key), each
with its own broadcast id. Two figures, messages alternating between them:

- **bare**: publish -> the last subscriber has the bytes (its receive timestamp);
- **verified**: publish -> the last subscriber holds the *verified* command, each child
  process opening and verifying the envelope (`protocol.open_envelope`, the terminal's
  own check) once, when its first subscriber gets it; its other subscribers hold the
  same verified command from then on. That is the floor for "every terminal holds the
  verified command" in bench_spine.py.

Children know the payloads in advance (a file the parent writes) only to tell the
messages apart by a dictionary lookup of the bytes; the verification itself is real.

Run alone: .venv/bin/python bench/bare_fanout.py run --subscribers 1000 --processes 2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import secrets
import signal
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import (
    prepare_broker,
    signed_play_command,
    start_subscriber_processes,
    write_private_json,
)

from dalaba import protocol as p
from dalaba.signing import Ed25519Signer, verifier_set_from_pem
from dalaba_ops.broker import CONTROLLER_USER, DeviceAccount, free_port
from firmware_sim.fleet import loopback_address

TOPIC = p.Topics.COMMAND_ALL
SCRIPT = Path(__file__).resolve()
KEEPALIVE_S = 60
CONNECTS_AT_ONCE = 200  # a burst bigger than the listen backlog only costs SYN retries

# MQTT 5 packet types (high nibble of the fixed header).
CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP = 2, 3, 4, 9, 13


# ---------------------------------------------------------------------- the codec


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def connect_packet(client_id: str, username: str, password: str) -> bytes:
    # Protocol "MQTT" level 5; flags: username, password, clean start; no properties.
    head = _str("MQTT") + bytes([5, 0xC2]) + struct.pack("!H", KEEPALIVE_S) + b"\x00"
    return _packet(0x10, head + _str(client_id) + _str(username) + _str(password))


def subscribe_packet(packet_id: int, topic: str, qos: int) -> bytes:
    return _packet(0x82, struct.pack("!H", packet_id) + b"\x00" + _str(topic) + bytes([qos]))


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    # QoS 1, no properties.
    return _packet(0x32, _str(topic) + struct.pack("!H", packet_id) + b"\x00" + payload)


def puback_packet(packet_id: int) -> bytes:
    # Reason "success" and no properties may be left out (MQTT 5, 3.4.2.1).
    return b"\x40\x02" + struct.pack("!H", packet_id)


PINGREQ = b"\xc0\x00"


def split_packets(buf: bytearray) -> list[tuple[int, int, bytes]]:
    """Take every whole packet off the front of `buf`: (type, flags, body)."""
    out = []
    while len(buf) >= 2:
        length, mult, i = 0, 1, 1
        while True:
            if i >= len(buf):
                return out
            byte = buf[i]
            length += (byte & 0x7F) * mult
            mult *= 128
            i += 1
            if not byte & 0x80:
                break
            if i > 4:
                raise ValueError("malformed remaining length")
        if len(buf) < i + length:
            return out
        out.append((buf[0] >> 4, buf[0] & 0x0F, bytes(buf[i : i + length])))
        del buf[: i + length]
    return out


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    value, mult = 0, 1
    while True:
        byte = data[i]
        i += 1
        value += (byte & 0x7F) * mult
        mult *= 128
        if not byte & 0x80:
            return value, i


def parse_publish(flags: int, body: bytes) -> tuple[int | None, bytes]:
    """(packet id or None for QoS 0, payload) of a PUBLISH body."""
    (topic_len,) = struct.unpack_from("!H", body)
    i = 2 + topic_len
    packet_id = None
    if flags & 0x06:
        (packet_id,) = struct.unpack_from("!H", body, i)
        i += 2
    props, i = read_varint(body, i)
    return packet_id, body[i + props :]


# ---------------------------------------------------------------------- one connection


class BareClient(asyncio.Protocol):
    """One MQTT 5 session: CONNECT, then SUBSCRIBE or PUBLISH; acks what it receives."""

    def __init__(self, on_message: Callable[[bytes], None] | None = None) -> None:
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.suback: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pubacks: dict[int, asyncio.Future[None]] = {}
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.connack, self.suback, self.closed):
            if not fut.done():
                fut.set_result(-1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for kind, flags, body in split_packets(self.buf):
            if kind == PUBLISH:
                packet_id, payload = parse_publish(flags, body)
                if self.on_message is not None:
                    self.on_message(payload)
                if packet_id is not None and self.transport is not None:
                    self.transport.write(puback_packet(packet_id))
            elif kind == PUBACK:
                fut = self.pubacks.pop(struct.unpack_from("!H", body)[0], None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif kind == CONNACK and not self.connack.done():
                self.connack.set_result(body[1])
            elif kind == SUBACK and not self.suback.done():
                self.suback.set_result(body[3] if len(body) > 3 else -1)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.write(b"\xe0\x00")  # DISCONNECT, normal
            self.transport.close()


async def open_client(
    port: int,
    user: str,
    password: str,
    *,
    on_message: Callable[[bytes], None] | None = None,
    bind: str | None = None,
    subscribe: bool = False,
) -> BareClient:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: BareClient(on_message),
        "127.0.0.1",
        port,
        local_addr=(bind, 0) if bind else None,
    )
    client.send(connect_packet(user, user, password))
    code = await asyncio.wait_for(client.connack, 30)
    if code != 0:
        raise RuntimeError(f"{user}: CONNACK reason {code}")
    if subscribe:
        client.send(subscribe_packet(1, TOPIC, 1))
        granted = await asyncio.wait_for(client.suback, 30)
        if granted != 1:
            raise RuntimeError(f"{user}: SUBACK reason {granted} (QoS 1 wanted)")
    return client


async def keep_alive(clients: list[BareClient]) -> None:
    """PINGREQ on every connection well inside the keep-alive."""
    while True:
        await asyncio.sleep(KEEPALIVE_S / 3)
        for c in clients:
            if c.transport is not None and not c.transport.is_closing():
                c.transport.write(PINGREQ)


# ---------------------------------------------------------------------- a child process


async def subscribe_main(
    port: int, accounts: list[tuple[str, str]], first_index: int, spec: dict[str, Any]
) -> dict[str, Any]:
    """Connect and subscribe every account, say `ready`, record until SIGTERM."""
    verifiers = verifier_set_from_pem([spec["trust_pem"]])
    table = {base64.b64decode(m["payload"]): (m["seq"], m["verify"]) for m in spec["messages"]}
    times: dict[int, list[int]] = {}
    verify_ms: list[float] = []
    opened: set[int] = set()
    errors: list[str] = []

    def on_message(payload: bytes) -> None:
        t = time.time_ns()
        known = table.get(payload)
        if known is None:
            errors.append(f"unknown payload of {len(payload)} bytes")
            return
        seq, verify = known
        if verify and seq not in opened:
            # The first copy in this process: open and verify, as a terminal does.
            try:
                p.open_envelope(payload, verifiers, p.now_ms())
            except (p.ProtocolError, p.CommandRejected) as exc:
                errors.append(f"seq {seq}: {exc}")
                return
            opened.add(seq)
            done = time.time_ns()
            verify_ms.append((done - t) / 1e6)
            t = done
        times.setdefault(seq, []).append(t)

    sem = asyncio.Semaphore(CONNECTS_AT_ONCE)

    async def one(i: int, user: str, password: str) -> BareClient:
        async with sem:
            return await open_client(
                port,
                user,
                password,
                on_message=on_message,
                bind=loopback_address(first_index + i),
                subscribe=True,
            )

    clients = list(await asyncio.gather(*(one(i, u, pw) for i, (u, pw) in enumerate(accounts))))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pinger = asyncio.create_task(keep_alive(clients))
    print("ready", flush=True)
    await stop.wait()
    pinger.cancel()
    lost = sum(1 for c in clients if c.closed.done())
    for c in clients:
        c.close()
    return {
        "times": {str(k): v for k, v in times.items()},
        "verify_ms": verify_ms,
        "errors": errors[:20],
        "connections_lost": lost,
    }


# ---------------------------------------------------------------------- the parent


def signed_command(signer: Ed25519Signer, seq: int) -> bytes:
    return signed_play_command(signer, f"bare-fanout-{seq:+05d}-{secrets.token_hex(8)}")


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def run_bare_fanout(
    work_dir: Path,
    subscribers: int,
    messages: int = 10,
    *,
    processes: int = 2,
    interval_s: float = 0.5,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """`messages` of each kind (bare, verified), alternating; per message the time from
    the publish to the last subscriber's receipt (or verified copy)."""
    processes = max(1, min(processes, subscribers))
    port = free_port()
    controller_password = secrets.token_urlsafe(16)
    accounts = [
        DeviceAccount(f"bare-{i:05d}", "bare-village", "bare-township", secrets.token_urlsafe(12))
        for i in range(subscribers)
    ]
    broker = await asyncio.to_thread(prepare_broker, work_dir, port, controller_password, accounts)
    signer = Ed25519Signer.generate()
    warmups = 3
    plan = [(-1 - i, i % 2 == 1) for i in range(warmups * 2)]
    plan += [(i, i % 2 == 1) for i in range(messages * 2)]
    payloads = {seq: signed_command(signer, seq) for seq, _ in plan}
    payload_file = work_dir / "payloads.json"
    write_private_json(
        payload_file,
        {
            "trust_pem": signer.trust_pem().decode(),
            "messages": [
                {"seq": seq, "verify": verify, "payload": base64.b64encode(payloads[seq]).decode()}
                for seq, verify in plan
            ],
        },
    )
    children: list[asyncio.subprocess.Process] = []
    outs: list[Path] = []
    publisher: BareClient | None = None
    sent: dict[int, int] = {}
    per_child = -(-subscribers // processes)
    await broker.start_async()
    try:
        t_conn = time.monotonic()
        argvs = []
        for k in range(processes):
            share = accounts[k * per_child : (k + 1) * per_child]
            acc_file = work_dir / f"accounts-{k}.json"
            write_private_json(acc_file, [(a.device_id, a.password) for a in share])
            out = work_dir / f"receipts-{k}.json"
            outs.append(out)
            # Source addresses from a block of their own: clear of the fleet's.
            first = 30_000 + k * per_child
            argvs.append(
                ["--port", str(port), "--accounts", str(acc_file), "--first-index", str(first),
                 "--payloads", str(payload_file), "--out", str(out)]
            )  # fmt: skip
        await start_subscriber_processes(SCRIPT, argvs, children, timeout_s=300)
        connect_s = time.monotonic() - t_conn
        publisher = await open_client(port, CONTROLLER_USER, controller_password)
        for packet_id, (seq, _verify) in enumerate(plan, start=1):
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            publisher.pubacks[packet_id] = fut
            sent[seq] = time.time_ns()
            publisher.send(publish_packet(TOPIC, payloads[seq], packet_id))
            await asyncio.wait_for(fut, 30)
            await asyncio.sleep(interval_s)
        await asyncio.sleep(1.0)
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            await asyncio.wait_for(child.wait(), 60)
    finally:
        if publisher is not None:
            publisher.close()
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
        broker.stop()

    received: dict[int, list[int]] = {}
    verify_ms: list[float] = []
    errors: list[str] = []
    lost = 0
    for out in outs:
        data = json.loads(out.read_text())
        for k, v in data["times"].items():
            received.setdefault(int(k), []).extend(v)
        verify_ms += data["verify_ms"]
        errors += data["errors"]
        lost += data["connections_lost"]
    result: dict[str, Any] = {
        "subscribers": subscribers,
        "subscriber_processes": processes,
        "messages_each": messages,
        "payload_bytes": len(payloads[0]),
        "qos": 1,
        "connect_s": round(connect_s, 2),
        "connections_lost": lost,
        "errors": errors[:10],
        "verify_once_ms": _summary(verify_ms),
    }
    for kind, want in (("bare", False), ("verified", True)):
        last, median, missing = [], [], 0
        for seq, verify in plan:
            if seq < 0 or verify is not want:
                continue
            times = received.get(seq, [])
            missing += subscribers - len(times)
            if times:
                lat = sorted((t - sent[seq]) / 1e6 for t in times)
                last.append(lat[-1])
                median.append(statistics.median(lat))
        result[kind] = {
            "last_ms": _summary(last),
            "median_receipt_ms": _summary(median),
            "missing": missing,
            "raw_last_ms": [round(x, 1) for x in last],
        }
    log(
        f"bare fan-out {subscribers} subscribers ({processes} processes): last receipt "
        f"median {_fmt(result['bare']['last_ms']['median'])} ms, verified "
        f"{_fmt(result['verified']['last_ms']['median'])} ms"
    )
    return result


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subscribe", help="(internal) a subscriber process for run_bare_fanout")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--accounts", required=True)
    s.add_argument("--first-index", type=int, default=0)
    s.add_argument("--payloads", required=True)
    s.add_argument("--out", required=True)
    r = sub.add_parser("run", help="the bare fan-out alone, in a temporary directory")
    r.add_argument("--subscribers", type=int, default=182)
    r.add_argument("--messages", type=int, default=10, help="of each kind")
    r.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    if args.cmd == "subscribe":
        accounts = [(str(a[0]), str(a[1])) for a in json.loads(Path(args.accounts).read_text())]
        result = asyncio.run(
            subscribe_main(
                args.port, accounts, args.first_index, json.loads(Path(args.payloads).read_text())
            )
        )
        write_private_json(Path(args.out), result)
        return
    with tempfile.TemporaryDirectory(prefix="dalaba-bare-fanout-") as tmp:
        result = asyncio.run(
            run_bare_fanout(
                Path(tmp), args.subscribers, args.messages, processes=args.processes, log=print
            )
        )
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
