"""A lean asyncio MQTT 5 client for the simulated fleet, with `MqttConnection`'s interface.

Why: a simulator process holds thousands of terminals, one socket each, and with paho
under `dalaba.mqtt` the client library's per-message and housekeeping work (a Python
object graph per message, a one-second `loop_misc` task per client) cost more than the
agent it carries. This client speaks exactly the part of MQTT 5 a terminal uses, on an
`asyncio.Protocol` (no thread, no per-client timer task):

- CONNECT with username/password, clean start false and a session expiry, a last will;
- SUBSCRIBE/UNSUBSCRIBE, renewed on every connect (as `MqttConnection` does);
- PUBLISH in, QoS 0/1 (QoS 2 answered too), acknowledged after the handler returned, or
  by the handler's `ack` with manual acknowledgement (never on a newer connection);
- PUBLISH out, QoS 0/1, with the message expiry property; QoS 1 messages are kept until
  their PUBACK, sent again (DUP) after a reconnect, and never more in flight than the
  broker's Receive Maximum allows;
- keepalive from one timer per connection; reconnect with the same jittered backoff
  and port probe as `MqttConnection` (inherited); TLS through asyncio's SSL transport,
  verified the same way (`TlsSettings.context`).

The controller keeps paho (`dalaba.mqtt.MqttConnection`): it has few connections and a
library in wide use is worth more there than a few microseconds a message.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import struct
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dalaba.mqtt import (
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    MqttConnection,
    WillMessage,
)

# The same logger as dalaba.mqtt: whichever client a terminal runs, its connection
# events ("<client id>: disconnected: ...", refusals, TLS failures) read alike and
# one logging setting governs both.
log = logging.getLogger("dalaba.mqtt")

# Packet types (the high nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

# Property identifiers this client writes or reads by name.
PROP_MESSAGE_EXPIRY = 0x02
PROP_SESSION_EXPIRY = 0x11
PROP_SERVER_KEEPALIVE = 0x13
PROP_REASON_STRING = 0x1F
PROP_RECEIVE_MAXIMUM = 0x21
PROP_TOPIC_ALIAS = 0x23
PROP_USER_PROPERTY = 0x26

# The wire type of every MQTT 5 property (spec 2.2.2.2), so an unknown-to-us but valid
# property is skipped correctly and an invalid identifier is refused by name.
_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
PROPERTY_TYPES: dict[int, int] = {
    0x01: _BYTE, 0x02: _U32, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VARINT,
    0x11: _U32, 0x12: _STR, 0x13: _U16, 0x15: _STR, 0x16: _BIN, 0x17: _BYTE,
    0x18: _U32, 0x19: _BYTE, 0x1A: _STR, 0x1C: _STR, 0x1F: _STR, 0x21: _U16,
    0x22: _U16, 0x23: _U16, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip
# Properties that may appear more than once; decoded as lists.
_REPEATABLE = frozenset({0x0B, PROP_USER_PROPERTY})

# A packet larger than this from the broker is refused (the connection is dropped): no
# terminal message comes near it, and an endless length must not exhaust memory.
MAX_PACKET_BYTES = 16 * 1024 * 1024
CONNECT_TIMEOUT_S = 10.0
# Connection attempts in progress at once in one event loop (TCP connect to CONNACK).
# A simulator's thousands of terminals opening together overflowed the broker's listen
# backlog: SYNs dropped and retried by the kernel after 1, 3, 7 s, past the connect
# timeout, so they never converged (measured at 10,000 on a loaded machine: 3,800
# connections stuck in SYN-SENT). paho's blocking connect serialised them by accident.
MAX_CONCURRENT_CONNECTS = 32
_connect_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _connect_slot(loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
    slot = _connect_slots.get(loop)
    if slot is None:
        slot = _connect_slots[loop] = asyncio.Semaphore(MAX_CONCURRENT_CONNECTS)
    return slot


MAX_PACKET_ID = 65535

# int, str, bytes, a (key, value) pair, or a list of those for repeatable properties.
PropertyValue = Any


class MqttProtocolError(ValueError):
    """A packet that breaks MQTT 5; the message names the field."""


# ---------------------------------------------------------------------- codec


def encode_varint(value: int) -> bytes:
    if not 0 <= value <= 268_435_455:
        raise MqttProtocolError(f"variable byte integer: {value} out of range")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(
    data: bytes | bytearray, pos: int, what: str = "variable byte integer"
) -> tuple[int, int]:
    """(value, position after it). Raises IndexError when `data` ends inside it (the
    frame reader waits for more), MqttProtocolError when it runs past four bytes."""
    value = shift = 0
    for i in range(4):
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise MqttProtocolError(f"{what}: more than four bytes")


def _need(data: bytes, end: int, what: str) -> None:
    if end > len(data):
        raise MqttProtocolError(f"{what}: packet ends early")


def _u16(data: bytes, pos: int, what: str) -> tuple[int, int]:
    _need(data, pos + 2, what)
    return (data[pos] << 8) | data[pos + 1], pos + 2


def _binary(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    size, pos = _u16(data, pos, what)
    _need(data, pos + size, what)
    return bytes(data[pos : pos + size]), pos + size


def _string(data: bytes, pos: int, what: str) -> tuple[str, int]:
    raw, pos = _binary(data, pos, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MqttProtocolError(f"{what}: not UTF-8") from exc
    if "\x00" in text:
        raise MqttProtocolError(f"{what}: contains U+0000")
    return text, pos


def _enc_binary(raw: bytes) -> bytes:
    if len(raw) > 65535:
        raise MqttProtocolError("binary field longer than 65535 bytes")
    return struct.pack("!H", len(raw)) + raw


def _enc_string(text: str) -> bytes:
    return _enc_binary(text.encode("utf-8"))


def encode_properties(props: dict[int, PropertyValue] | None) -> bytes:
    body = bytearray()
    for ident, value in (props or {}).items():
        kind = PROPERTY_TYPES.get(ident)
        if kind is None:
            raise MqttProtocolError(f"property 0x{ident:02x}: unknown")
        values: list[Any] = value if ident in _REPEATABLE and isinstance(value, list) else [value]
        for v in values:
            body += encode_varint(ident)
            if kind == _BYTE:
                body.append(int(v))
            elif kind == _U16:
                body += struct.pack("!H", int(v))
            elif kind == _U32:
                body += struct.pack("!I", int(v))
            elif kind == _VARINT:
                body += encode_varint(int(v))
            elif kind == _STR:
                body += _enc_string(str(v))
            elif kind == _BIN:
                body += _enc_binary(bytes(v))
            else:
                key, val = v
                body += _enc_string(key) + _enc_string(val)
    return encode_varint(len(body)) + bytes(body)


def decode_properties(data: bytes, pos: int) -> tuple[dict[int, PropertyValue], int]:
    try:
        length, pos = decode_varint(data, pos, "property length")
    except IndexError as exc:
        raise MqttProtocolError("property length: packet ends early") from exc
    end = pos + length
    _need(data, end, "properties")
    props: dict[int, PropertyValue] = {}
    while pos < end:
        try:
            ident, pos = decode_varint(data, pos, "property identifier")
        except IndexError as exc:
            raise MqttProtocolError("property identifier: packet ends early") from exc
        kind = PROPERTY_TYPES.get(ident)
        what = f"property 0x{ident:02x}"
        value: PropertyValue
        if kind is None:
            raise MqttProtocolError(f"{what}: unknown")
        if kind == _BYTE:
            _need(data, pos + 1, what)
            value, pos = data[pos], pos + 1
        elif kind == _U16:
            value, pos = _u16(data, pos, what)
        elif kind == _U32:
            _need(data, pos + 4, what)
            value, pos = struct.unpack_from("!I", data, pos)[0], pos + 4
        elif kind == _VARINT:
            try:
                value, pos = decode_varint(data, pos, what)
            except IndexError as exc:
                raise MqttProtocolError(f"{what}: packet ends early") from exc
        elif kind == _STR:
            value, pos = _string(data, pos, what)
        elif kind == _BIN:
            value, pos = _binary(data, pos, what)
        else:
            key, pos = _string(data, pos, what)
            val, pos = _string(data, pos, what)
            value = (key, val)
        if pos > end:
            raise MqttProtocolError(f"{what}: runs past the property length")
        if ident in _REPEATABLE:
            listed = props.setdefault(ident, [])
            assert isinstance(listed, list)
            listed.append(value)
        elif ident in props:
            raise MqttProtocolError(f"{what}: given twice")
        else:
            props[ident] = value
    return props, end


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + encode_varint(len(body)) + body


def encode_connect(
    client_id: str,
    *,
    keepalive_s: int,
    session_expiry_s: int,
    clean_start: bool = False,
    username: str | None = None,
    password: str | None = None,
    will: WillMessage | None = None,
) -> bytes:
    flags = 0x02 if clean_start else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80
    body = bytearray(_enc_string("MQTT"))
    body += bytes([5, flags]) + struct.pack("!H", keepalive_s)
    body += encode_properties({PROP_SESSION_EXPIRY: session_expiry_s})
    body += _enc_string(client_id)
    if will is not None:
        body += encode_properties(None) + _enc_string(will.topic) + _enc_binary(will.payload)
    if username is not None:
        body += _enc_string(username)
    if password is not None:
        body += _enc_binary(password.encode("utf-8"))
    return _packet(CONNECT << 4, bytes(body))


def encode_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    retain: bool = False,
    packet_id: int = 0,
    expiry_s: int | None = None,
    dup: bool = False,
) -> bytes:
    if qos not in (0, 1, 2):
        raise MqttProtocolError(f"qos: {qos} (0, 1 or 2)")
    if not topic or "+" in topic or "#" in topic:
        raise MqttProtocolError(f"topic: {topic!r} is not a topic name")
    first = (PUBLISH << 4) | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    head = _enc_string(topic)
    if qos:
        if not 0 < packet_id <= MAX_PACKET_ID:
            raise MqttProtocolError(f"packet id: {packet_id} out of range")
        head += struct.pack("!H", packet_id)
    props = {PROP_MESSAGE_EXPIRY: max(1, int(expiry_s))} if expiry_s is not None else None
    return _packet(first, head + encode_properties(props) + payload)


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int
    properties: dict[int, PropertyValue] = field(default_factory=dict)


def decode_publish(first_byte: int, body: bytes) -> Publish:
    qos = (first_byte >> 1) & 0x03
    if qos == 3:
        raise MqttProtocolError("publish qos: 3 is not a QoS")
    topic, pos = _string(body, 0, "publish topic")
    packet_id = 0
    if qos:
        packet_id, pos = _u16(body, pos, "publish packet id")
        if packet_id == 0:
            raise MqttProtocolError("publish packet id: 0")
    props, pos = decode_properties(body, pos)
    if not topic and PROP_TOPIC_ALIAS not in props:
        raise MqttProtocolError("publish topic: empty without a topic alias")
    return Publish(
        topic, bytes(body[pos:]), qos, bool(first_byte & 0x01), bool(first_byte & 0x08),
        packet_id, props,
    )  # fmt: skip


def encode_ack(packet_type: int, packet_id: int, reason: int = 0) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP. Reason 0 is left out (the short form)."""
    first = (packet_type << 4) | (0x02 if packet_type == PUBREL else 0)
    body = struct.pack("!H", packet_id) + (bytes([reason]) if reason else b"")
    return _packet(first, body)


