"""Several controller replicas serving one county: real processes (two `dalaba
controller`, one Mosquitto, the simulated fleet) on one throwaway PostgreSQL database;
and a second controller on SQLite, refused.

What must hold (issue 15, item 4): a report is stored by one replica only (MQTT 5 shared
subscriptions), a console on either replica sees every terminal's progress (the
PostgreSQL NOTIFY relay), and exactly one replica (the leader) fires schedules: killed
before an occurrence's due time, the other takes over and fires it once.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from pydantic import SecretStr

from controller.db import Database
from controller.models import Media
from controller.schedules import store
from controller.schedules.models import Occurrence, Schedule
from dalaba_ops.broker import controller_username, free_port
from dalaba_ops.demo import PreparedCounty, setup_county
from firmware_sim.fleet import device_dir
from tests.procs import (
    Api,
    BrokerProc,
    Proc,
    controller_replica,
    dalaba_argv,
    read_json_lines,
    wait_until,
    write_env_file,
)
from tests.support import throwaway_postgres_url

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]

ZONE = ZoneInfo("Asia/Shanghai")
VILLAGES = 3


class ReplicaApi(Api):
    """`Api` (admin token) aimed at one replica's HTTP port."""

    def __init__(self, prepared: PreparedCounty, url: str, http: aiohttp.ClientSession) -> None:
        super().__init__(SimpleNamespace(prepared=prepared), http)  # type: ignore[arg-type]
        self._url = url

    @property
    def url(self) -> str:
        return self._url


@dataclass
class Cluster:
    prepared: PreparedCounty
    broker: BrokerProc
    replicas: dict[str, Proc]  # replica id -> its `dalaba controller`
    ports: dict[str, int]
    fleet: Proc

    @property
    def terminals(self) -> frozenset[str]:
        return frozenset(d for v in self.prepared.county.villages for d in v.device_ids())

    def api(self, replica: str, http: aiohttp.ClientSession) -> ReplicaApi:
        return ReplicaApi(self.prepared, f"http://127.0.0.1:{self.ports[replica]}", http)

    def plays_started(self, device_id: str, broadcast_id: str) -> list[dict[str, Any]]:
        path = device_dir(self.prepared.data_dir, device_id) / "plays-started.jsonl"
        return [e for e in read_json_lines(path) if e.get("broadcast_id") == broadcast_id]

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.log_tail(30)}" for p in (self.broker, *self.replicas.values())
        )

    def shutdown(self) -> None:
        for proc in (self.fleet, *self.replicas.values()):
            proc.kill()
        self.broker.stop()


@pytest.fixture
def pg_database() -> Iterator[str]:
    yield from throwaway_postgres_url()


