"""Shared fixtures: a real private Mosquitto, a real controller (SQLite or PostgreSQL,
espeak-ng, ffmpeg) and a fleet of real agents on simulated hardware, started per test.

Every test that builds a county through `make_county` (or asks for `db_backend` /
`new_database_url`) runs twice, `[sqlite]` and `[postgres]`; the postgres variant
carries the `postgres` marker (`-m "not postgres"` runs the SQLite half) and skips,
saying why, where there is no PostgreSQL (tests/support.py: `postgres_server`). A test
about SQLite only says so with `@pytest.mark.sqlite_only("why")`."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.api import keys
from controller.app import ControllerServer
from dalaba import protocol as p
from dalaba.mqtt import BrokerAddress, MqttConnection
from dalaba_ops.broker import controller_username
from dalaba_ops.demo import PreparedCounty, setup_county
from firmware_sim.audio import SAMPLE_RATE
from firmware_sim.fleet import Fleet, device_dir
from tests.support import DatabaseUrlFactory, DbBackend, require_postgres, throwaway_postgres_url

for tool in ("mosquitto", "ffmpeg", "espeak-ng"):
    if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
        raise RuntimeError(f"{tool} is required by the test suite; run `make test`")


# --------------------------------------------------------------------------- databases


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A SQLite-only test keeps its [sqlite] id; its [postgres] twin is deselected (not
    # skipped: there is nothing to run, and the marker in the source says why).
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("db_backend") if callspec is not None else None
        _group_by_module_fixture(item, backend)
        marker = item.get_closest_marker("sqlite_only")
        if marker is not None and not (marker.args or marker.kwargs.get("reason")):
            raise pytest.UsageError(f"{item.nodeid}: sqlite_only needs a reason")
        sqlite_only = marker is not None or _is_browser_test(item)
        (dropped if sqlite_only and backend == "postgres" else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _is_browser_test(item: pytest.Item) -> bool:
    """The console's tests drive Chromium over the same HTTP API that the integration
    tests run on both databases: on PostgreSQL too they would double a third of the
    suite's time to test the same server code again (see pytest_report_header)."""
    return item.nodeid.startswith("tests/browser/")


def pytest_report_header(config: pytest.Config) -> str:
    return (
        "databases: integration tests run on sqlite and postgres; browser tests on sqlite "
        "only (their [postgres] twins are deselected: same API, tested on both in "
        "tests/integration)"
    )


