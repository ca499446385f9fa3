"""Database size of a 10,000-terminal province-year under the default retention policy,
and the time the nightly retention job takes.

1. Row sizes, measured: a fresh database at the newest schema (the product's own
   tables and indexes) is filled with generated rows shaped as the controller writes
   them (a telemetry sample is a real `Telemetry` dumped as ingest stores it, a
   delivery's history is the five `delivery_transition` rows of a played announcement,
   written with the product's own bulk statements, ...), `--rows` of each kind;
   bytes per row = the table's pages plus its indexes' pages (SQLite `dbstat` after
   VACUUM; PostgreSQL `pg_total_relation_size` after VACUUM ANALYZE) over the rows.
2. Row counts from stated assumptions (ASSUMPTIONS below), after one year and at the
   steady state the policy reaches after five years.
3. The nightly job: one day of raw telemetry (`JOB_TERMINALS` terminals, a sample every
   300 s) aged past 7 days and one day of hourly rollups aged past 90 days, rolled up
   and deleted by `apply_retention` with the default policy; its time, and the longest
   single transaction (on SQLite the ingest waits for it).

Run: .venv/bin/python bench/bench_retention_size.py [--rows 20000] [--job-terminals 500]
Writes <out-dir>/retention-size-<date>.md and .json (`--out-dir`, bench/results by
default). PostgreSQL: 127.0.0.1:5432 (trust, as in the tests), skipped with a line if
absent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shlex
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_facts
from sqlalchemy import insert, text
from sqlmodel import Session

from controller.db import Database
from controller.deliveries import INSERT_DELIVERY, INSERT_TRANSITION, REACHED, Bulk, executemany
from controller.retention import RetentionPolicy, plan
from dalaba import protocol as p

ROOT = Path(__file__).resolve().parent.parent
TERMINALS = 10_000
DAY_MS = 24 * 3600 * 1000
# What a province of 10,000 terminals writes, per day (the assumptions, stated).
ASSUMPTIONS: dict[str, Any] = {
    "terminals": TERMINALS,
    "telemetry_sent_every_s": 60,
    "telemetry_kept_every_s": 300,  # DALABA_TELEMETRY_HISTORY_INTERVAL_S (default)
    "deliveries_per_terminal_per_day": 8,  # 2 daily programmes, ~4 notices, ~2 other
    "transitions_per_delivery": 5,  # sent, received, fetched, playing, done
    # broadcast_count: a row per state its deliveries passed through (those 5, offline,
    # expired) and the REACHED pseudo-state; rows moved out of stay, with n 0.
    "count_rows_per_broadcast": 8,
    "broadcasts_per_day": 200,  # those 80,000 deliveries, ~400 terminals each
    "occurrences_per_day": 100,  # scheduled broadcasts among them
    "approval_requests_per_day": 2,
    "online_intervals_per_terminal_per_day": 2,  # an outage a day on average (4G)
    "fault_episodes_per_terminal_per_day": 0.05,
    "work_orders_per_day": 50,
    "audit_entries_per_day": 1000,
    "security_events_per_day": 100,
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ generated rows

NOW = p.now_ms()
TEXT = (
    "各位村民请注意：近期天干物燥，森林防火形势严峻。进山入林严禁携带火种，严禁野外用火，"
    "祭祀请文明低碳。发现火情请立即拨打12119或119报警。"
)


def device_id(n: int) -> str:
    # Distinct for n < 10,000, shaped like the demo county's (d-t01-v01-1).
    return f"d-t{n % 12 + 1:02d}-v{n % TERMINALS:04d}-1"


def telemetry_data(n: int, rng: random.Random) -> dict[str, Any]:
    t = p.Telemetry(
        device_id=device_id(n),
        at=NOW - rng.randrange(DAY_MS),
        firmware="0.3.0",
        uptime_s=rng.randrange(10**7),
        amplifier_on=rng.random() < 0.05,
        amplifier_ok=True,
        speaker_line_ok=rng.random() > 0.01,
        power_source="mains",
        battery_pct=rng.randrange(40, 101),
        temperature_c=round(rng.uniform(-10, 45), 1),
        signal_dbm=rng.randrange(-110, -50),
        volume=80,
        cache_bytes=rng.randrange(10**8),
        cache_items=rng.randrange(60),
        clock_offset_ms=rng.randrange(-500, 500),
        faults=(p.Fault.SPEAKER_LINE,) if rng.random() < 0.01 else (),
        schedule_version=rng.randrange(1, 500),
        interval_s=60,
    )
    return t.model_dump(mode="json", exclude={"v", "device_id"})


def rollup_data(rng: random.Random) -> dict[str, Any]:
    # As controller.retention writes them (its ROLLED_FIELDS).
    def stats(lo: float, hi: float) -> dict[str, Any]:
        a, b = sorted((round(rng.uniform(lo, hi), 1), round(rng.uniform(lo, hi), 1)))
        return {"min": a, "max": b, "avg": round(rng.uniform(a, b), 2)}

    return {
        "temperature_c": stats(-10, 45),
        "signal_dbm": stats(-110, -50),
        "battery_pct": stats(40, 100),
        "volume": stats(80, 80),
        "faults": [],
        "firmware": "0.3.0",
    }


PLAYED = ("sent", "received", "fetched", "playing", "done")
COUNTED = (*PLAYED, "offline", "expired", REACHED)


def rows_of(kind: str, n: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    for i in range(n):
        at = NOW - rng.randrange(365 * DAY_MS)
        dev = device_id(rng.randrange(TERMINALS))
        if kind == "telemetrysample":
            yield {"device_id": dev, "at_ms": at, "data": telemetry_data(i, rng)}
        elif kind in ("telemetryrollup_hour", "telemetryrollup_day"):
            period = kind.rsplit("_", 1)[1]
            step = 3_600_000 if period == "hour" else DAY_MS
            yield {"device_id": device_id(i % TERMINALS), "period": period,
                   "start_ms": NOW - NOW % step - (i // TERMINALS) * step,
                   "samples": 12 if period == "hour" else 288,
                   "data": rollup_data(rng)}  # fmt: skip
        elif kind == "delivery":
            yield {"broadcast_id": f"b{i // 400:031x}", "device_id": device_id(i % TERMINALS),
                   "state": "done", "reason": None, "updated_ms": at, "last_seq": 4,
                   "state_source": "device", "attempt": 0}  # fmt: skip
        elif kind == "delivery_transition":
            # Delivery d's history: PLAYED in order, the first the controller's (no seq).
            d, step = divmod(i, len(PLAYED))
            yield {"broadcast_id": f"b{d // 400:031x}", "device_id": device_id(d % TERMINALS),
                   "state": PLAYED[step], "at_ms": at, "rx_ms": at + rng.randrange(5, 80),
                   "reason": None, "inferred": False, "cause": None,
                   "seq": step or None, "offset_ms": None, "extra": None}  # fmt: skip
        elif kind == "broadcast_count":
            state = COUNTED[i % len(COUNTED)]
            yield {"broadcast_id": f"b{i // len(COUNTED):031x}", "state": state,
                   "n": rng.randrange(400) if state in ("done", REACHED) else
                   rng.randrange(3)}  # fmt: skip
        elif kind == "broadcast":
            yield {"id": uuid.uuid4().hex, "created_ms": at, "created_by": "duty-officer-1",
                   "title": "森林防火提醒", "text": TEXT, "media_sha256": "a" * 64,
                   "category": "forest_fire", "priority": "notice", "level": None, "drill": False,
                   "targets": {"townships": ["t03", "t07"]},
                   "target": {"townships": ["t03", "t07"]}, "start_at_ms": at + 1500,
                   "expires_at_ms": at + 6 * 3_600_000, "status": "finished", "swept": True,
                   "dispatch": "published", "command_id": uuid.uuid4().hex,
                   "voices": "zh-CN-XiaoxiaoNeural", "device_count": 400, "cancelled_ms": None,
                   "cancelled_by": None, "attempt": 0, "resends": []}  # fmt: skip
        elif kind == "onlineinterval":
            yield {"device_id": dev, "village_id": dev[2:11], "township_id": dev[2:5],
                   "start_ms": at, "end_ms": at + rng.randrange(DAY_MS),
                   "end_reason": rng.choice(("status", "will", "silent"))}  # fmt: skip
        elif kind == "faultepisode":
            yield {"device_id": dev, "village_id": dev[2:11], "township_id": dev[2:5],
                   "fault": rng.choice(("amplifier", "speaker_line", "on_battery")),
                   "start_ms": at, "end_ms": at + rng.randrange(DAY_MS),
                   "detail": {"opened_by": "event", "closed_by": "event"}}  # fmt: skip
        elif kind == "auditentry":
            yield {"at_ms": at, "actor": "duty-officer-1", "role": "duty_officer",
                   "action": "broadcast.create", "target": uuid.uuid4().hex,
                   "detail": {"category": "flood", "priority": "emergency", "level": 2,
                              "drill": False, "devices": 400}}  # fmt: skip
        elif kind == "securityevent":
            yield {"at_ms": at, "device_id": dev, "kind": "command_rejected",
                   "reason": "replayed", "command_id": uuid.uuid4().hex,
                   "broadcast_id": uuid.uuid4().hex, "known_command": True,
                   "detail": {}}  # fmt: skip


# Kind -> (table, how many rows a province writes per day under ASSUMPTIONS).
A = ASSUMPTIONS
PER_DAY: dict[str, float] = {
    "telemetrysample": A["terminals"] * 86_400 / A["telemetry_kept_every_s"],
    "telemetryrollup_hour": A["terminals"] * 24,
    "telemetryrollup_day": A["terminals"],
    "delivery": A["terminals"] * A["deliveries_per_terminal_per_day"],
    "delivery_transition": A["terminals"]
    * A["deliveries_per_terminal_per_day"]
    * A["transitions_per_delivery"],
    "broadcast_count": A["broadcasts_per_day"] * A["count_rows_per_broadcast"],
    "broadcast": A["broadcasts_per_day"],
    "onlineinterval": A["terminals"] * A["online_intervals_per_terminal_per_day"],
    "faultepisode": A["terminals"] * A["fault_episodes_per_terminal_per_day"],
    "auditentry": A["audit_entries_per_day"],
    "securityevent": A["security_events_per_day"],
}
TABLE = {k: k.removesuffix("_hour").removesuffix("_day") for k in PER_DAY}
# Written with the product's own bulk statements (controller/deliveries.py), as the
# controller writes them (a JSON column's None is SQL NULL there, JSON 'null' in insert()).
BULK: dict[str, Bulk] = {"delivery": INSERT_DELIVERY, "delivery_transition": INSERT_TRANSITION}


def kept_days(kind: str, policy: RetentionPolicy, days_running: int) -> float:
    """How many days of `kind` a database holds after `days_running` days."""
    raw, hourly, daily = (
        policy.raw_telemetry_days,
        policy.hourly_telemetry_days,
        policy.daily_telemetry_days,
    )

    def capped(days: int) -> float:
        return min(days_running, days) if days else days_running

    if kind == "telemetrysample":
        return capped(raw)
    if kind == "telemetryrollup_hour":
        return max(0, min(days_running, hourly) - raw)
    if kind == "telemetryrollup_day":
        return max(0, capped(daily) - hourly)
    return capped(
        {
            "delivery": policy.broadcast_days,
            "delivery_transition": policy.broadcast_days,
            "broadcast_count": policy.broadcast_days,
            "broadcast": policy.broadcast_days,
            "onlineinterval": policy.history_days,
            "faultepisode": policy.history_days,
            "auditentry": policy.audit_days,
            "securityevent": policy.security_days,
        }[kind]
    )


# ------------------------------------------------------------------ databases


@contextmanager
def sqlite_db() -> Iterator[tuple[Database, str]]:
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{Path(scratch) / 'size.db'}"
        db = Database(url)
        db.start()
        try:
            yield db, url
        finally:
            db.stop()


@contextmanager
def postgres_db() -> Iterator[tuple[Database, str]]:
    import psycopg

    name = f"dalaba_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        db = Database(url)
        db.start()
        try:
            yield db, url
        finally:
            db.stop()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return True
    except OSError:
        return False


def table_bytes(db: Database, url: str) -> dict[str, int]:
    """Bytes of each table with its indexes."""
    assert db.engine is not None
    if url.startswith("sqlite"):
        with db.engine.connect() as conn:
            conn.execute(text("VACUUM"))
            owner: dict[str, str] = dict(
                conn.execute(
                    text("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table','index')")
                ).all()
            )
            out: dict[str, int] = {}
            for name, size in conn.execute(
                text("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")
            ).all():
                table = owner.get(name, name)
                out[table] = out.get(table, 0) + int(size)
            return out
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
        rows = conn.execute(
            text(
                "SELECT relname, pg_total_relation_size(relid) "
                "FROM pg_catalog.pg_statio_user_tables"
            )
        ).all()
        return {name: int(size) for name, size in rows}


def measure_rows(db: Database, url: str, n: int) -> dict[str, float]:
    """Bytes per row of each kind, `n` generated rows each (one kind per table, except
    hourly and daily rollups, measured one after the other)."""
    from controller.history import FaultEpisode, OnlineInterval, TelemetryRollup
    from controller.models import (
        AuditEntry,
        Broadcast,
        BroadcastCount,
        Delivery,
        DeliveryTransition,
        Media,
        SecurityEvent,
        TelemetrySample,
    )

    models = {
        "telemetrysample": TelemetrySample,
        "telemetryrollup_hour": TelemetryRollup,
        "telemetryrollup_day": TelemetryRollup,
        "delivery": Delivery,
        "delivery_transition": DeliveryTransition,
        "broadcast": Broadcast,
        "broadcast_count": BroadcastCount,
        "onlineinterval": OnlineInterval,
        "faultepisode": FaultEpisode,
        "auditentry": AuditEntry,
        "securityevent": SecurityEvent,
    }
    rng = random.Random(14)

    def prepare(s: Session) -> None:
        s.add(Media(sha256="a" * 64, mime="audio/ogg", size=1, duration_ms=1, source="speech",
                    created_ms=0))  # fmt: skip

    db.run_sync(prepare)
    assert db.engine is not None
    with db.engine.begin() as conn:
        if url.startswith("postgresql"):
            conn.execute(text("ALTER TABLE delivery DISABLE TRIGGER ALL"))  # no FK rows needed
        else:
            conn.execute(text("PRAGMA foreign_keys=OFF"))
    per_row: dict[str, float] = {}
    before = table_bytes(db, url)
    for kind, model in models.items():
        t0 = time.perf_counter()
        rows = list(rows_of(kind, n, rng))
        with Session(db.engine) as s:
            if url.startswith("sqlite"):
                s.connection().exec_driver_sql("PRAGMA foreign_keys=OFF")
            for i in range(0, len(rows), 5000):
                if kind in BULK:
                    executemany(s.connection(), BULK[kind], rows[i : i + 5000])
                else:
                    s.exec(insert(model), params=rows[i : i + 5000])  # type: ignore[call-overload]
            s.commit()
        after = table_bytes(db, url)
        table = TABLE[kind]
        per_row[kind] = (after.get(table, 0) - before.get(table, 0)) / n
        before = after
        log(f"  {kind}: {per_row[kind]:.0f} B/row ({time.perf_counter() - t0:.1f} s)")
    return per_row


# ------------------------------------------------------------------ the nightly job


def measure_job(db: Database, url: str, terminals: int) -> dict[str, Any]:
    """One night's work for `terminals`: a day of raw samples past 7 days and a day of
    hourly rollups past 90 days, through the default policy."""
    from zoneinfo import ZoneInfo

    from controller.history import local_day_start, local_hour_start

    policy = RetentionPolicy()
    zone = ZoneInfo(policy.timezone)
    rng = random.Random(7)
    # Exactly what falls out of each window tonight: the 24 hours of raw samples before
    # the raw cutoff, the local day of hourly rollups before the hourly one.
    raw_day = local_hour_start(NOW - policy.raw_telemetry_days * DAY_MS, zone) - DAY_MS
    hourly_day = local_day_start(NOW - policy.hourly_telemetry_days * DAY_MS, zone) - DAY_MS
    assert db.engine is not None
    t0 = time.perf_counter()
    with Session(db.engine) as s:
        from controller.history import TelemetryRollup
        from controller.models import TelemetrySample

        batch: list[dict[str, Any]] = []
        for k in range(terminals):
            dev = device_id(k)
            for j in range(288):
                data = telemetry_data(k, rng)
                batch.append({"device_id": dev, "at_ms": raw_day + j * 300_000, "data": data})
            if len(batch) >= 20_000:
                s.exec(insert(TelemetrySample), params=batch)  # type: ignore[call-overload]
                batch = []
        if batch:
            s.exec(insert(TelemetrySample), params=batch)  # type: ignore[call-overload]
        hours = [
            {"device_id": device_id(k), "period": "hour", "start_ms": hourly_day + h * 3_600_000,
             "samples": 12, "data": rollup_data(rng)}
            for k in range(terminals) for h in range(24)
        ]  # fmt: skip
        s.exec(insert(TelemetryRollup), params=hours)  # type: ignore[call-overload]
        s.commit()
    log(f"  job data: {terminals * 288:,} samples, {len(hours):,} hourly rollups "
        f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip

    from collections import Counter

    counts: Counter[str] = Counter()
    durations: list[float] = []
    t0 = time.perf_counter()
    with Session(db.engine, expire_on_commit=False) as s:
        for step in plan(policy, NOW, counts):
            while True:
                t1 = time.perf_counter()
                more = step(s)
                s.commit()
                durations.append(time.perf_counter() - t1)
                if not more:
                    break
    total = time.perf_counter() - t0
    return {
        "terminals": terminals,
        "samples": terminals * 288,
        "hourly_rollups": len(hours),
        "seconds": round(total, 2),
        "transactions": len(durations),
        "median_transaction_ms": round(statistics.median(durations) * 1000, 1),
        "longest_transaction_ms": round(max(durations) * 1000, 1),
        "counts": dict(counts),
        "per_10000_terminals_s": round(total * TERMINALS / terminals, 1),
    }


# ------------------------------------------------------------------ the figures


def province(per_row: dict[str, float], days_running: int) -> dict[str, Any]:
    policy = RetentionPolicy()
    out: dict[str, Any] = {}
    total = 0.0
    for kind, per_day in PER_DAY.items():
        rows = per_day * kept_days(kind, policy, days_running)
        size = rows * per_row[kind]
        out[kind] = {"rows": round(rows), "bytes": round(size)}
        total += size
    out["total_bytes"] = round(total)
    return out


def gb(n: float) -> str:
    return f"{n / 1e9:.1f}"


def markdown(result: dict[str, Any]) -> str:
    engines = [e for e in ("sqlite", "postgresql") if e in result["engines"]]
    lines = [
        f"# Retention: database size of a 10,000-terminal province, {result['date']}",
        "",
        f"- Machine: {result['machine']['nproc']} CPUs, {result['machine']['cpu']}, "
        f"{result['machine']['ram']} RAM; {result['machine']['os']}",
        f"- Command: `{result['command']}` (took {result['took_s']:.0f} s); load average "
        f"{result.get('load_before', '?')} before, {result.get('load_after', '?')} after "
        "(1, 5, 15 min; the machine is shared).",
        f"- Row sizes: {result['rows_measured']:,} generated rows of each kind in a fresh "
        "database at the newest schema; bytes per row = the table's pages plus its indexes' "
        "(SQLite `dbstat` after VACUUM, PostgreSQL `pg_total_relation_size` after VACUUM "
        "ANALYZE). Freshly packed pages: a database that has lived through deletions holds "
        "free pages too (see the headroom in docs/operations.md).",
        "- Policy: the defaults (raw telemetry 7 days, hourly rollups 90 days, daily rollups, "
        "broadcasts and history 1826 days, security events 1096 days, audit for ever).",
        "",
        "## Assumptions (per day, 10,000 terminals)",
        "",
        "| | |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v:,} |" for k, v in result["assumptions"].items()]
    lines += ["", "## Bytes per row (with indexes)", ""]
    lines += ["| kind | " + " | ".join(engines) + " |", "| --- |" + " --- |" * len(engines)]
    for kind in PER_DAY:
        cells = [f"{result['engines'][e]['per_row'][kind]:.0f}" for e in engines]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    for label, key in (("after one year", "one_year"), ("steady state (five years)", "steady")):
        lines += ["", f"## Size {label} (GB = 10^9 bytes)", ""]
        header = "| kind | rows | " + " | ".join(f"{e} GB" for e in engines) + " |"
        lines += [header, "| --- | --- |" + " --- |" * len(engines)]
        first = result["engines"][engines[0]][key]
        for kind in PER_DAY:
            cells = [gb(result["engines"][e][key][kind]["bytes"]) for e in engines]
            lines.append(f"| {kind} | {first[kind]['rows']:,} | " + " | ".join(cells) + " |")
        cells = [gb(result["engines"][e][key]["total_bytes"]) for e in engines]
        lines.append("| **total** | | " + " | ".join(f"**{c}**" for c in cells) + " |")
    lines += ["", "## The nightly job", ""]
    lines += ["| | " + " | ".join(engines) + " |", "| --- |" + " --- |" * len(engines)]
    jobs = {e: result["engines"][e]["job"] for e in engines}
    first_job = jobs[engines[0]]
    lines.append(
        f"| one night for {first_job['terminals']:,} terminals ({first_job['samples']:,} "
        f"samples, {first_job['hourly_rollups']:,} hourly rollups), s | "
        + " | ".join(f"{jobs[e]['seconds']}" for e in engines)
        + " |"
    )
    lines.append(
        "| transactions | " + " | ".join(f"{jobs[e]['transactions']}" for e in engines) + " |"
    )
    lines.append(
        "| median transaction, ms | "
        + " | ".join(f"{jobs[e]['median_transaction_ms']}" for e in engines)
        + " |"
    )
    lines.append(
        "| longest transaction, ms | "
        + " | ".join(f"{jobs[e]['longest_transaction_ms']}" for e in engines)
        + " |"
    )
    lines.append(
        "| scaled to 10,000 terminals, s | "
        + " | ".join(f"{jobs[e]['per_10000_terminals_s']}" for e in engines)
        + " |"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--job-terminals", type=int, default=500)
    parser.add_argument("--markdown", type=Path, help="rewrite the .md from a saved .json")
    parser.add_argument(
        "--out-dir", type=Path, default=ROOT / "bench" / "results", help="where results go"
    )
    args = parser.parse_args()
    if args.markdown:
        saved = json.loads(args.markdown.read_text())
        args.markdown.with_suffix(".md").write_text(markdown(saved) + "\n")
        return 0
    started = time.perf_counter()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    engines: dict[str, Any] = {}
    makers: list[tuple[str, Callable[[], Any]]] = [("sqlite", sqlite_db)]
    if postgres_available():
        makers.append(("postgresql", postgres_db))
    else:
        log("no PostgreSQL on 127.0.0.1:5432: SQLite only")
    for engine, make in makers:
        log(f"{engine}: row sizes")
        with make() as (db, url):
            per_row = measure_rows(db, url, args.rows)
        log(f"{engine}: the nightly job")
        with make() as (db, url):
            job = measure_job(db, url, args.job_terminals)
        engines[engine] = {
            "per_row": per_row,
            "one_year": province(per_row, 365),
            "steady": province(per_row, 5 * 365 + 1),
            "job": job,
        }
        sizes = engines[engine]
        log(f"{engine}: one year {gb(sizes['one_year']['total_bytes'])} GB, "
            f"steady {gb(sizes['steady']['total_bytes'])} GB, job {job['seconds']} s")  # fmt: skip
    result = {
        "date": dt.date.today().isoformat(),
        "machine": machine_facts(),
        "command": "python " + shlex.join(["bench/bench_retention_size.py", *sys.argv[1:]]),
        "took_s": time.perf_counter() - started,
        # The job's times are wall clock: on a shared machine they say how loaded it was.
        "load_before": load_before,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "rows_measured": args.rows,
        "assumptions": ASSUMPTIONS,
        "engines": engines,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"retention-size-{result['date']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result) + "\n")
    log(f"wrote {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
