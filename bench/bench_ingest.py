"""Ingest benchmark: delivery reports stored per second, acknowledged after commit
versus acknowledged on arrival (the behaviour before issue 8), in one run.

Per database (SQLite always; PostgreSQL too when it answers on 127.0.0.1:5432) and
per behaviour, alternating, `--repeats` times:

- a fresh database seeded with `--terminals` terminals and `--broadcasts` broadcasts,
  one delivery per terminal and broadcast, each `sent`;
- a fresh private Mosquitto with the product's config, password file and ACL
  (`dalaba_ops.broker`): the controller's account, and one controller-replica account per
  publisher (`dalaba-controller-2`, ... : the only accounts allowed to publish on every
  terminal's topics);
- the controller's real path in this process: `controller.dispatch.Dispatcher` (its
  account, persistent session, production subscriptions) handing every message with
  its acknowledgement to `controller.ingest.Ingestor` (SQLite or PostgreSQL), with
  `ack_after_commit=True` (today) or `False` (the baseline: acknowledged on arrival);
- `--publishers` plain `dalaba.mqtt.MqttConnection` publishers in a child process,
  each publishing the reports of every `--publishers`-th terminal, QoS 1, as fast as
  the broker takes them: per broadcast, every terminal's `received`, then every
  `fetched`, `playing` and `done` (a county-wide broadcast's pattern; one terminal's
  reports always go through one connection, so they stay in order).

Measured: from the first report reaching the controller to the database holding every
delivery `done` (polled every `POLL_S`), and every delivery's four transitions checked
afterwards. Reports stored per second = reports / that time.

Run: .venv/bin/python bench/bench_ingest.py [--terminals 1000] [--broadcasts 5]
Writes bench/results/ingest-<date>.md and .json. Everything runs under a temporary
directory (and a throwaway PostgreSQL database) removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import shlex
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

with warnings.catch_warnings():
    # pydub probes for the removed stdlib audioop module (same filter as the test suite).
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import paho.mqtt
    import sqlalchemy
    from machine import machine_facts
    from sqlmodel import Session, col, func, select

    from controller import deliveries as dm
    from controller.db import Database
    from controller.dispatch import Dispatcher
    from controller.ingest import Ingestor
    from controller.models import (
        Broadcast,
        Delivery,
        DeliveryTransition,
        Device,
        Media,
        Township,
        Village,
    )
    from dalaba import protocol as p
    from dalaba.mqtt import BrokerAddress, MqttConnection
    from dalaba.signing import Ed25519Signer
    from dalaba_ops.broker import (
        CONTROLLER_USER,
        ControllerAccount,
        DeviceAccount,
        MosquittoProcess,
        controller_username,
        free_port,
        write_acl,
        write_broker_config,
        write_password_file,
    )

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
POLL_S = 0.05
RUN_TIMEOUT_S = 180.0
BATCH_MS = 50  # Settings.ingest_batch_ms's default
HISTORY_INTERVAL_S = 300  # Settings.telemetry_history_interval_s's default
# write_broker_config's: how many QoS 1 messages the broker has in flight to one client
# that sent no Receive Maximum (paho sends none), so how many reports can wait for their
# acknowledgement at the controller at once.
BROKER_MAX_INFLIGHT = 1000
CONTROLLER_PASSWORD = "bench-controller-secret"
PUBLISHER_PASSWORD = "bench-publisher-secret"
STATES = ("received", "fetched", "playing", "done")
VARIANTS = ("after_commit", "on_arrival")
VARIANT_TITLES = {
    "after_commit": "today: acknowledged after commit",
    "on_arrival": "baseline: acknowledged on arrival",
}
PG_HOST, PG_PORT = "127.0.0.1", 5432


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def device_id(i: int) -> str:
    return f"d-{i + 1:05d}"


def broadcast_id(b: int) -> str:
    return f"b-{b + 1:03d}"


# ---------------------------------------------------------------------- publishers


def report_payloads(
    terminals: int, broadcasts: int, publishers: int
) -> list[list[tuple[str, bytes]]]:
    """Each publisher's (topic, report), in the order it publishes them."""
    out: list[list[tuple[str, bytes]]] = [[] for _ in range(publishers)]
    seq = [0] * terminals
    for b in range(broadcasts):
        for state in STATES:
            for i in range(terminals):
                seq[i] += 1
                report = p.DeliveryReport(
                    device_id=device_id(i),
                    broadcast_id=broadcast_id(b),
                    command_id=f"c-{b + 1:03d}",
                    state=p.DeliveryState(state),
                    at=p.now_ms(),
                    seq=seq[i],
                )
                out[i % publishers].append((p.Topics.device_ack(device_id(i)), report.to_bytes()))
    return out