def _group_by_module_fixture(item: pytest.Item, backend: str | None) -> None:
    """`make test` spreads tests one by one over its processes (--dist loadgroup), except
    the tests that share a module-scoped fixture (a long-lived county of processes, a
    built wheel): those stay in one process, one group per module and database backend,
    so a module's [sqlite] and [postgres] halves can run side by side."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return
    shared = any(
        defs and defs[-1].scope == "module" and name != "db_backend"
        for name, defs in info.name2fixturedefs.items()
    )
    if shared:
        group = item.nodeid.split("::", 1)[0] + (f"[{backend}]" if backend else "")
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def db_backend(request: pytest.FixtureRequest) -> Iterator[DbBackend]:
    """Module-scoped so that a module's own long-lived county (a module fixture) can ask
    for it too; each county still gets a database of its own."""
    if request.param == "sqlite":
        yield DbBackend("sqlite")
        return
    backend = DbBackend("postgres", require_postgres())
    try:
        yield backend
    finally:
        backend.drop_all()


@pytest.fixture
def new_database_url(db_backend: DbBackend) -> Iterator[DatabaseUrlFactory]:
    """`new_database_url()`: the `database_url` for one more county of this test
    (dropped after the test); None on SQLite."""
    made: list[str | None] = []

    def factory() -> str | None:
        made.append(db_backend.new_url())
        return made[-1]

    yield factory
    for url in made:
        db_backend.drop(url)


class WaitTimeout(AssertionError):
    """A wait ran out of time (as opposed to a check failing while waiting)."""


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def decode_media(path: Path) -> bytes:
    """Decode independently of the simulator, exactly as a terminal's DAC path would
    (16 kHz mono s16le)."""
    command = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "s16le"]
    command += ["-acodec", "pcm_s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    return subprocess.run(
        command,
        check=True,
        capture_output=True,
    ).stdout


@dataclass
class County:
    """A running county for one test."""

    prepared: PreparedCounty
    controller: ControllerServer
    fleet: Fleet
    http: aiohttp.ClientSession
    # broadcast id -> the terminals the test asked for, resolved against the county's
    # own provisioning (see `terminals_in`), recorded by `broadcast`.
    targeted: dict[str, frozenset[str]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.prepared.api_url

    @property
    def data_dir(self) -> Path:
        return self.prepared.data_dir

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.prepared.admin_token}"}

    async def api(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json_body: Any = None,
        expect: int | None = None,
    ) -> tuple[int, Any]:
        async with self.http.request(
            method, self.url + path, json=json_body, headers=self.headers(token)
        ) as resp:
            body = await resp.json()
            if expect is not None:
                assert resp.status == expect, (resp.status, body)
            return resp.status, body

    # ------------------------------------------------------------------ who is targeted

    def terminals_in(self, targets: Mapping[str, Any]) -> frozenset[str]:
        """The terminals an area request covers, from the county's provisioning (the
        simulated terminals' own device files), never from the controller's delivery
        rows: a broadcast whose rows are missing must not look finished."""
        configs = self.fleet.configs.values()
        if targets.get("all"):
            return frozenset(c.device_id for c in configs)
        townships = set(targets.get("townships") or ())
        villages = set(targets.get("villages") or ())
        devices = set(targets.get("devices") or ())
        return frozenset(
            c.device_id
            for c in configs
            if c.township_id in townships or c.village_id in villages or c.device_id in devices
        )

    async def broadcast(self, **body: Any) -> str:
        body.setdefault("category", "flood")
        body.setdefault("priority", "notice")
        expected = self.terminals_in(body["targets"])
        assert expected, f"the test targets no terminal: {body['targets']}"
        _, created = await self.api("POST", "/api/broadcasts", json_body=body, expect=201)
        self.targeted[str(created["id"])] = expected
        return str(created["id"])

    async def get_broadcast(self, broadcast_id: str) -> dict[str, Any]:
        _, view = await self.api("GET", f"/api/broadcasts/{broadcast_id}", expect=200)
        return dict(view)

    # ------------------------------------------------------------------ waiting

    async def wait_for(
        self,
        predicate: Callable[[], Awaitable[bool]],
        timeout_s: float = 30.0,
        what: str = "condition",
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await predicate():
                return
            await asyncio.sleep(0.1)  # poll interval, not synchronisation
        raise WaitTimeout(f"timed out after {timeout_s}s waiting for {what}")

    async def wait_states(
        self,
        broadcast_id: str,
        states: Mapping[str, str] | set[str],
        timeout_s: float = 30.0,
        *,
        targeted: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """Wait until every targeted terminal's delivery is in one of `states` (a set),
        or each named terminal is in its state (a mapping).

        The targeted terminals are `targeted` when given, else those recorded by
        `broadcast`, else the broadcast's requested targets resolved against the
        county (broadcasts made by the console or a schedule). A targeted terminal
        without a delivery row never counts as done, and a row for a terminal that
        was not targeted fails the wait at once."""
        expected = frozenset(targeted) if targeted is not None else self.targeted.get(broadcast_id)
        view: dict[str, Any] = {}
        by_device: dict[str, str] = {}

        async def reached() -> bool:
            nonlocal view, by_device, expected
            view = await self.get_broadcast(broadcast_id)
            if expected is None:
                expected = self.terminals_in(view["targets"])
            assert expected, f"{broadcast_id} targets no terminal of the county"
            by_device = {d["device_id"]: d["state"] for d in view["deliveries"]}
            stray = by_device.keys() - expected
            assert not stray, f"{broadcast_id}: deliveries to untargeted terminals {sorted(stray)}"
            if isinstance(states, Mapping):
                named = states.keys() - expected
                assert not named, f"{broadcast_id}: {sorted(named)} are not targeted"
                return all(by_device.get(k) == v for k, v in states.items())
            return all(by_device.get(d) in states for d in expected)

        try:
            await self.wait_for(reached, timeout_s, f"{broadcast_id} in {states}")
        except WaitTimeout:
            wanted = states.keys() if isinstance(states, Mapping) else (expected or ())
            # The state with its reason: a failure under load says why it failed.
            reasons = {d["device_id"]: d.get("reason") for d in view.get("deliveries", [])}
            behind = {
                d: f"{by_device.get(d, 'no delivery row')} ({reasons.get(d) or '-'})"
                for d in sorted(wanted)
                if by_device.get(d) not in (states[d] if isinstance(states, Mapping) else states)
            }
            raise WaitTimeout(
                f"{broadcast_id} not in {states} after {timeout_s}s: {view.get('summary')}; "
                f"behind: {dict(list(behind.items())[:10])}"
            ) from None
        return view

    async def security_events(self, broadcast_id: str | None = None) -> list[dict[str, Any]]:
        query = f"?broadcast={broadcast_id}" if broadcast_id else ""
        _, body = await self.api("GET", f"/api/security-events{query}", expect=200)
        return list(body["events"])

    async def wait_security_event(
        self, device_id: str, reason: str, broadcast_id: str, timeout_s: float = 20.0
    ) -> dict[str, Any]:
        """Wait until the controller has recorded `device_id` refusing a command of
        `broadcast_id` for `reason`; returns that event."""
        found: list[dict[str, Any]] = []

        async def recorded() -> bool:
            found[:] = [
                e
                for e in await self.security_events(broadcast_id)
                if e["device_id"] == device_id and e["reason"] == reason
            ]
            return bool(found)

        await self.wait_for(recorded, timeout_s, f"{device_id} reporting {reason}")
        return found[0]

    # ------------------------------------------------------------------ what was heard

    def plays(self, device_id: str) -> list[dict[str, Any]]:
        """The speaker's record: one line per play that ended (cut short or not)."""
        return read_json_lines(device_dir(self.data_dir, device_id) / "plays.jsonl")

    def plays_started(self, device_id: str) -> list[dict[str, Any]]:
        """One line per play that started, written at the start (so a play cut by a
        crash still leaves evidence)."""
        return read_json_lines(device_dir(self.data_dir, device_id) / "plays-started.jsonl")

    def all_plays(self, broadcast_id: str) -> dict[str, list[dict[str, Any]]]:
        return self._by_device(self.plays, broadcast_id)

    def all_started(self, broadcast_id: str) -> dict[str, list[dict[str, Any]]]:
        return self._by_device(self.plays_started, broadcast_id)

    def _by_device(
        self, read: Callable[[str], list[dict[str, Any]]], broadcast_id: str
    ) -> dict[str, list[dict[str, Any]]]:
        result: dict[str, list[dict[str, Any]]] = {}
        for device_id in self.fleet.configs:
            entries = [e for e in read(device_id) if e["broadcast_id"] == broadcast_id]
            if entries:
                result[device_id] = entries
        return result

    async def wait_started(
        self, broadcast_id: str, devices: Iterable[str], timeout_s: float = 30.0
    ) -> None:
        """Wait until each of `devices` has started playing `broadcast_id`."""
        wanted = set(devices)
        assert wanted, "no terminal to wait for"

        async def started() -> bool:
            return wanted <= self.all_started(broadcast_id).keys()

        await self.wait_for(started, timeout_s, f"{sorted(wanted)} starting {broadcast_id}")

    def media_path(self, media_id: str) -> Path:
        assert self.controller.app is not None
        return self.controller.app[keys.MEDIA].path_for(media_id)

    def media_pcm(self, media_id: str) -> bytes:
        return decode_media(self.media_path(media_id))

    def media_ms(self, media_id: str) -> int:
        """The audio's length, from its samples (not from anything a report says)."""
        return len(self.media_pcm(media_id)) * 1000 // (2 * SAMPLE_RATE)

    # ------------------------------------------------------------------ the broker

    @staticmethod
    def open_unverified(envelope: bytes) -> p.Command:
        """The command inside a captured envelope, as anyone on the broker can read it."""
        return p.Command.model_validate_json(
            base64.b64decode(p.SignedEnvelope.model_validate_json(envelope).payload)
        )

    async def attacker(
        self, subscribe: str | None = None, on_message: Callable[[str, bytes], None] | None = None
    ) -> MqttConnection:
        """A client holding the controller's broker credentials (someone who can publish
        on the broker) but not the controller's signing key. With `subscribe`, returns
        once the subscription is in force at the broker."""
        deliver = on_message or (lambda _t, _p: None)
        # The broker answers a SUBSCRIBE before it handles a PUBLISH sent after it on the
        # same connection, so a probe coming back proves the subscription is live. No
        # terminal listens on the probe's topic.
        probe_topic = (
            _probe_topic_for(subscribe, f"probe-{time.monotonic_ns()}") if subscribe else None
        )
        probed = asyncio.Event()

        def handle(topic: str, payload: bytes) -> None:
            if topic == probe_topic:
                probed.set()
            else:
                deliver(topic, payload)

        conn = MqttConnection(
            client_id=f"attacker-{time.monotonic_ns()}",
            # A broker account with the controller's rights but its own session: client
            # ids are bound to accounts, so the controller's own would take its session.
            broker=BrokerAddress("127.0.0.1", self.prepared.broker_port).with_credentials(
                controller_username(2), self.prepared.replica_password
            ),
            on_message=handle,
            subscriptions=[(subscribe, 1)] if subscribe else [],
            session_expiry_s=0,
        )
        await conn.start()
        if probe_topic is not None:
            await conn.publish_confirmed(probe_topic, b"probe")
            await asyncio.wait_for(probed.wait(), 10)
        return conn


