"""Several controller processes serving one county, on one PostgreSQL and one broker.

What makes replicas possible, each part owned here:

- `SqliteOwner`: SQLite stays the single-process default. The first controller on a
  SQLite database holds an exclusive lock on a file beside it for as long as it runs; a
  second is refused with one line (replicas need PostgreSQL). The kernel drops the lock
  when the holder dies, however it dies, so there is nothing stale to clean up.
- `Leadership`: exactly one replica runs the singletons (the schedule runner, the
  liveness, delivery and work-order sweeps, retention). On PostgreSQL the leader is
  whoever holds a session advisory lock on a dedicated connection; when the leader dies
  its connection closes and the lock is free, and a follower, trying every
  `LEADER_POLL_S`, takes over within seconds. On SQLite the one process leads.
- `EventRelay`: every internal event (controller/events.py) a replica emits is sent to
  the others through PostgreSQL NOTIFY and re-emitted on their hubs, so a console on any
  replica sees every terminal, and the leader hears of reports a follower stored.

Reports are shared through MQTT 5 shared subscriptions (controller/dispatch.py), so each
is stored by one replica; an occurrence is claimed with a row lock while it is fired
(controller/schedules/runner.py), so even two replicas that both believe they lead for a
moment cannot fire it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import fcntl
import json
import logging
import os
import typing
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.engine import make_url

from controller.events import EVENT_TYPES, Event, EventHub

log = logging.getLogger(__name__)

# pg_advisory_lock key of the leadership: "dala" in ASCII, one per database.
LEADER_LOCK_KEY = 0x64616C61
LEADER_POLL_S = 1.0
# A leader whose host vanishes (no FIN, no RST) is noticed by PostgreSQL through TCP
# keepalives on the lock connection after about idle + interval * count seconds.
_KEEPALIVE = {"tcp_keepalives_idle": 5, "tcp_keepalives_interval": 2, "tcp_keepalives_count": 3}
RELAY_CHANNEL = "dalaba_events"
# NOTIFY payloads are limited to 8000 bytes; events are batched below that.
_RELAY_PAYLOAD_BYTES = 7000


class SecondReplicaRefused(Exception):
    """A second controller on a SQLite database."""


def libpq_url(sqlalchemy_url: str) -> str:
    """postgresql+psycopg://u@h/db -> postgresql://u@h/db, what psycopg connects to."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


# ---------------------------------------------------------------------- SQLite


class SqliteOwner:
    """An exclusive lock on `<database>.controller.lock` while this controller runs."""

    def __init__(self, database_file: Path) -> None:
        self.database_file = database_file
        self.lock_file = database_file.with_name(database_file.name + ".controller.lock")
        self._handle: TextIO | None = None

    def acquire(self) -> None:
        handle = self.lock_file.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise SecondReplicaRefused(
                f"another controller ({holder}) already runs on the SQLite database "
                f"{self.database_file}; several replicas need PostgreSQL "
                "(DALABA_DATABASE_URL=postgresql+psycopg://...)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


# ---------------------------------------------------------------------- leadership

Jobs = Callable[[], Awaitable[None]]


class Leadership:
    """Runs `start_jobs` on becoming the leader and `stop_jobs` on ceasing to be one.

    `database_url` None (SQLite): this process leads from `start` to `stop`."""

    def __init__(
        self,
        database_url: str | None,
        replica: str,
        start_jobs: Jobs,
        stop_jobs: Jobs,
        poll_s: float = LEADER_POLL_S,
    ) -> None:
        self._url = libpq_url(database_url) if database_url else None
        self.replica = replica
        self._start_jobs = start_jobs
        self._stop_jobs = stop_jobs
        self._poll_s = poll_s
        self._task: asyncio.Task[None] | None = None
        self.is_leader = False
        self._stopping = False
        self.terms = 0  # how many times this replica became the leader

    async def start(self) -> None:
        if self._url is None:
            await self._lead()
        else:
            self._task = asyncio.create_task(self._campaign(), name="leadership")

    async def stop(self) -> None:
        # The jobs stop while the lock is still held, so no other replica starts its own
        # before this one's have ended; closing the connection then releases it.
        self._stopping = True
        await self._step_down()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _lead(self) -> None:
        self.is_leader = True
        self.terms += 1
        log.info("replica %s leads: it runs the schedules and the sweeps", self.replica)
        await self._start_jobs()

    async def _step_down(self) -> None:
        if self.is_leader:
            self.is_leader = False
            try:
                await self._stop_jobs()
            except Exception:
                log.exception("stopping the leader's jobs failed")

    async def _campaign(self) -> None:
        import psycopg  # the postgres extra; only a PostgreSQL controller gets here

        assert self._url is not None
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=5
                ) as conn:
                    for name, value in _KEEPALIVE.items():
                        await conn.execute(f"SET {name} = {int(value)}")
                    while self._stopping or not await _try_lock(conn):
                        await asyncio.sleep(self._poll_s)
                    await self._lead()
                    # Hold: the lock lives as long as this connection; a connection that
                    # stops answering ends the leadership here before anyone else's.
                    while True:
                        await asyncio.sleep(self._poll_s)
                        # Not wait_for: 3.11's loses a stop()'s cancel that lands as the
                        # answer does (bpo-42130), and this loop would hold the lock on.
                        async with asyncio.timeout(self._poll_s * 3):
                            await conn.execute("SELECT 1")
            except (psycopg.Error, OSError, TimeoutError) as exc:
                if self.is_leader:
                    log.warning("replica %s lost the leadership: %s", self.replica, exc)
                else:
                    log.warning("leadership connection failed: %s", exc)
            except Exception:
                # A leader job that failed to start: give the lock up and try again.
                log.exception("replica %s could not lead", self.replica)
            await self._step_down()
            await asyncio.sleep(self._poll_s)