async def publish_all(port: int, terminals: int, broadcasts: int, publishers: int) -> None:
    """The child process: connect the publishers, publish every report, wait for the
    broker to acknowledge the last of each, print the timings as JSON."""
    payloads = report_payloads(terminals, broadcasts, publishers)
    conns = [
        MqttConnection(
            client_id=controller_username(2 + j),
            broker=BrokerAddress("127.0.0.1", port).with_credentials(
                controller_username(2 + j), PUBLISHER_PASSWORD
            ),
            on_message=lambda _t, _p: None,
            subscriptions=[],
            session_expiry_s=0,
            max_inflight=1000,
        )
        for j in range(publishers)
    ]
    await asyncio.gather(*(c.start() for c in conns))
    started = time.monotonic()

    async def run(conn: MqttConnection, reports: list[tuple[str, bytes]]) -> None:
        for n, (topic, payload) in enumerate(reports[:-1]):
            conn.publish(topic, payload, qos=1)
            if n % 200 == 199:
                await asyncio.sleep(0)  # let paho write what is queued
        # The broker acknowledges one connection's publishes in order: the last PUBACK
        # means every report of this publisher is with the broker.
        topic, payload = reports[-1]
        await conn.publish_confirmed(topic, payload, timeout_s=RUN_TIMEOUT_S)

    await asyncio.gather(*(run(c, r) for c, r in zip(conns, payloads, strict=True)))
    published = time.monotonic()
    await asyncio.gather(*(c.stop() for c in conns))
    print(json.dumps({"publish_s": published - started}), flush=True)


# ---------------------------------------------------------------------- databases