def _probe_topic_for(subscription: str, probe_id: str) -> str:
    """A topic matched by `subscription` that names nobody: wildcards are filled with
    the probe's own id."""
    levels = subscription.split("/")
    filled = [probe_id if level in ("+", "#") else level for level in levels]
    if "#" not in levels and "+" not in levels:
        raise ValueError(f"probe needs a wildcard subscription, got {subscription!r}")
    return "/".join(filled)


CountyFactory = Callable[..., Awaitable[County]]


@pytest.fixture
async def make_county(
    tmp_path: Path, new_database_url: DatabaseUrlFactory
) -> AsyncIterator[CountyFactory]:
    started: list[County] = []

    async def factory(villages: int = 12, **kw: Any) -> County:
        if kw.get("database_url") is None:
            kw["database_url"] = new_database_url()
        prepared = setup_county(
            tmp_path / f"county{len(started)}",
            villages=villages,
            speech_backends=("espeak-ng",),
            telemetry_interval_s=kw.pop("telemetry_interval_s", 5.0),
            **kw,
        )
        await prepared.broker.start_async()
        controller = ControllerServer(prepared.settings)
        fleet = Fleet.from_data_dir(prepared.data_dir)
        county = County(prepared, controller, fleet, aiohttp.ClientSession())
        started.append(county)  # from here on, teardown stops whatever did start
        await controller.start()
        await fleet.start()
        await county.wait_for(_all_online(county), 20, "every terminal online")
        return county

    try:
        yield factory
    finally:
        for county in started:
            try:
                await county.fleet.stop()
                await county.http.close()
                await county.controller.stop()
            finally:
                county.prepared.broker.stop()


