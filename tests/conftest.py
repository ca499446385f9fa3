"""Shared fixtures: a real private Mosquitto, a real controller (SQLite, espeak-ng,
ffmpeg) and a fleet of real agents on simulated hardware, started per test."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.app import ControllerServer
from dalaba.demo import PreparedCounty, setup_county
from dalaba.mqtt import BrokerAddress, MqttConnection
from firmware_sim.fleet import Fleet
from tests.support import throwaway_postgres_url

for tool in ("mosquitto", "ffmpeg", "espeak-ng"):
    if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
        raise RuntimeError(f"{tool} is required by the test suite; run `make test`")


@dataclass
class County:
    """A running county for one test."""

    prepared: PreparedCounty
    controller: ControllerServer
    fleet: Fleet
    http: aiohttp.ClientSession

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

    async def broadcast(self, **body: Any) -> str:
        body.setdefault("category", "flood")
        body.setdefault("priority", "notice")
        _, created = await self.api("POST", "/api/broadcasts", json_body=body, expect=201)
        return str(created["id"])

    async def get_broadcast(self, broadcast_id: str) -> dict[str, Any]:
        _, view = await self.api("GET", f"/api/broadcasts/{broadcast_id}", expect=200)
        return dict(view)

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
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")

    async def wait_states(
        self, broadcast_id: str, states: dict[str, str] | set[str], timeout_s: float = 30.0
    ) -> dict[str, Any]:
        """Wait until every delivery is in one of `states` (a set), or each named
        device is in its state (a dict)."""
        view: dict[str, Any] = {}

        async def ok() -> bool:
            nonlocal view
            view = await self.get_broadcast(broadcast_id)
            by_device = {d["device_id"]: d["state"] for d in view["deliveries"]}
            if isinstance(states, dict):
                return all(by_device.get(k) == v for k, v in states.items())
            return all(s in states for s in by_device.values())

        try:
            await self.wait_for(ok, timeout_s, f"{broadcast_id} in {states}")
        except AssertionError:
            raise AssertionError(f"not reached {states}: {view.get('summary')}") from None
        return view

    def plays(self, device_id: str) -> list[dict[str, Any]]:
        return self.fleet.hardware[device_id].speaker.plays()

    def all_plays(self, broadcast_id: str) -> dict[str, list[dict[str, Any]]]:
        result: dict[str, list[dict[str, Any]]] = {}
        for device_id in self.fleet.hardware:
            entries = [e for e in self.plays(device_id) if e["broadcast_id"] == broadcast_id]
            if entries:
                result[device_id] = entries
        return result

    async def attacker(
        self, subscribe: str | None = None, on_message: Callable[[str, bytes], None] | None = None
    ) -> MqttConnection:
        """A client holding the controller's broker credentials (someone who can publish
        on the broker) but not the controller's signing key."""
        conn = MqttConnection(
            client_id=f"attacker-{time.monotonic_ns()}",
            broker=BrokerAddress("127.0.0.1", self.prepared.broker_port).with_credentials(
                "dalaba-controller", self.prepared.controller_password
            ),
            on_message=on_message or (lambda _t, _p: None),
            subscriptions=[(subscribe, 1)] if subscribe else [],
            session_expiry_s=0,
        )
        await conn.start()
        return conn


CountyFactory = Callable[..., Awaitable[County]]


@pytest.fixture
async def make_county(tmp_path: Path) -> AsyncIterator[CountyFactory]:
    started: list[County] = []

    async def factory(villages: int = 12, **kw: Any) -> County:
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
    async def check() -> bool:
        _, body = await county.api("GET", "/api/devices")
        return bool(body["online"] == body["total"] == len(county.fleet.agents))

    return check


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


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
    demo's console users (see dalaba.demo)."""
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