async def _try_lock(conn: Any) -> bool:
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,))
    row = await cur.fetchone()
    return bool(row and row[0])


# ---------------------------------------------------------------------- live relay

_BY_NAME: dict[str, type[Event]] = {t.__name__: t for t in EVENT_TYPES}


def encode_event(event: Event) -> list[Any]:
    return [type(event).__name__, dataclasses.asdict(event)]


def decode_event(item: Any) -> Event:
    """The inverse of `encode_event`; ValueError for anything else."""
    try:
        name, fields = item
        cls = _BY_NAME[name]
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            value = fields[f.name]
            hint = hints[f.name]
            if isinstance(hint, type) and issubclass(hint, enum.Enum):
                value = hint(value)
            values[f.name] = value
        return cls(**values)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a relayed event: {exc!r}") from None


class EventRelay:
    """This replica's events out through NOTIFY, the other replicas' in through LISTEN."""

    def __init__(self, database_url: str, replica: str, events: EventHub) -> None:
        self._url = libpq_url(database_url)
        self.replica = replica
        self._events = events
        self._outbox: asyncio.Queue[Event] = asyncio.Queue(maxsize=100_000)
        self._tasks: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()
        self.counters = {"sent": 0, "received": 0, "dropped": 0, "malformed": 0}

    async def start(self) -> None:
        for event_type in EVENT_TYPES:
            # relayed=False: what came from another replica is not sent on again.
            self._events.on(event_type, self._enqueue, owner="relay", relayed=False)
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="relay-send"),
            asyncio.create_task(self._listen_loop(), name="relay-listen"),
        ]
        # Up before the HTTP server: a console connected here misses nothing relayed.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), 10)

    async def stop(self) -> None:
        self._events.off("relay")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def _enqueue(self, event: Event) -> None:
        try:
            self._outbox.put_nowait(event)
        except asyncio.QueueFull:
            self.counters["dropped"] += 1

    async def _connected(self, what: str, use: Callable[[Any], Awaitable[None]]) -> None:
        """`use` a connection of its own for ever, reconnecting after a failure. Events
        in a batch being sent, or sent while a replica was not listening, are lost to
        the others; their consoles catch up when they next reload what they show."""
        import psycopg

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=5
                ) as conn:
                    await use(conn)
            except (psycopg.Error, OSError) as exc:
                log.warning("live relay: %s failed (%s); reconnecting", what, exc)
                await asyncio.sleep(1.0)

    async def _send_loop(self) -> None:
        async def send(conn: Any) -> None:
            while True:
                for payload in self._batches(await self._outbox.get()):
                    await conn.execute("SELECT pg_notify(%s, %s)", (RELAY_CHANNEL, payload))

        await self._connected("sending", send)

    def _batches(self, first: Event) -> list[str]:
        """`first` and whatever else waits, as payloads under NOTIFY's size limit."""
        payloads: list[str] = []
        batch: list[Any] = []
        size = 0
        pending = [first]
        while not self._outbox.empty() and len(pending) < 1000:
            pending.append(self._outbox.get_nowait())
        for event in pending:
            item = encode_event(event)
            item_size = len(json.dumps(item, ensure_ascii=False).encode())
            if batch and size + item_size > _RELAY_PAYLOAD_BYTES:
                payloads.append(self._payload(batch))
                batch, size = [], 0
            batch.append(item)
            size += item_size + 1
        if batch:
            payloads.append(self._payload(batch))
        self.counters["sent"] += len(pending)
        return payloads

    def _payload(self, batch: list[Any]) -> str:
        return json.dumps({"from": self.replica, "events": batch}, ensure_ascii=False)

    async def _listen_loop(self) -> None:
        async def listen(conn: Any) -> None:
            await conn.execute(f"LISTEN {RELAY_CHANNEL}")
            self._listening.set()
            async for notice in conn.notifies():
                self._receive(notice.payload)

        await self._connected("listening", listen)

    def _receive(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            origin, items = message["from"], message["events"]
        except (ValueError, KeyError, TypeError):
            self.counters["malformed"] += 1
            return
        if origin == self.replica:
            return
        for item in items:
            try:
                event = decode_event(item)
            except ValueError:
                self.counters["malformed"] += 1
                continue
            self.counters["received"] += 1
            self._events.emit(event, relayed=True)