def _all_online(county: County) -> Callable[[], Awaitable[bool]]:
    # Compared with the county's provisioned terminals, not only with the controller's
    # own count: a controller that lost its device rows must not look all online.
    expected = set(county.fleet.configs)

    async def check() -> bool:
        _, body = await county.api("GET", "/api/devices")
        online = {d["id"] for d in body["devices"] if d["online"]}
        return bool(expected) and online == expected

    return check


# --------------------------------------------------------------------------- console


class ConsoleClient:
    """A browser-like API client: logs in with a password, holds the session cookie and
    sends the CSRF token on state-changing requests (no bearer token)."""

    def __init__(self, county: County, name: str) -> None:
        self.county = county
        self.name = name
        # unsafe=True: the test controller is addressed by IP, where aiohttp's cookie
        # jar otherwise refuses to keep cookies.
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf: str | None = None
        self.me: dict[str, Any] = {}

    async def login(self, password: str | None = None) -> tuple[int, Any]:
        if password is None:
            password = self.county.prepared.console_users[self.name][2]
        async with self.http.post(
            self.county.url + "/api/session/login",
            json={"name": self.name, "password": password},
        ) as resp:
            body = await resp.json()
            if resp.status == 200:
                self.csrf = body["csrf_token"]
                self.me = body
            return resp.status, body

    async def api(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        expect: int | None = None,
        csrf: bool = True,
    ) -> tuple[int, Any]:
        headers = {"X-CSRF-Token": self.csrf} if csrf and self.csrf else {}
        async with self.http.request(
            method, self.county.url + path, json=json_body, headers=headers
        ) as resp:
            body = (
                await resp.json() if resp.content_type == "application/json" else await resp.text()
            )
            if expect is not None:
                assert resp.status == expect, (resp.status, body)
            return resp.status, body

    async def close(self) -> None:
        await self.http.close()


ConsoleFactory = Callable[..., Awaitable[ConsoleClient]]


@pytest.fixture
async def console_login(make_county: CountyFactory) -> AsyncIterator[ConsoleFactory]:
    """`await console_login(county, "duty1")`: a logged-in ConsoleClient for one of the
    demo's console users (see dalaba_ops.demo)."""
    clients: list[ConsoleClient] = []

    async def factory(county: County, name: str, password: str | None = None) -> ConsoleClient:
        client = ConsoleClient(county, name)
        clients.append(client)
        status, body = await client.login(password)
        assert status == 200, body
        return client

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from throwaway_postgres_url()
