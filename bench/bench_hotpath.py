"""Controller hot path at province scale (issue 15, item 1): what the controller itself
spends per broadcast at 10,000 terminals, without the fleet or the broker.

Per database (SQLite file; PostgreSQL on 127.0.0.1:5432 in a throwaway database when it
answers), in this one process, with `--terminals` terminals provisioned (online):

- **create**: `BroadcastService.create` (the service behind POST /api/broadcasts, a
  county-wide `notice` of an uploaded recording) from the call to its return (the 201),
  `--creates` times. The dispatcher is the real `controller.dispatch.Dispatcher` whose
  MQTT connection is stubbed: the command is sealed (signed) once as in production, and
  the stub's publish returns at once, so the figure is the controller's own work
  (resolve targets, media-in-place check, the deliveries written, sign, the dispatch
  state recorded) without a broker round trip. `before publish` is from the call to
  the stubbed publish.
- **ingest**: `4 x terminals` delivery reports (received, fetched, playing, done for
  every terminal of the last broadcast) through `controller.ingest.Ingestor` (`submit`:
  parsing as on arrival; `flush`: the write path of every batch), `--batch` reports per
  flush (the 50 ms batching window gathers ~500 to 2,000 at this rate). Reports per
  second = reports / total time; every delivery is checked `done` afterwards.
- **GET**: `BroadcastService.get` then `schemas.respond` (the body GET
  /api/broadcasts/{id} sends): time and body size, default and `?deliveries=0`.

Wall time and this process's CPU time (`process_time`, every thread) are both kept: on
a shared machine the wall time carries everyone else's load, and for SQLite (in this
process) the CPU time is the controller's whole cost. For PostgreSQL the server's own
CPU is not in it.

`--code DIR` runs the same on another tree's controller (for the "before" figures:
`git archive <commit> | tar -x -C DIR`).

Run: .venv/bin/python bench/bench_hotpath.py [--terminals 10000] [--out NAME]
Writes bench/results/<NAME>.md and .json (default hotpath-<date>).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import shlex
import socket
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _code_root() -> Path:
    if "--code" in sys.argv:
        return Path(sys.argv[sys.argv.index("--code") + 1]).resolve()
    return HERE.parent


sys.path.insert(0, str(_code_root()))
sys.path.insert(1, str(HERE))

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from machine import machine_facts
    from sqlmodel import Session, col, func, select

    from controller import schemas
    from controller.auth import Principal, Role
    from controller.broadcasts import BroadcastIn, BroadcastService
    from controller.db import Database
    from controller.dispatch import Dispatcher
    from controller.ingest import Ingestor
    from controller.media import MediaStore
    from controller.models import Delivery, Device, Media, Township, Village
    from controller.settings import Settings
    from dalaba import protocol as p
    from dalaba.mqtt import BrokerAddress
    from dalaba.signing import Ed25519Signer

PG = ("127.0.0.1", 5432)
STATES = ("received", "fetched", "playing", "done")
SHA = "b" * 64


class StubMqtt:
    """The broker connection, answering every publish at once (counted)."""

    def __init__(self) -> None:
        self.published = 0
        self.first_at: float | None = None

    async def publish_confirmed(self, topic: str, payload: bytes, **_: Any) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.published += 1


def seed(session: Session, terminals: int) -> None:
    per_township = 300
    townships = (terminals + per_township - 1) // per_township
    session.add_all(
        Township(id=f"t{t:03d}", name="镇", lat=0, lon=0) for t in range(townships)
    )  # fmt: skip
    session.flush()
    villages = (terminals + 2) // 3
    session.add_all(
        Village(id=f"t{(v * 3) // per_township:03d}-v{v:05d}",
                township_id=f"t{(v * 3) // per_township:03d}", name="村", lat=0, lon=0)
        for v in range(villages)
    )  # fmt: skip
    session.flush()
    session.add_all(
        Device(id=device_id(i), village_id=f"t{i // per_township:03d}-v{i // 3:05d}",
               township_id=f"t{i // per_township:03d}", name="村", online=True)
        for i in range(terminals)
    )  # fmt: skip
    session.add(
        Media(sha256=SHA, mime="audio/ogg", size=1, duration_ms=30_000, source="upload",
              created_ms=0, text="bench")
    )  # fmt: skip


def device_id(i: int) -> str:
    return f"d{i:06d}"


def count_done(session: Session, broadcast_id: str) -> int:
    return int(
        session.exec(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.broadcast_id == broadcast_id)
            .where(col(Delivery.state) == "done")
        ).one()
    )


@contextmanager
def throwaway_postgres() -> Iterator[str | None]:
    try:
        with socket.create_connection(PG, timeout=0.5):
            pass
        import psycopg
    except (OSError, ImportError):
        yield None
        return
    name = f"dalaba_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(host=PG[0], port=PG[1], user="postgres", dbname="postgres",
                            autocommit=True)  # fmt: skip
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@{PG[0]}:{PG[1]}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run_backend(name: str, url: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    db = Database(url)
    db.start()
    try:
        t0 = time.perf_counter()
        db.run_sync(lambda s: seed(s, args.terminals))
        seed_s = time.perf_counter() - t0
        settings = Settings(demo=True)  # no secrets are used: the broker is stubbed
        stub = StubMqtt()
        dispatcher = Dispatcher(
            BrokerAddress("127.0.0.1", 1, username="dalaba-controller"),
            Ed25519Signer(Ed25519PrivateKey.generate()),
            lambda *_: None,
        )
        dispatcher.mqtt = stub  # type: ignore[assignment]
        service = BroadcastService(
            db,
            MediaStore(tmp / "media", db),
            None,
            dispatcher,
            settings,  # type: ignore[arg-type]
        )
        officer = Principal(user="bench", role=Role.DUTY_OFFICER)
        body = BroadcastIn.model_validate(
            {"media_id": SHA, "category": "flood", "priority": "notice", "title": "bench",
             "targets": {"all": True}}
        )  # fmt: skip
        creates: list[dict[str, float]] = []
        broadcast_id = ""
        for _ in range(args.creates):
            stub.first_at = None
            start, cpu = time.perf_counter(), time.process_time()
            broadcast = await service.create(officer, body)
            end, cpu_end = time.perf_counter(), time.process_time()
            assert stub.first_at is not None
            broadcast_id = broadcast.id
            creates.append(
                {
                    "total_ms": (end - start) * 1000,
                    "before_publish_ms": (stub.first_at - start) * 1000,
                    "cpu_ms": (cpu_end - cpu) * 1000,
                }
            )
        # Ingest: every terminal's four reports for the last broadcast.
        ingestor = Ingestor(db)
        seq = int(time.time() * 1_000_000)
        reports: list[tuple[str, bytes]] = []
        at = p.now_ms()
        for state in STATES:
            for i in range(args.terminals):
                seq += 1
                msg = p.DeliveryReport(
                    device_id=device_id(i), broadcast_id=broadcast_id,
                    command_id=broadcast.command_id, state=p.DeliveryState(state), at=at, seq=seq,
                )  # fmt: skip
                reports.append((device_id(i), msg.to_bytes()))
        start, cpu = time.perf_counter(), time.process_time()
        for k in range(0, len(reports), args.batch):
            for device, payload in reports[k : k + args.batch]:
                ingestor.submit(device, "ack", payload)
            await ingestor.flush()
        ingest_s = time.perf_counter() - start
        ingest_cpu_s = time.process_time() - cpu
        done = db.run_sync(lambda s: count_done(s, broadcast_id))
        assert done == args.terminals, f"{name}: {done} of {args.terminals} done"
        not_applied = ingestor.counters.get("reports_not_applied", 0)
        # GET, default and counts only.
        gets: dict[str, dict[str, float]] = {}
        for label, kwargs in (("default", {}), ("deliveries=0", {"deliveries": False})):
            times, cpus, size = [], [], 0
            for _ in range(3):
                start, cpu = time.perf_counter(), time.process_time()
                view = await service.get(officer, broadcast_id, **kwargs)
                response = schemas.respond(schemas.BroadcastDetail, view, bulk="deliveries")
                times.append((time.perf_counter() - start) * 1000)
                cpus.append((time.process_time() - cpu) * 1000)
                size = len(response.body)  # type: ignore[arg-type]
            gets[label] = {"ms": statistics.median(times), "cpu_ms": statistics.median(cpus),
                           "bytes": size,
                           "deliveries": len(view.get("deliveries") or [])}  # fmt: skip
        return {
            "backend": name,
            "seed_s": round(seed_s, 2),
            "creates": creates,
            "create_median_ms": round(statistics.median(c["total_ms"] for c in creates), 1),
            "before_publish_median_ms": round(
                statistics.median(c["before_publish_ms"] for c in creates), 1
            ),
            "create_cpu_median_ms": round(statistics.median(c["cpu_ms"] for c in creates), 1),
            "ingest_cpu_s": round(ingest_cpu_s, 3),
            "reports_per_cpu_s": round(len(reports) / ingest_cpu_s),
            "load_average": os.getloadavg(),
            "reports": len(reports),
            "ingest_s": round(ingest_s, 3),
            "reports_per_s": round(len(reports) / ingest_s),
            "reports_not_applied": not_applied,
            "get": gets,
        }
    finally:
        db.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--terminals", type=int, default=10_000)
    parser.add_argument("--creates", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--code", default=None, help="another tree's controller to measure")
    parser.add_argument("--out", default=None, help="results name (bench/results/<out>.md)")
    parser.add_argument("--label", default="this branch")
    parser.add_argument("--print-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = []
    with tempfile.TemporaryDirectory(prefix="dalaba-hotpath-") as tmp_name:
        tmp = Path(tmp_name)
        for backend in args.backends.split(","):
            if backend == "sqlite":
                results.append(await run_backend("sqlite", f"sqlite:///{tmp / 'b.db'}", args, tmp))
            else:
                with throwaway_postgres() as url:
                    if url is None:
                        print("PostgreSQL: no server on 127.0.0.1:5432; skipped")
                        continue
                    results.append(await run_backend("postgresql", url, args, tmp))
            print(json.dumps(results[-1]), flush=True)
    out = {
        "label": args.label,
        "code": str(_code_root()),
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "terminals": args.terminals,
        "batch": args.batch,
        "machine": machine_facts(),
        "results": results,
    }
    if args.print_only or (args.out is None and args.code is not None):
        print(json.dumps(out, indent=1))
        return
    name = args.out or f"hotpath-{datetime.date.today().isoformat()}"
    (HERE / "results" / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote bench/results/{name}.json")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    asyncio.run(main())
