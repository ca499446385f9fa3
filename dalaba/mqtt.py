"""A thin asyncio adapter over paho-mqtt, shared by the controller, agent and simulator.

Why not aiomqtt or paho's threaded loop: the simulator holds hundreds to thousands of
terminals in one process. paho's threaded loop costs a thread per client and stops
scaling past a few hundred; aiomqtt measured ~4x the per-message cost of driving paho
from the event loop directly. So paho's socket callbacks are wired to the asyncio loop
here (paho's own `loop_asyncio` pattern) and the rest of the code only sees this class;
swapping the client library means rewriting this file alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]
# With manual acknowledgement the handler gets a third argument: call it once the
# message is safely stored. Until then the broker keeps the message and redelivers it
# after a crash (paho would otherwise acknowledge when the callback returns).
AckingMessageHandler = Callable[[str, bytes, Callable[[], None]], None]

# Reconnect backoff: short enough that a fleet is back within seconds of the broker's
# return; while waiting, the broker's port is probed so a client tries at once when
# it answers instead of sleeping out its backoff.
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 5.0
PORT_PROBE_INTERVAL_S = 1.0


PLAIN_SCHEMES = ("mqtt", "tcp")
TLS_SCHEMES = ("mqtts", "ssl")
MQTT_PORT = 1883
MQTTS_PORT = 8883


@dataclass(frozen=True)
class TlsSettings:
    """MQTT over TLS. The broker's certificate is always verified, host name included:
    against `ca_file` (a private CA) or, without one, the system's trusted CAs. With
    `cert_file` and `key_file` the client also shows a certificate of its own (a
    broker with certificate identity takes its common name as the username)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")

    def context(self) -> ssl.SSLContext:
        """Read the files now: a missing or wrong file stops the caller at start, with
        the file named, rather than in every reconnect."""
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # create_default_context sets both already; said again because nothing below
        # may ever turn them off (paho's tls_insecure_set is never called).
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in logs
    tls: TlsSettings | None = None  # None: plain MQTT

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> BrokerAddress:
        """`mqtt://host[:1883]` or `mqtts://host[:8883]` (also `tcp://`, `ssl://`). TLS
        files with a plain URL are refused: whoever gave a CA expects encryption, and
        would otherwise send the password in clear without noticing."""
        parts = urlsplit(url)
        if parts.scheme in TLS_SCHEMES:
            tls: TlsSettings | None = TlsSettings(ca_file, cert_file, key_file)
        elif parts.scheme in PLAIN_SCHEMES:
            if ca_file or cert_file or key_file:
                raise ValueError(
                    f"broker url: {parts.scheme}:// is plain MQTT but TLS files were given "
                    "(use mqtts://)"
                )
            tls = None
        else:
            raise ValueError(
                f"broker url: unsupported scheme {parts.scheme!r} (use mqtt:// or mqtts://)"
            )
        try:
            port = parts.port
        except ValueError as exc:  # a port that is no number, or out of range
            raise ValueError(f"broker url: {exc}") from exc
        return cls(
            parts.hostname or "127.0.0.1",
            port or (MQTTS_PORT if tls else MQTT_PORT),
            parts.username,
            parts.password,
            tls,
        )

    def with_credentials(self, username: str, password: str | None) -> BrokerAddress:
        """`password` empty or None: none is sent (certificate identity)."""
        return replace(self, username=username, password=password or None)

    @property
    def url(self) -> str:
        """Where, for messages: no credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


class _Client(paho.Client):
    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        """paho's own, minus its leak: a failed handshake (wrong CA, a plain-MQTT port)
        left the wrapped socket open until the garbage collector found it. The host
        name is checked by the context (check_hostname), in the handshake."""
        assert self._ssl_context is not None and self._ssl_context.check_hostname
        ssl_sock = self._ssl_context.wrap_socket(
            tcp_sock, server_hostname=self._host, do_handshake_on_connect=False
        )
        try:
            # Blocking, as paho's TCP connect before it: bounded by the connect timeout.
            ssl_sock.settimeout(self._connect_timeout)
            ssl_sock.do_handshake()
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock


@dataclass(frozen=True)
class WillMessage:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttConnection:
    """One MQTT 5 client with a persistent session, driven by the running event loop.

    It reconnects by itself with jittered backoff; subscriptions are renewed on every
    connect. `publish` never blocks: QoS 1 messages published while disconnected are
    queued by paho and sent on reconnect.
    """

    def __init__(
        self,
        *,
        client_id: str,
        broker: BrokerAddress,
        on_message: MessageHandler | None = None,
        on_message_manual_ack: AckingMessageHandler | None = None,
        subscriptions: list[tuple[str, int]],
        session_expiry_s: int,
        unsubscriptions: Sequence[str] = (),
        will: WillMessage | None = None,
        on_connected: Callable[[], None] | None = None,
        keepalive_s: int = 30,
        bind_address: str = "",
        may_connect: Callable[[], bool] = lambda: True,
        max_inflight: int = 100,
    ) -> None:
        self.client_id = client_id
        self._broker = broker
        if (on_message is None) == (on_message_manual_ack is None):
            raise ValueError("give exactly one of on_message and on_message_manual_ack")
        self._on_message_cb = on_message
        self._on_message_ack_cb = on_message_manual_ack
        # Bumped on every connect: an acknowledgement owed on an older connection is
        # never sent on a newer one (the packet id would name another message there).
        self._generation = 0
        self._subscriptions = list(subscriptions)
        # Filters a persistent session may still hold from an earlier configuration
        # (the broker keeps them across reconnects): dropped on every connect.
        self._unsubscriptions = list(unsubscriptions)
        self._session_expiry_s = session_expiry_s
        self._will = will
        self._on_connected_cb = on_connected
        self._keepalive_s = keepalive_s
        self._bind_address = bind_address
        self._may_connect = may_connect
        self._max_inflight = max_inflight
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._misc_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._pending_acks: dict[int, asyncio.Future[None]] = {}
        self._last_tls_failure = ""
        # The broker still held this client's session (its subscriptions and what was
        # queued for it) at the latest CONNACK. False after a broker that restarted
        # without its saved state: what was published meanwhile reached nobody.
        self.session_present = False
        # When the latest connection died (epoch ms); None while it never has.
        self.lost_at_ms: int | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, timeout_s: float | None = 10.0) -> None:
        """Connect, then keep connected. Waits for the first CONNACK up to `timeout_s`
        (None: do not wait; the connection comes up in the background)."""
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        client = _Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,  # we own reconnection, on the event loop
            manual_ack=self._on_message_ack_cb is not None,
        )
        if self._broker.username is not None:
            client.username_pw_set(self._broker.username, self._broker.password)
        if self._broker.tls is not None:
            # paho wraps the socket and verifies the broker (certificate, host name)
            # in connect(), before any MQTT packet, so a password never leaves
            # unencrypted or to an impostor.
            client.tls_set_context(self._broker.tls.context())
        if self._will is not None:
            client.will_set(self._will.topic, self._will.payload, self._will.qos, self._will.retain)
        client.max_inflight_messages_set(self._max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._client = client
        self._reconnect_task = asyncio.create_task(self._connect_loop(first=True))
        if timeout_s is not None:
            await asyncio.wait_for(self._connected.wait(), timeout_s)

    async def _stop_reconnecting(self) -> None:
        """No further connection attempts (shared with the lean client's `stop`)."""
        self._stopping = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task

    async def stop(self) -> None:
        """Disconnect cleanly (no last will is sent) and stop reconnecting."""
        await self._stop_reconnecting()
        client = self._client
        if client is not None and self._connected.is_set():
            client.disconnect()
            # Let the DISCONNECT packet go out before the socket is closed.
            for _ in range(20):
                if not self._connected.is_set():
                    break
                await asyncio.sleep(0.01)
        self._close_socket()
        for fut in self._pending_acks.values():
            if not fut.done():
                fut.cancel()
        self._pending_acks.clear()

    def drop(self) -> None:
        """Close the socket without DISCONNECT, as a cut cable would; the broker then
        publishes the last will. Reconnection resumes when `may_connect` allows it."""
        self._close_socket()
        self._connection_lost()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def tls_version(self) -> str | None:
        """The TLS version of the live connection ("TLSv1.3"), None when plain or down."""
        sock = self._sock()
        return sock.version() if isinstance(sock, ssl.SSLSocket) else None

    async def wait_connected(self, timeout_s: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout_s)

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
        """Queue a message; returns its message id (0 for QoS 0)."""
        assert self._client is not None, "start() first"
        properties = None
        if expiry_s is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = max(1, int(expiry_s))
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        return info.mid

    async def publish_confirmed(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        expiry_s: int | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        """Publish with QoS 1 and wait for the broker's PUBACK."""
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        mid = self.publish(topic, payload, qos=1, retain=retain, expiry_s=expiry_s)
        self._pending_acks[mid] = fut
        try:
            # Not asyncio.wait_for: on Python 3.11 it returns normally when the task is
            # cancelled just as the PUBACK arrives (bpo-42130), so a loop of publishes
            # stopped by cancel() went on publishing. asyncio.timeout never loses it.
            async with asyncio.timeout(timeout_s):
                await fut
        finally:
            self._pending_acks.pop(mid, None)

    def subscribe(self, topic: str, qos: int) -> None:
        """Add a subscription now and on every reconnect (a live paging session)."""
        if (topic, qos) not in self._subscriptions:
            self._subscriptions.append((topic, qos))
        if self._client is not None and self.connected:
            self._client.subscribe(topic, qos)

    def unsubscribe(self, topic: str) -> None:
        self._subscriptions[:] = [s for s in self._subscriptions if s[0] != topic]
        if self._client is not None and self.connected:
            self._client.unsubscribe(topic)

    # ------------------------------------------------------------------ connecting

    async def _connect_loop(self, first: bool = False) -> None:
        delay = 0.0 if first else RECONNECT_MIN_S
        while not self._stopping:
            if not self._may_connect():
                # No link: poll it, and try at once when it returns (backoff is for
                # a broker that refuses, not for a cable that is out).
                await asyncio.sleep(0.5)
                delay = 0.0
                continue
            if delay:
                await self._wait_or_port_answers(delay * (0.5 + random.random()))
            delay = min(max(delay * 2, RECONNECT_MIN_S), RECONNECT_MAX_S)
            try:
                self._connect_once()
            except ssl.SSLError as exc:
                # A wrong CA, host name or client certificate does not heal by retrying,
                # but the operator may fix the broker's side: keep trying, and say why
                # (once per reason, not once per backoff).
                self._log_tls_failure(exc)
                continue
            except OSError as exc:
                log.debug("%s: connect failed: %s", self.client_id, exc)
                continue
            # Wait for CONNACK; a refused or dropped connection lands in _on_disconnect.
            for _ in range(100):
                if self._connected.is_set() or self._client is None or self._sock() is None:
                    break
                await asyncio.sleep(0.05)
            if self._connected.is_set():
                return
            self._close_socket()

    async def _wait_or_port_answers(self, delay_s: float) -> None:
        """Sleep out the backoff, but return early once the broker's port accepts a
        TCP connection: after an outage the whole fleet is back within about a probe
        interval of the broker's return, not a doubled backoff later."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            probe_in = PORT_PROBE_INTERVAL_S * (0.75 + random.random() / 2)
            await asyncio.sleep(min(remaining, probe_in))
            if loop.time() >= deadline or await self._port_answers():
                return

    async def _port_answers(self) -> bool:
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self._broker.host,
                    self._broker.port,
                    local_addr=(self._bind_address, 0) if self._bind_address else None,
                ),
                timeout=1.0,
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def _log_tls_failure(self, exc: ssl.SSLError) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        if reason == self._last_tls_failure:
            log.debug("%s: TLS to %s failed again: %s", self.client_id, self._broker.url, reason)
        else:
            log.warning("%s: TLS to %s failed: %s", self.client_id, self._broker.url, reason)
        self._last_tls_failure = reason

    def _connect_once(self) -> None:
        assert self._client is not None
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry_s
        self._client.connect(
            self._broker.host,
            self._broker.port,
            keepalive=self._keepalive_s,
            bind_address=self._bind_address,
            clean_start=False,
            properties=props,
        )

    def _sock(self) -> socket.socket | None:
        if self._client is None:
            return None
        sock = self._client.socket()
        return sock if isinstance(sock, socket.socket) else None

    def _close_socket(self) -> None:
        sock = self._sock()
        if sock is None or self._client is None:
            return
        # paho's own close path calls on_socket_close, which unregisters the loop callbacks.
        self._client._sock_close()

    def _connection_lost(self) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected:
            self.lost_at_ms = int(time.time() * 1000)
        if self._stopping:
            return
        if was_connected or self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.create_task(self._connect_loop())

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(
        self, client: paho.Client, _u: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("%s: connection refused: %s", self.client_id, reason)
            return
        self._last_tls_failure = ""
        self.session_present = bool(getattr(flags, "session_present", False))
        self._generation += 1
        if self._unsubscriptions:
            client.unsubscribe(self._unsubscriptions)
        if self._subscriptions:
            client.subscribe(self._subscriptions)
        self._connected.set()
        if self._on_connected_cb is not None:
            self._on_connected_cb()

    def _on_disconnect(
        self, _c: paho.Client, _u: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if not self._stopping:
            log.debug("%s: disconnected: %s", self.client_id, reason)
        self._connection_lost()

    def _on_message(self, client: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        try:
            if self._on_message_ack_cb is not None:
                self._on_message_ack_cb(
                    message.topic, bytes(message.payload), self._acker(client, message)
                )
            else:
                assert self._on_message_cb is not None
                self._on_message_cb(message.topic, bytes(message.payload))
        except Exception:
            # A handler bug must never stop the connection: log, drop, carry on. With
            # manual acknowledgement the message stays unacknowledged and comes back
            # after the next reconnect.
            log.exception("%s: message handler failed on %s", self.client_id, message.topic)

    def _acker(self, client: paho.Client, message: paho.MQTTMessage) -> Callable[[], None]:
        generation, mid, qos = self._generation, message.mid, message.qos

        def ack() -> None:
            if qos > 0 and generation == self._generation and self._connected.is_set():
                client.ack(mid, qos)

        return ack

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        fut = self._pending_acks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_socket_open(self, client: paho.Client, _u: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_reader(sock, self._read, client)
        if self._misc_task is None or self._misc_task.done():
            self._misc_task = self._loop.create_task(self._misc_loop(client))

    @staticmethod
    def _read(client: paho.Client) -> None:
        client.loop_read()
        # Over TLS, one record read off the socket may hold several MQTT packets, and
        # paho reads one packet per call: the rest waits decrypted inside the SSL
        # object, where the event loop cannot see it (the socket is not readable
        # again). Read until nothing is left, or a report would wait for the next one.
        sock = client.socket()
        while isinstance(sock, ssl.SSLSocket) and sock.pending():
            client.loop_read()
            if client.socket() is not sock:
                break

    def _on_socket_close(self, _client: paho.Client, _u: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None

    def _on_socket_register_write(self, client: paho.Client, _u: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, client.loop_write)

    def _on_socket_unregister_write(self, _client: paho.Client, _u: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    async def _misc_loop(self, client: paho.Client) -> None:
        # Keepalive pings and retries; paho needs this called about once a second.
        while client.loop_misc() == paho.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1)
        self._connection_lost()