@contextmanager
def sqlite_url(work: Path) -> Iterator[str]:
    path = work / f"ingest-{uuid.uuid4().hex[:8]}.db"
    try:
        yield f"sqlite:///{path}"
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def postgres_answers() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def postgres_url() -> Iterator[str]:
    """A throwaway database on the local PostgreSQL, dropped afterwards (as
    tests/support.py makes them)."""
    import psycopg

    name = f"dalaba_bench_{uuid.uuid4().hex[:12]}"
    admin = None
    for user in ("postgres", "root"):
        try:
            admin = psycopg.connect(
                host=PG_HOST, port=PG_PORT, user=user, dbname="postgres", autocommit=True
            )
            break
        except psycopg.OperationalError:
            continue
    if admin is None:
        raise RuntimeError("PostgreSQL answers but refuses the postgres and root roles")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://{admin.info.user}@{PG_HOST}:{PG_PORT}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(session: Session, terminals: int, broadcasts: int) -> None:
    townships = sorted({i // 30 for i in range(terminals)})
    session.add_all(Township(id=f"t-{t + 1:03d}", name="镇", lat=0, lon=0) for t in townships)
    session.flush()
    session.add_all(
        Village(id=f"v-{i + 1:05d}", township_id=f"t-{i // 30 + 1:03d}", name="村", lat=0, lon=0)
        for i in range(terminals)
    )
    session.flush()
    session.add_all(
        Device(
            id=device_id(i), village_id=f"v-{i + 1:05d}", township_id=f"t-{i // 30 + 1:03d}",
            name="村",
        )
        for i in range(terminals)
    )  # fmt: skip
    now = p.now_ms()
    session.add(
        Media(
            sha256="a" * 64, mime="audio/ogg", size=1, duration_ms=60_000, source="speech",
            created_ms=now,
        )
    )  # fmt: skip
    session.flush()
    for b in range(broadcasts):
        session.add(
            Broadcast(
                id=broadcast_id(b), created_ms=now, created_by="bench", media_sha256="a" * 64,
                category="flood", priority="notice", targets={"all": True},
                target={"all": True}, start_at_ms=now, expires_at_ms=now + 3_600_000,
                dispatch="published", command_id=f"c-{b + 1:03d}", device_count=terminals,
            )
        )  # fmt: skip
    session.flush()
    for b in range(broadcasts):
        dm.insert_new(
            session,
            broadcast_id(b),
            ((device_id(i), p.DeliveryState.SENT) for i in range(terminals)),
            now,
        )


def count_done(session: Session) -> int:
    return int(
        session.exec(
            select(func.count()).select_from(Delivery).where(col(Delivery.state) == "done")
        ).one()
    )


def transitions_recorded(session: Session) -> tuple[int, int]:
    """(deliveries with every one of the four reports recorded, deliveries)."""
    seen: dict[tuple[str, str], set[str]] = {}
    for b, d, state in session.exec(
        select(DeliveryTransition.broadcast_id, DeliveryTransition.device_id,
               DeliveryTransition.state)
    ):  # fmt: skip
        seen.setdefault((b, d), set()).add(state)
    rows = session.exec(select(func.count()).select_from(Delivery)).one()
    complete = sum(1 for states in seen.values() if set(STATES) <= states)
    return complete, int(rows)


# ---------------------------------------------------------------------- one run


@dataclass
class Arrivals:
    count: int = 0
    first: float | None = None
    last: float | None = None

    def note(self) -> None:
        now = time.monotonic()
        self.count += 1
        if self.first is None:
            self.first = now
        self.last = now


@dataclass
class RunResult:
    backend: str
    scenario: str
    variant: str
    repeat: int
    reports: int
    store_s: float  # first report at the controller -> every delivery `done` in the DB
    arrival_s: float  # first -> last report at the controller
    publish_s: float  # the publishers' first publish -> the broker's last PUBACK
    complete: int
    deliveries: int
    arrived: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def stored_per_s(self) -> float:
        return self.reports / self.store_s


async def run_one(
    work: Path,
    backend: str,
    url: str,
    scenario: str,
    variant: str,
    repeat: int,
    args: argparse.Namespace,
) -> RunResult:
    terminals, broadcasts, publishers = args.terminals, args.broadcasts, args.publishers
    total = terminals * broadcasts * len(STATES)
    db = Database(url)
    db.start()
    broker: MosquittoProcess | None = None
    ingestor: Ingestor | None = None
    dispatcher: Dispatcher | None = None
    try:
        await db.run(lambda s: seed(s, terminals, broadcasts))
        port = free_port()
        files = write_broker_config(work / f"broker-{backend}-{scenario}-{variant}-{repeat}", port)
        if args.max_inflight is not None:
            conf = files.config.read_text()
            files.config.write_text(
                conf.replace(
                    f"max_inflight_messages {BROKER_MAX_INFLIGHT}\n",
                    f"max_inflight_messages {args.max_inflight}\n",
                )
            )
        devices = [
            DeviceAccount(device_id(i), f"v-{i + 1:05d}", f"t-{i // 30 + 1:03d}", f"pw-{i}")
            for i in range(terminals)
        ]
        replicas = [
            ControllerAccount(controller_username(2 + j), PUBLISHER_PASSWORD)
            for j in range(publishers)
        ]
        write_password_file(
            files.password_file, CONTROLLER_PASSWORD, devices, extra_controllers=replicas
        )
        write_acl(files.acl_file, devices, extra_controllers=replicas)
        broker = MosquittoProcess(files, port)
        await broker.start_async()

        ingestor = Ingestor(
            db,
            batch_ms=BATCH_MS,
            history_interval_s=HISTORY_INTERVAL_S,
            ack_after_commit=variant == "after_commit",
        )
        await ingestor.start()
        arrivals = Arrivals()
        ingest = ingestor

        def on_report(device: str, kind: str, payload: bytes, ack: Callable[[], None]) -> None:
            arrivals.note()
            ingest.submit(device, kind, payload, ack)

        address = BrokerAddress("127.0.0.1", port).with_credentials(
            CONTROLLER_USER, CONTROLLER_PASSWORD
        )
        signer = Ed25519Signer.generate()
        dispatcher = Dispatcher(address, signer, on_report)
        await dispatcher.start()
        await wait_subscribed(port, arrivals)
        await ingestor.flush()  # the probe stored and acknowledged: nothing owed
        arrivals.count, arrivals.first, arrivals.last = 0, None, None

        child = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), "--publish", str(port),
            "--terminals", str(terminals), "--broadcasts", str(broadcasts),
            "--publishers", str(publishers),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        if scenario == "backlog":
            # The controller is away (a clean stop: its session and subscriptions stay)
            # while every report is published; the broker queues them all in its session.
            await dispatcher.stop()
            dispatcher = None
            out, _ = await asyncio.wait_for(child.communicate(), RUN_TIMEOUT_S)
            dispatcher = Dispatcher(address, signer, on_report)
            await dispatcher.start()
        deadline = time.monotonic() + RUN_TIMEOUT_S
        done = 0
        while done < terminals * broadcasts:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{backend}/{scenario}/{variant}: only {done} done")
            await asyncio.sleep(POLL_S)
            if arrivals.first is not None:
                done = await db.run(count_done)
        all_done = time.monotonic()
        if scenario == "live":
            out, _ = await asyncio.wait_for(child.communicate(), RUN_TIMEOUT_S)
        if child.returncode != 0:
            raise RuntimeError(f"publisher exited with {child.returncode}")
        publish_s = float(json.loads(out.decode().strip().splitlines()[-1])["publish_s"])
        complete, deliveries = await db.run(transitions_recorded)
        assert arrivals.first is not None and arrivals.last is not None
        return RunResult(
            backend=backend,
            scenario=scenario,
            variant=variant,
            repeat=repeat,
            reports=total,
            store_s=all_done - arrivals.first,
            arrival_s=arrivals.last - arrivals.first,
            publish_s=publish_s,
            complete=complete,
            deliveries=deliveries,
            arrived=arrivals.count,
            extra={"ingestor_counters": dict(ingestor.counters)},
        )
    finally:
        if dispatcher is not None:
            await dispatcher.stop()
        if ingestor is not None:
            await ingestor.stop()
        db.stop()
        if broker is not None:
            broker.stop()


async def wait_subscribed(port: int, arrivals: Arrivals) -> None:
    """The Dispatcher returns at CONNACK; its subscriptions are live once a terminal
    status published by another client comes through."""
    probe = MqttConnection(
        client_id=controller_username(2),
        broker=BrokerAddress("127.0.0.1", port).with_credentials(
            controller_username(2), PUBLISHER_PASSWORD
        ),
        on_message=lambda _t, _p: None,
        subscriptions=[],
        session_expiry_s=0,
    )
    await probe.start()
    try:
        status = p.DeviceStatus(device_id=device_id(0), online=True, at=p.now_ms())
        deadline = time.monotonic() + 10
        while arrivals.count == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the controller's subscriptions never came up")
            await probe.publish_confirmed(p.Topics.device_status(device_id(0)), status.to_bytes())
            await asyncio.sleep(0.05)
    finally:
        await probe.stop()


# ---------------------------------------------------------------------- report


def med_max(values: list[float], digits: int = 0) -> str:
    if not values:
        return "–"
    return f"{statistics.median(values):.{digits}f} / {max(values):.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    facts, args = result["machine"], result["args"]
    total = args["terminals"] * args["broadcasts"] * len(STATES)
    out = [
        f"# Ingest benchmark: delivery reports stored per second, {result['date']}",
        "",
        f"- Machine: {facts['nproc']} CPUs (`nproc`), {facts['cpu']}, {facts['ram']} RAM; "
        f"{facts['os']}; load average {result['load_before']} before, "
        f"{result['load_after']} after (the machine is shared: other work may run beside it)",
        f"- Versions: {facts['mosquitto']}; Python {facts['python']}; "
        f"paho-mqtt {result['paho']}; SQLAlchemy {result['sqlalchemy']}; "
        f"SQLite {result['sqlite']}; PostgreSQL {result['postgres'] or 'not reachable'}",
        f"- Command: `{result['command']}` (took {result['took_s']:.0f} s)",
        f"- Load per run: {args['terminals']} terminals × {args['broadcasts']} broadcasts × "
        f"4 reports (`received`, `fetched`, `playing`, `done`) = **{total} delivery "
        f"reports**, published QoS 1 by {args['publishers']} `dalaba.mqtt.MqttConnection`s "
        "(controller-replica accounts) in a child process, as fast as the broker takes "
        "them; per broadcast every terminal's `received`, then every `fetched`, and so on.",
        "- Controller path, in the benchmark's process: `Dispatcher` (the controller's "
        "account, persistent session) → `Ingestor(db, batch_ms="
        f"{BATCH_MS}, history_interval_s={HISTORY_INTERVAL_S}, ack_after_commit=…)` on a "
        "fresh database seeded with the terminals, broadcasts and `sent` deliveries. A "
        "fresh private Mosquitto (the product's config, password file and ACL; "
        f"`max_inflight_messages {args['max_inflight']}`) per run. "
        f"SQLite file on {result['sqlite_fs']}.",
        "- Two scenarios. **backlog**: the controller is away (a clean stop; its session "
        "stays) while every report is published, and the broker queues them all; then the "
        "controller starts and drains them: the ingest path alone, and the case ack after "
        "commit is for (a controller back from a crash or an upgrade). **live**: the "
        "controller runs while the publishers publish, so the publishers, the broker and "
        "the controller share the 2 cores.",
        "- **Stored per second** = reports ÷ (first report at the controller → the database "
        f"holding every delivery `done`, polled every {POLL_S * 1000:.0f} ms). Afterwards "
        "every delivery is checked for all four transitions.",
        f"- {args['repeats']} runs per database, scenario and behaviour, alternating: **today** "
        "(`ack_after_commit=True`: the broker's acknowledgement is sent after the batch's "
        "transaction commits) and the **baseline** from the same run (`False`: "
        "acknowledged on arrival, as before issue 8).",
        "",
        "Median / max over the runs.",
        "",
    ]
    sections = [(b, sc) for b in result["backends"] for sc in result["scenarios"]]
    for backend, scenario in sections:
        rows = [r for r in result["runs"] if (r["backend"], r["scenario"]) == (backend, scenario)]
        by = {v: [r for r in rows if r["variant"] == v] for v in VARIANTS}
        out += [
            f"## {backend}, {scenario}",
            "",
            f"| | {VARIANT_TITLES['after_commit']} | {VARIANT_TITLES['on_arrival']} |",
            "| --- | --- | --- |",
            "| **reports stored per second** | "
            + " | ".join(f"**{med_max([r['stored_per_s'] for r in by[v]])}**" for v in VARIANTS)
            + " |",
            "| first report at the controller → all stored (s) | "
            + " | ".join(med_max([r["store_s"] for r in by[v]], 2) for v in VARIANTS)
            + " |",
            "| first → last report at the controller (s) | "
            + " | ".join(med_max([r["arrival_s"] for r in by[v]], 2) for v in VARIANTS)
            + " |",
            "| publishers: first publish → last PUBACK (s), before the controller "
            "returns in *backlog* | "
            + " | ".join(med_max([r["publish_s"] for r in by[v]], 2) for v in VARIANTS)
            + " |",
            "| deliveries with all 4 reports recorded | "
            + " | ".join(
                ", ".join(f"{r['complete']}/{r['deliveries']}" for r in by[v]) for v in VARIANTS
            )
            + " |",
            "",
        ]
    out += [
        "## Per run",
        "",
        "| database | scenario | behaviour | run | stored/s | all stored (s) | arrivals (s) "
        "| publish (s) | reports at the controller |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["runs"]:
        out.append(
            f"| {r['backend']} | {r['scenario']} | {r['variant']} | {r['repeat']} "
            f"| {r['stored_per_s']:.0f} "
            f"| {r['store_s']:.2f} | {r['arrival_s']:.2f} | {r['publish_s']:.2f} "
            f"| {r['arrived']} |"
        )
    return "\n".join(out)


# ---------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="dalaba-bench-ingest-"))
    backends = ["sqlite"] + (["postgresql"] if args.postgres and postgres_answers() else [])
    scenarios = args.scenarios.split(",")
    runs: list[RunResult] = []
    try:
        for backend in backends:
            for scenario in scenarios:
                for repeat in range(1, args.repeats + 1):
                    for variant in VARIANTS:
                        make_url = sqlite_url(work) if backend == "sqlite" else postgres_url()
                        with make_url as url:
                            r = await run_one(work, backend, url, scenario, variant, repeat, args)
                        log(
                            f"{backend} {scenario} {variant} run {repeat}: "
                            f"{r.stored_per_s:.0f} reports/s "
                            f"({r.reports} in {r.store_s:.2f} s; arrivals {r.arrival_s:.2f} s; "
                            f"complete {r.complete}/{r.deliveries})"
                        )
                        runs.append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "backends": backends,
        "scenarios": scenarios,
        "runs": [
            {
                "backend": r.backend,
                "scenario": r.scenario,
                "variant": r.variant,
                "repeat": r.repeat,
                "reports": r.reports,
                "stored_per_s": r.stored_per_s,
                "store_s": r.store_s,
                "arrival_s": r.arrival_s,
                "publish_s": r.publish_s,
                "complete": r.complete,
                "deliveries": r.deliveries,
                "arrived": r.arrived,
                **r.extra,
            }
            for r in runs
        ],
    }


def postgres_version() -> str | None:
    if not postgres_answers():
        return None
    try:
        out = subprocess.run(
            ["psql", "-h", PG_HOST, "-U", "postgres", "-Atc", "show server_version"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return out.stdout.strip() or "reachable"
    except OSError:
        return "reachable"


def filesystem_of(path: Path) -> str:
    out = subprocess.run(
        ["df", "-T", str(path)], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return out[-1].split()[1] if len(out) > 1 else "?"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terminals", type=int, default=1000)
    parser.add_argument("--broadcasts", type=int, default=5)
    parser.add_argument("--publishers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="runs per database and behaviour")
    parser.add_argument("--no-postgres", dest="postgres", action="store_false")
    parser.add_argument(
        "--scenarios",
        default="backlog,live",
        help="backlog: reports queued while the controller is away, then drained; "
        "live: published while the controller runs",
    )
    parser.add_argument(
        "--max-inflight",
        type=int,
        help=f"the broker's max_inflight_messages instead of dalaba's {BROKER_MAX_INFLIGHT}",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--publish", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.publish:
        asyncio.run(publish_all(args.publish, args.terminals, args.broadcasts, args.publishers))
        return
    started = time.monotonic()
    load_before = load_average()
    result = asyncio.run(main_async(args))
    today = datetime.date.today().isoformat()
    result.update(
        date=today,
        command=" ".join(
            [".venv/bin/python", "bench/bench_ingest.py", *map(shlex.quote, sys.argv[1:])]
        ),
        took_s=time.monotonic() - started,
        machine=machine_facts(),
        paho=paho.mqtt.__version__,
        sqlalchemy=sqlalchemy.__version__,
        sqlite=sqlite3.sqlite_version,
        postgres=postgres_version() if "postgresql" in result["backends"] else None,
        sqlite_fs=filesystem_of(Path(tempfile.gettempdir())),
        load_before=load_before,
        load_after=load_average(),
        args={
            "terminals": args.terminals,
            "broadcasts": args.broadcasts,
            "publishers": args.publishers,
            "repeats": args.repeats,
            "max_inflight": args.max_inflight or BROKER_MAX_INFLIGHT,
        },
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"ingest-{today}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
    log(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