@pytest.fixture
def cluster(pg_database: str, tmp_path: Path) -> Iterator[Cluster]:
    prepared = setup_county(
        tmp_path / "county",
        villages=VILLAGES,
        speech_backends=("espeak-ng",),
        telemetry_interval_s=2.0,
        console_users=False,
        database_url=pg_database,
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    # Each replica its own broker account (the broker binds client ids to accounts),
    # HTTP port and replica id; one database, one data directory (keys, media).
    replicas, ports = {}, {}
    for name, number in (("a", 1), ("b", 2)):
        replicas[name], ports[name] = controller_replica(prepared, number, tmp_path, logs)
    fleet = Proc(
        "fleet",
        # `--villages N` runs the first N terminals: every one of the county's here.
        dalaba_argv(
            "sim",
            "--data-dir",
            str(prepared.data_dir),
            "--villages",
            str(sum(len(v.device_ids()) for v in prepared.county.villages)),
        ),
        logs / "fleet.log",
    )
    broker = BrokerProc(prepared.broker.files, prepared.broker_port, logs / "broker.log")
    made = Cluster(prepared, broker, replicas, ports, fleet)
    try:
        broker.start()
        for proc in replicas.values():
            proc.start()
        fleet.start()
        yield made
    finally:
        made.shutdown()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def wait_ready(cluster: Cluster, http: aiohttp.ClientSession) -> dict[str, ReplicaApi]:
    apis = {name: cluster.api(name, http) for name in cluster.replicas}

    async def all_up() -> bool:
        for name, api in apis.items():
            if not cluster.replicas[name].running:
                raise AssertionError(f"{name} exited:\n{cluster.logs()}")
            if not await api.healthy():
                return False
        devices = await apis["a"].devices()
        return set(devices) == cluster.terminals and all(d["online"] for d in devices.values())

    await wait_until(all_up, 90, "both replicas up and every terminal online", detail=cluster.logs)
    return apis


async def leader_of(apis: dict[str, ReplicaApi]) -> str:
    async def one_leader() -> str | None:
        leaders = [n for n, api in apis.items() if (await api.metrics())["replica"]["leader"]]
        return leaders[0] if len(leaders) == 1 else None

    return await wait_until(one_leader, 30, "exactly one leader")


async def read_live(
    http: aiohttp.ClientSession, api: ReplicaApi, into: list[dict[str, Any]]
) -> None:
    """Every `delivery` event of one replica's /api/live stream, appended to `into`."""
    headers = {"Authorization": f"Bearer {api.county.prepared.admin_token}"}
    async with http.get(
        api.url + "/api/live", headers=headers, timeout=aiohttp.ClientTimeout(total=None)
    ) as resp:
        assert resp.status == 200
        kind = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: ") and kind == "delivery":
                into.append(json.loads(line[len("data: ") :]))


async def test_broadcast_through_one_replica_is_stored_once_and_seen_live_on_the_other(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    apis = await wait_ready(cluster, http)
    seen_on_b: list[dict[str, Any]] = []
    reader = asyncio.create_task(read_live(http, apis["b"], seen_on_b))
    try:
        await asyncio.sleep(1.0)  # the stream is open before anything happens
        created = await apis["a"].broadcast(text="村民请注意，今晚有大风。", targets={"all": True})
        bid = created["id"]

        async def all_done() -> bool:
            deliveries = await apis["a"].deliveries(bid)
            return set(deliveries) == cluster.terminals and all(
                d["state"] == "done" for d in deliveries.values()
            )

        await wait_until(all_done, 60, f"{bid} done everywhere", detail=cluster.logs)

        def done_live_on_b() -> set[str]:
            return {
                e["device_id"]
                for e in seen_on_b
                if e["broadcast_id"] == bid and e["state"] == "done"
            }

        async def b_saw_everything() -> bool:
            return done_live_on_b() == cluster.terminals

        await wait_until(
            b_saw_everything,
            20,
            "replica b's live view showing every terminal done",
            detail=lambda: f"b saw done from {sorted(done_live_on_b())}",
        )
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    # Stored once: each report reached one replica (shared subscription). Had every
    # replica received every report, half of all arrivals would have found their
    # report already applied by the other. A few may legitimately not apply: a
    # terminal's reports taken in by two replicas can be stored out of order, and the
    # older one then loses to the newer one's sequence number.
    metrics = {name: await api.metrics() for name, api in apis.items()}
    for name, m in metrics.items():
        assert m["replica"]["id"] == {"a": "replica-1", "b": "replica-2"}[name]
    arrived = {
        n: sum(v for k, v in m["ingest"].items() if k.startswith("received_"))
        for n, m in metrics.items()
    }
    acks = {n: m["ingest"].get("received_ack", 0) for n, m in metrics.items()}
    not_applied = sum(m["ingest"].get("reports_not_applied", 0) for m in metrics.values())
    assert all(n > 0 for n in acks.values()), f"reports were not shared: {acks}"
    assert not_applied * 4 < sum(acks.values()), (not_applied, acks, arrived)
    deliveries = await apis["b"].deliveries(bid)
    for device_id, d in deliveries.items():
        states = [t["state"] for t in d["transitions"]]
        assert len(states) == len(set(states)), (device_id, states)
        assert states[-1] == "done", (device_id, states)
    # Both replicas answer from the same database: the same view through either.
    assert (await apis["a"].deliveries(bid)).keys() == deliveries.keys()
    # The audio rendered by A is served by B as well (one shared data directory), so a
    # load balancer may send a terminal's fetch to either.
    media_id = (await apis["b"].broadcast_view(bid))["media_id"]
    bodies = []
    for api in apis.values():
        async with http.get(f"{api.url}/media/{media_id}") as resp:
            assert resp.status == 200, (api.url, resp.status)
            bodies.append(await resp.read())
    assert bodies[0] == bodies[1] and len(bodies[0]) > 0


def local_in(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(math.ceil(time.time() + seconds), ZONE)


async def test_leader_killed_before_a_due_time_the_other_fires_it_once(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    apis = await wait_ready(cluster, http)
    leader = await leader_of(apis)
    follower = next(n for n in apis if n != leader)
    due = local_in(25)
    # Created through the follower: it plans the occurrence in the database and the
    # leader picks it up (within a heartbeat) before it dies.
    _, schedule = await apis[follower].call(
        "POST",
        "/api/schedules",
        json_body={
            "name": "村务通知",
            "category": "fire_prevention",
            "priority": "notice",
            "text": "村务通知。",
            "targets": {"villages": [cluster.prepared.county.villages[0].id]},
            "recurrence": {
                "kind": "once",
                "times": [due.strftime("%H:%M:%S")],
                "start_date": due.date().isoformat(),
            },
        },
        expect=201,
    )
    schedule_id = schedule["id"]
    targeted = frozenset(cluster.prepared.county.villages[0].device_ids())

    # The leader dies well before the fire time (due minus the 3 s fire lead).
    await asyncio.sleep(max(0.0, due.timestamp() - time.time() - 12))
    cluster.replicas[leader].kill()
    assert await leader_of({follower: apis[follower]}) == follower

    async def fired() -> dict[str, Any] | None:
        _, body = await apis[follower].call(
            "GET", f"/api/schedules/{schedule_id}/occurrences", expect=200
        )
        found = body["occurrences"]
        return found[0] if found and found[0]["outcome"] != "scheduled" else None

    occurrence = await wait_until(fired, 40, "the occurrence settled", detail=cluster.logs)
    assert occurrence["outcome"] == "fired", occurrence
    oid = occurrence["id"]

    def started_once() -> bool:
        return all(len(cluster.plays_started(d, oid)) >= 1 for d in targeted)

    async def every_speaker_started() -> bool:
        return started_once()

    await wait_until(every_speaker_started, 40, "every targeted speaker playing it")
    await asyncio.sleep(3.0)  # a second fire would have reached the speakers by now
    for device_id in targeted:
        assert len(cluster.plays_started(device_id, oid)) == 1, device_id

    # The terminals' reports reach the surviving replica and are stored, every one:
    # the dead replica's share of the reports is not left waiting in its session.
    async def all_done() -> bool:
        deliveries = await apis[follower].deliveries(oid)
        return set(deliveries) == targeted and all(
            d["state"] == "done" for d in deliveries.values()
        )

    await wait_until(
        all_done,
        60,
        f"{oid} stored done for every targeted terminal",
        detail=lambda: str(cluster.logs()),
    )
    fired_lines = {
        name: proc.log_path.read_text(errors="replace").count(f"occurrence {oid} of")
        for name, proc in cluster.replicas.items()
    }
    assert fired_lines == {leader: 0, follower: 1}, fired_lines


async def test_a_second_controller_on_sqlite_is_refused(tmp_path: Path) -> None:
    prepared = setup_county(
        tmp_path / "county", villages=2, speech_backends=("espeak-ng",), console_users=False
    )
    logs = tmp_path / "logs"
    broker = BrokerProc(prepared.broker.files, prepared.broker_port, logs / "broker.log")
    first_env = write_env_file(prepared.settings, tmp_path / "first.env")
    second_env = write_env_file(
        prepared.settings,
        tmp_path / "second.env",
        broker_username=controller_username(2),
        broker_password=SecretStr(prepared.replica_password),
        http_port=free_port(),
    )
    first = Proc("first", dalaba_argv("controller", "--config", str(first_env)), logs / "a.log")
    broker.start()
    try:
        first.start()
        api = ReplicaApi(prepared, prepared.api_url, None)  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as http:
            api.http = http
            await wait_until(api.healthy, 60, "the first controller up", detail=first.log_tail)
        second = await asyncio.create_subprocess_exec(
            *dalaba_argv("controller", "--config", str(second_env)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(second.communicate(), 60)
        text = err.decode()
        assert second.returncode != 0
        assert "Traceback" not in text, text
        last = text.strip().splitlines()[-1]
        assert last.startswith("dalaba controller: error: another controller"), text
        assert "already runs on the SQLite database" in last, last
        assert "PostgreSQL" in last, last
        assert first.running  # the first goes on
        async with aiohttp.ClientSession() as http:
            api.http = http
            assert await api.healthy()
        # Once the first is gone, a controller may start on the database again.
        first.stop()
        third = Proc(
            "third", dalaba_argv("controller", "--config", str(second_env)), logs / "c.log"
        )
        third.start()
        try:
            again = ReplicaApi(prepared, f"http://127.0.0.1:{_port(second_env)}", None)  # type: ignore[arg-type]
            async with aiohttp.ClientSession() as http:
                again.http = http
                await wait_until(
                    again.healthy, 60, "a controller after the first", detail=third.log_tail
                )
        finally:
            third.kill()
    finally:
        first.kill()
        broker.stop()


def _port(env_file: Path) -> int:
    for line in env_file.read_text().splitlines():
        if line.startswith("DALABA_HTTP_PORT="):
            return int(line.split("=", 1)[1])
    raise AssertionError(f"no port in {env_file}")


def test_an_occurrence_is_claimed_by_one_replica_at_a_time(pg_database: str) -> None:
    """What keeps two replicas that both believe they lead from firing one occurrence
    twice: the claim is a row lock held to the end of the fire's transaction."""
    db = Database(pg_database)
    db.start()
    try:
        now = 1_760_000_000_000
        with db.session() as s:
            s.add(
                Media(
                    sha256="a" * 64,
                    mime="audio/ogg",
                    size=1,
                    duration_ms=1,
                    source="speech",
                    created_ms=now,
                )
            )
            s.flush()  # parents first: no relationships tell the ORM the order
            s.add(
                Schedule(
                    id="s1",
                    name="x",
                    created_ms=now,
                    created_by="t",
                    updated_ms=now,
                    updated_by="t",
                    recurrence={},
                    media_sha256="a" * 64,
                    category="meeting",
                    priority="notice",
                    targets={},
                    target={},
                    expires_in_s=60,
                    misfire_grace_s=60,
                )
            )
            s.flush()
            s.add(
                Occurrence(
                    id="occ-1",
                    schedule_id="s1",
                    due_ms=now,
                    expires_at_ms=now + 60_000,
                    created_ms=now,
                    updated_ms=now,
                )
            )
            s.commit()
        first, second = db.session(), db.session()
        try:
            assert store.claim_for_fire(first, "occ-1")
            assert not store.claim_for_fire(second, "occ-1")  # held: skipped, not waited on
            first.rollback()  # the first died mid-fire: the occurrence waits again
            second.rollback()
            assert store.claim_for_fire(second, "occ-1")
            occurrence = second.get(Occurrence, "occ-1")
            assert occurrence is not None
            occurrence.outcome = "fired"
            second.commit()
            assert not store.claim_for_fire(first, "occ-1")  # fired: nothing to claim
        finally:
            first.close()
            second.close()
    finally:
        db.stop()