def decode_ack(body: bytes, what: str = "ack") -> tuple[int, int]:
    """(packet id, reason code) of a PUBACK/PUBREC/PUBREL/PUBCOMP."""
    packet_id, pos = _u16(body, 0, f"{what} packet id")
    reason = body[pos] if len(body) > pos else 0
    if len(body) > pos + 1:
        decode_properties(body, pos + 1)
    return packet_id, reason


def encode_subscribe(packet_id: int, filters: Sequence[tuple[str, int]]) -> bytes:
    body = bytearray(struct.pack("!H", packet_id)) + encode_properties(None)
    for topic, qos in filters:
        body += _enc_string(topic) + bytes([qos & 0x03])
    return _packet((SUBSCRIBE << 4) | 0x02, bytes(body))


def encode_unsubscribe(packet_id: int, filters: Sequence[str]) -> bytes:
    body = bytearray(struct.pack("!H", packet_id)) + encode_properties(None)
    for topic in filters:
        body += _enc_string(topic)
    return _packet((UNSUBSCRIBE << 4) | 0x02, bytes(body))


def decode_suback(body: bytes) -> tuple[int, list[int]]:
    """(packet id, one reason code per filter) of a SUBACK or UNSUBACK."""
    packet_id, pos = _u16(body, 0, "suback packet id")
    _props, pos = decode_properties(body, pos)
    return packet_id, list(body[pos:])


def decode_connack(body: bytes) -> tuple[bool, int, dict[int, PropertyValue]]:
    """(session present, reason code, properties)."""
    _need(body, 2, "connack")
    if body[0] & 0xFE:
        raise MqttProtocolError("connack flags: reserved bits set")
    props, _ = decode_properties(body, 2)
    return bool(body[0] & 0x01), body[1], props


PINGREQ_PACKET = bytes([PINGREQ << 4, 0])
DISCONNECT_PACKET = bytes([DISCONNECT << 4, 0])  # normal disconnection: no last will


class PacketReader:
    """Splits a byte stream into (first byte, body) packets."""

    def __init__(self, max_bytes: int = MAX_PACKET_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_bytes

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        packets: list[tuple[int, bytes]] = []
        pos = 0
        while len(buf) - pos >= 2:
            try:
                length, start = decode_varint(buf, pos + 1, "remaining length")
            except IndexError:
                break  # the length itself is not complete yet
            if length > self._max:
                raise MqttProtocolError(f"remaining length: {length} bytes is over the limit")
            end = start + length
            if end > len(buf):
                break
            packets.append((buf[pos], bytes(buf[start:end])))
            pos = end
        if pos:
            del buf[:pos]
        return packets


# ---------------------------------------------------------------------- connection


class _Protocol(asyncio.Protocol):
    __slots__ = ("owner", "transport")

    def __init__(self, owner: LeanMqttConnection) -> None:
        self.owner: LeanMqttConnection | None = owner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.owner is not None:
            self.owner._data_received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        owner, self.owner = self.owner, None
        if owner is not None:
            owner._transport_lost(self)


class LeanMqttConnection(MqttConnection):
    """`MqttConnection`'s interface and semantics without paho (see the module doc).

    Inherits the reconnect backoff helpers, `publish_confirmed`, `connected` and
    `wait_connected`; everything that touched paho is replaced here. `on_published`, when
    given, is called with the packet id of every QoS 1 message the broker acknowledged.
    """

    def __init__(self, *, on_published: Callable[[int], None] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # MqttConnection's arguments, with their checks
        self._on_published_cb = on_published
        self._proto: _Protocol | None = None
        self._reader = PacketReader()
        self._connack: asyncio.Future[None] | None = None
        self._next_id = 0
        # QoS 1 publishes not yet acknowledged, in order: packet id -> encoded packet.
        self._unacked: dict[int, bytes] = {}
        self._waiting: deque[int] = deque()  # unacked, not on the wire of this connection
        self._on_wire: set[int] = set()
        self._window = self._max_inflight
        self._inbound_qos2: set[int] = set()
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._keepalive_interval = float(self._keepalive_s)
        self._disconnect_reason = "connection lost"
        self._ping_outstanding = False
        self._received_since_ping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self, timeout_s: float | None = 10.0) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        if self._broker.tls is not None:
            # Read the files now: a wrong path stops the caller here, not in every retry.
            self._ssl_context: ssl.SSLContext | None = self._broker.tls.context()
        else:
            self._ssl_context = None
        self._reconnect_task = asyncio.create_task(self._connect_loop(first=True))
        if timeout_s is not None:
            await asyncio.wait_for(self._connected.wait(), timeout_s)

    async def stop(self) -> None:
        await self._stop_reconnecting()
        proto = self._proto
        if proto is not None and proto.transport is not None and self._connected.is_set():
            proto.transport.write(DISCONNECT_PACKET)
        # close() sends what is buffered (the DISCONNECT) before closing the socket.
        self._close_transport(abort=False)
        self._connection_lost()
        for fut in self._pending_acks.values():
            if not fut.done():
                fut.cancel()
        self._pending_acks.clear()

    def drop(self) -> None:
        self._close_transport(abort=True)
        self._connection_lost()

    @property
    def tls_version(self) -> str | None:
        proto = self._proto
        if proto is None or proto.transport is None or not self._connected.is_set():
            return None
        ssl_object = proto.transport.get_extra_info("ssl_object")
        return ssl_object.version() if ssl_object is not None else None

    # ------------------------------------------------------------------ publishing

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expiry_s: int | None = None,
    ) -> int:
        assert self._loop is not None, "start() first"
        if qos == 0:
            if self._connected.is_set():
                self._write(encode_publish(topic, payload, retain=retain, expiry_s=expiry_s))
            return 0
        if qos != 1:
            raise ValueError(f"qos: {qos} (this client publishes QoS 0 or 1)")
        packet_id = self._new_packet_id()
        self._unacked[packet_id] = encode_publish(
            topic, payload, qos=1, retain=retain, packet_id=packet_id, expiry_s=expiry_s
        )
        self._waiting.append(packet_id)
        if self._connected.is_set():
            self._send_waiting()
        return packet_id

    def subscribe(self, topic: str, qos: int) -> None:
        if (topic, qos) not in self._subscriptions:
            self._subscriptions.append((topic, qos))
        if self._connected.is_set():
            self._write(encode_subscribe(self._new_packet_id(), [(topic, qos)]))

    def unsubscribe(self, topic: str) -> None:
        self._subscriptions[:] = [s for s in self._subscriptions if s[0] != topic]
        if self._connected.is_set():
            self._write(encode_unsubscribe(self._new_packet_id(), [topic]))

    def _new_packet_id(self) -> int:
        while True:
            self._next_id = self._next_id % MAX_PACKET_ID + 1
            if self._next_id not in self._unacked:
                return self._next_id

    def _write(self, data: bytes) -> None:
        proto = self._proto
        if proto is not None and proto.transport is not None:
            proto.transport.write(data)

    def _send_waiting(self) -> None:
        while self._waiting and len(self._on_wire) < self._window:
            packet_id = self._waiting.popleft()
            packet = self._unacked.get(packet_id)
            if packet is None:
                continue
            self._on_wire.add(packet_id)
            self._write(packet)
            # A later send of the same packet (after a reconnect) is a duplicate.
            self._unacked[packet_id] = bytes([packet[0] | 0x08]) + packet[1:]

    # ------------------------------------------------------------------ connecting

    async def _connect_loop(self, first: bool = False) -> None:
        delay = 0.0 if first else RECONNECT_MIN_S
        while not self._stopping:
            if not self._may_connect():
                await asyncio.sleep(0.5)
                delay = 0.0
                continue
            if delay:
                await self._wait_or_port_answers(delay * (0.5 + random.random()))
            delay = min(max(delay * 2, RECONNECT_MIN_S), RECONNECT_MAX_S)
            try:
                assert self._loop is not None
                async with _connect_slot(self._loop):
                    await asyncio.wait_for(self._connect_once_async(), CONNECT_TIMEOUT_S)
            except ssl.SSLError as exc:
                self._log_tls_failure(exc)
            except (OSError, TimeoutError, MqttProtocolError) as exc:
                log.debug("%s: connect failed: %s", self.client_id, exc)
            if self._connected.is_set():
                return
            self._close_transport(abort=True)

    async def _connect_once_async(self) -> None:
        assert self._loop is not None
        broker = self._broker
        self._close_transport(abort=True)
        self._reader = PacketReader()
        self._connack = self._loop.create_future()
        _transport, proto = await self._loop.create_connection(
            lambda: _Protocol(self),
            broker.host,
            broker.port,
            local_addr=(self._bind_address, 0) if self._bind_address else None,
            ssl=self._ssl_context,
            server_hostname=broker.host if self._ssl_context is not None else None,
            ssl_handshake_timeout=CONNECT_TIMEOUT_S if self._ssl_context is not None else None,
        )
        self._proto = proto
        proto.transport.write(  # type: ignore[union-attr]
            encode_connect(
                self.client_id,
                keepalive_s=self._keepalive_s,
                session_expiry_s=self._session_expiry_s,
                username=broker.username,
                password=broker.password,
                will=self._will,
            )
        )
        await self._connack

    def _close_transport(self, *, abort: bool) -> None:
        self._cancel_keepalive()
        proto, self._proto = self._proto, None
        if proto is None:
            return
        proto.owner = None  # its connection_lost must not touch a newer connection
        if proto.transport is not None:
            if abort:
                proto.transport.abort()
            else:
                proto.transport.close()

    def _transport_lost(self, proto: _Protocol) -> None:
        if proto is not self._proto:
            return
        if not self._stopping:
            reason, self._disconnect_reason = self._disconnect_reason, "connection lost"
            log.debug("%s: disconnected: %s", self.client_id, reason)
        self._proto = None
        self._cancel_keepalive()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionResetError("closed before CONNACK"))
        self._connection_lost()

    def _protocol_error(self, proto: _Protocol, exc: MqttProtocolError) -> None:
        log.warning("%s: protocol error from the broker, reconnecting: %s", self.client_id, exc)
        if proto.transport is not None:
            proto.transport.abort()  # connection_lost follows and reconnects

    # ------------------------------------------------------------------ keepalive

    def _arm_keepalive(self, interval_s: float) -> None:
        assert self._loop is not None
        self._cancel_keepalive()
        if interval_s > 0:
            self._keepalive_timer = self._loop.call_later(interval_s, self._keepalive_tick)

    def _cancel_keepalive(self) -> None:
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None

    def _keepalive_tick(self) -> None:
        self._keepalive_timer = None
        if self._proto is None:
            return
        if self._ping_outstanding and not self._received_since_ping:
            log.debug("%s: no answer within the keepalive; reconnecting", self.client_id)
            if self._proto.transport is not None:
                self._proto.transport.abort()
            return
        # One PINGREQ per keepalive interval, whatever else was sent: one timer and no
        # per-packet bookkeeping, at the price of a 2-byte packet per interval.
        self._ping_outstanding, self._received_since_ping = True, False
        self._write(PINGREQ_PACKET)
        self._arm_keepalive(self._keepalive_interval)

    # ------------------------------------------------------------------ receiving

    def _data_received(self, proto: _Protocol, data: bytes) -> None:
        self._received_since_ping = True
        try:
            packets = self._reader.feed(data)
            for first, body in packets:
                kind = first >> 4
                if kind == PUBLISH:
                    self._on_publish_packet(decode_publish(first, body))
                elif kind == PUBACK:
                    self._on_puback(*decode_ack(body, "puback"))
                elif kind == CONNACK:
                    self._on_connack(*decode_connack(body))
                elif kind == SUBACK:
                    self._on_suback(*decode_suback(body))
                elif kind == PUBREL:
                    packet_id, _ = decode_ack(body, "pubrel")
                    self._inbound_qos2.discard(packet_id)
                    self._write(encode_ack(PUBCOMP, packet_id))
                elif kind == DISCONNECT:
                    # Said when the socket closes (_transport_lost), as paho's reason.
                    self._disconnect_reason = f"reason 0x{body[0] if body else 0:02x}"
                elif kind not in (PINGRESP, UNSUBACK):
                    raise MqttProtocolError(f"packet type {kind}: not expected by a client")
                if self._proto is not proto:
                    return  # a handler dropped or stopped the connection
        except MqttProtocolError as exc:
            self._protocol_error(proto, exc)

    def _on_connack(self, session_present: bool, reason: int, props: dict[int, Any]) -> None:
        fut = self._connack
        if reason >= 0x80:
            log.warning(
                "%s: connection refused: reason 0x%02x %s",
                self.client_id, reason, props.get(PROP_REASON_STRING, ""),
            )  # fmt: skip
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionRefusedError(f"CONNACK reason 0x{reason:02x}"))
            return
        self._last_tls_failure = ""
        self.session_present = session_present
        self._generation += 1
        self._window = min(self._max_inflight, int(props.get(PROP_RECEIVE_MAXIMUM, 65535)))
        self._keepalive_interval = float(props.get(PROP_SERVER_KEEPALIVE, self._keepalive_s))
        self._ping_outstanding = False
        # The first ping at a random point of the interval: thousands of terminals that
        # connected together do not ping together ever after.
        self._arm_keepalive(self._keepalive_interval * (0.5 + random.random() / 2))
        if self._unsubscriptions:
            self._write(encode_unsubscribe(self._new_packet_id(), self._unsubscriptions))
        if self._subscriptions:
            self._write(encode_subscribe(self._new_packet_id(), self._subscriptions))
        # What was in flight when the link died goes again first, in order (with clean
        # start false the broker still expects it), then whatever queued meanwhile.
        self._on_wire.clear()
        self._waiting = deque(self._unacked)
        self._send_waiting()
        self._connected.set()
        if fut is not None and not fut.done():
            fut.set_result(None)
        if not session_present:
            log.debug("%s: new session on the broker", self.client_id)
        if self._on_connected_cb is not None:
            try:
                self._on_connected_cb()
            except Exception:
                log.exception("%s: on_connected failed", self.client_id)

    def _on_suback(self, _packet_id: int, reasons: list[int]) -> None:
        if any(r >= 0x80 for r in reasons):
            log.warning("%s: subscription refused: %s", self.client_id, reasons)

    def _on_puback(self, packet_id: int, _reason: int) -> None:
        if self._unacked.pop(packet_id, None) is None:
            return
        self._on_wire.discard(packet_id)
        fut = self._pending_acks.pop(packet_id, None)
        if fut is not None and not fut.done():
            fut.set_result(None)
        if self._on_published_cb is not None:
            self._on_published_cb(packet_id)
        self._send_waiting()

    def _on_publish_packet(self, msg: Publish) -> None:
        if msg.qos == 2:
            # Exactly once: delivered at the first PUBLISH, a DUP before PUBREL is not.
            if msg.packet_id in self._inbound_qos2:
                self._write(encode_ack(PUBREC, msg.packet_id))
                return
            self._inbound_qos2.add(msg.packet_id)
        try:
            if self._on_message_ack_cb is not None:
                self._on_message_ack_cb(msg.topic, msg.payload, self._lean_acker(msg))
            else:
                assert self._on_message_cb is not None
                self._on_message_cb(msg.topic, msg.payload)
                self._ack(msg.qos, msg.packet_id)
        except Exception:
            # As MqttConnection: a handler bug never stops the connection. Automatic
            # acknowledgement still acknowledges (paho did too), manual leaves it for
            # the redelivery after the next reconnect.
            log.exception("%s: message handler failed on %s", self.client_id, msg.topic)
            if self._on_message_ack_cb is None:
                self._ack(msg.qos, msg.packet_id)

    def _ack(self, qos: int, packet_id: int) -> None:
        if qos == 1:
            self._write(encode_ack(PUBACK, packet_id))
        elif qos == 2:
            self._write(encode_ack(PUBREC, packet_id))

    def _lean_acker(self, msg: Publish) -> Callable[[], None]:
        generation, qos, packet_id = self._generation, msg.qos, msg.packet_id

        def ack() -> None:
            if qos and generation == self._generation and self._connected.is_set():
                self._ack(qos, packet_id)

        return ack
