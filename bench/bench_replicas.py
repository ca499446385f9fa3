"""One controller replica against two, on PostgreSQL, for one county.

A county (`setup_county`, `--villages`, PostgreSQL in a throwaway database on
127.0.0.1:5432) is run as processes, as tests/integration/test_replicas.py runs it: a
private Mosquitto, the simulated fleet (`dalaba sim`) and `dalaba controller` replica
A. `--runs` county-wide broadcasts of one short text (cached audio after a first,
unmeasured one) go through A; then replica B starts (its own broker account, HTTP
port and replica id; the same database and data directory) and the same number go
through A again.

Per broadcast, from the moment the POST is sent: the 201 answer; every terminal shown
`playing` or `done` in the database (GET on A every `POLL_S`); every terminal shown
`playing` or `done` on B's `/api/live` stream (two replicas only: the NOTIFY relay);
and where each replica's reports went (ingest counters of `/api/metrics`).

Run: .venv/bin/python bench/bench_replicas.py [--villages 164] [--runs 5]
Writes bench/results/replicas-<date>-<N>villages.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import psycopg
from machine import machine_facts

from dalaba_ops.demo import setup_county
from tests.procs import BrokerProc, Proc, controller_replica, dalaba_argv

TEXT = "请注意，河水上涨，沿河村民立即转移。"
POLL_S = 0.1
ACTIVE = {"playing", "done"}
ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Replica:
    def __init__(self, name: str, port: int, proc: Proc, token: str) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.proc = proc
        self.headers = {"Authorization": f"Bearer {token}"}

    async def get(self, http: aiohttp.ClientSession, path: str) -> Any:
        async with http.get(self.url + path, headers=self.headers) as resp:
            return await resp.json()

    async def wait_healthy(self, http: aiohttp.ClientSession, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                async with http.get(self.url + "/api/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
        raise RuntimeError(f"{self.name} not healthy:\n{self.proc.log_tail()}")


async def live_active(
    http: aiohttp.ClientSession, replica: Replica, seen: dict[str, dict[str, float]]
) -> None:
    """broadcast id -> device -> first time (monotonic) B's stream showed it active."""
    async with http.get(
        replica.url + "/api/live",
        headers=replica.headers,
        timeout=aiohttp.ClientTimeout(total=None),
    ) as resp:
        kind = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "delivery":
                event = json.loads(line[6:])
                if event["state"] in ACTIVE:
                    seen.setdefault(event["broadcast_id"], {}).setdefault(
                        event["device_id"], time.monotonic()
                    )


async def one_broadcast(
    http: aiohttp.ClientSession,
    a: Replica,
    terminals: int,
    seen_live: dict[str, dict[str, float]] | None,
) -> dict[str, Any]:
    t0 = time.monotonic()
    async with http.post(
        a.url + "/api/broadcasts",
        headers=a.headers,
        json={"text": TEXT, "category": "flood", "priority": "notice", "targets": {"all": True}},
    ) as resp:
        body = await resp.json()
        assert resp.status == 201, body
    t_201 = time.monotonic() - t0
    bid = body["id"]
    t_db = t_live = None
    while time.monotonic() - t0 < 60 and (
        t_db is None or (seen_live is not None and t_live is None)
    ):
        if t_db is None:
            view = await a.get(http, f"/api/broadcasts/{bid}")
            states = [d["state"] for d in view["deliveries"]]
            if len(states) == terminals and all(s in ACTIVE for s in states):
                t_db = time.monotonic() - t0
        if seen_live is not None and t_live is None:
            got = seen_live.get(bid, {})
            if len(got) == terminals:
                t_live = max(got.values()) - t0
        await asyncio.sleep(POLL_S)
    async with http.post(a.url + f"/api/broadcasts/{bid}/cancel", headers=a.headers) as resp:
        await resp.read()
    await asyncio.sleep(2.0)
    return {
        "id": bid,
        "answer_ms": round(t_201 * 1000),
        "all_active_in_db_ms": None if t_db is None else round(t_db * 1000),
        "all_active_live_on_b_ms": None if t_live is None else round(t_live * 1000),
    }


def median(values: list[int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


async def run(args: argparse.Namespace, work: Path, pg_url: str) -> dict[str, Any]:
    prepared = setup_county(
        work / "county",
        villages=args.villages,
        speech_backends=("espeak-ng",),
        console_users=False,
        database_url=pg_url,
    )
    terminals = sum(len(v.device_ids()) for v in prepared.county.villages)
    logs = work / "logs"
    logs.mkdir()
    broker = BrokerProc(prepared.broker.files, prepared.broker_port, logs / "broker.log")
    replicas: dict[str, Replica] = {}
    for name, number in (("a", 1), ("b", 2)):
        proc, port = controller_replica(prepared, number, work, logs)
        replicas[name] = Replica(name, port, proc, prepared.admin_token)
    fleet = Proc(
        "fleet",
        # `dalaba sim --villages N` runs the first N terminals: all of them here.
        dalaba_argv("sim", "--data-dir", str(prepared.data_dir), "--villages", str(terminals)),
        logs / "fleet.log",
    )
    results: dict[str, Any] = {"terminals": terminals, "scenarios": {}}
    a, b = replicas["a"], replicas["b"]
    try:
        broker.start()
        a.proc.start()
        fleet.start()
        async with aiohttp.ClientSession() as http:
            await a.wait_healthy(http)
            await asyncio.sleep(args.settle_s)  # the fleet connected and reported
            await one_broadcast(http, a, terminals, None)  # renders and spreads the audio
            for scenario in ("one replica", "two replicas"):
                seen: dict[str, dict[str, float]] | None = None
                reader = None
                if scenario == "two replicas":
                    b.proc.start()
                    await b.wait_healthy(http)
                    await asyncio.sleep(args.settle_s)
                    seen = {}
                    reader = asyncio.create_task(live_active(http, b, seen))
                    await asyncio.sleep(1.0)
                before = {
                    n: (await r.get(http, "/api/metrics"))["ingest"]
                    for n, r in replicas.items()
                    if r.proc.running
                }
                runs = []
                for i in range(args.runs):
                    runs.append(await one_broadcast(http, a, terminals, seen))
                    log(f"{scenario} #{i + 1}: {runs[-1]}")
                after = {
                    n: (await r.get(http, "/api/metrics"))["ingest"]
                    for n, r in replicas.items()
                    if r.proc.running
                }
                if reader is not None:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
                results["scenarios"][scenario] = {
                    "runs": runs,
                    "acks_taken_in": {
                        n: after[n].get("received_ack", 0) - before[n].get("received_ack", 0)
                        for n in after
                    },
                    "reports_not_applied": {
                        n: after[n].get("reports_not_applied", 0)
                        - before[n].get("reports_not_applied", 0)
                        for n in after
                    },
                }
    finally:
        fleet.kill()
        for r in replicas.values():
            r.proc.kill()
        broker.stop()
    return results


def report(data: dict[str, Any]) -> str:
    lines = [
        f"# Replicas: one against two, {data['terminals']} terminals, PostgreSQL",
        "",
        f"Date {data['date']}; command `{data['command']}`; machine: "
        + ", ".join(f"{k} {v}" for k, v in data["machine"].items())
        + f". Load average at the start: {data['load_at_start']} (the machine is shared "
        "with other sessions' tests and benchmarks: figures are indicative).",
        "",
        "Cached audio, county-wide notice, sent through replica A; times from the POST, "
        f"polled every {int(POLL_S * 1000)} ms (so +-{int(POLL_S * 1000)} ms).",
        "",
        "| scenario | 201 median ms | all active in the database, median ms | "
        "all active on B's live stream, median ms | acks taken in by | acks not applied |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in data["scenarios"].items():
        runs = s["runs"]
        lines.append(
            f"| {name} | {median([r['answer_ms'] for r in runs])} | "
            f"{median([r['all_active_in_db_ms'] for r in runs])} | "
            f"{median([r['all_active_live_on_b_ms'] for r in runs]) or '-'} | "
            f"{s['acks_taken_in']} | {s['reports_not_applied']} |"
        )
    lines += [
        "",
        "Every run (ms from the POST):",
        "",
        "| scenario | run | 201 | all active in the database | all active on B's live stream |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, s in data["scenarios"].items():
        for i, r in enumerate(s["runs"], 1):
            lines.append(
                f"| {name} | {i} | {r['answer_ms']} | {r['all_active_in_db_ms']} | "
                f"{r['all_active_live_on_b_ms'] or '-'} |"
            )
    lines.append("")
    return "\n".join(lines)


def throwaway_database() -> tuple[str, str]:
    name = f"dalaba_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
    ) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
    ) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--villages", type=int, default=164)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    work = Path(tempfile.mkdtemp(prefix="dalaba-bench-replicas-"))
    name, url = throwaway_database()
    try:
        data = asyncio.run(run(args, work, url))
    finally:
        drop_database(name)
        shutil.rmtree(work, ignore_errors=True)
    data.update(
        date=datetime.date.today().isoformat(),
        command="bench/bench_replicas.py " + " ".join(sys.argv[1:]),
        machine=machine_facts(),
        load_at_start=load,
    )
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"replicas-{data['date']}-{args.villages}villages"
    (out_dir / f"{stem}.md").write_text(report(data))
    (out_dir / f"{stem}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    log(f"wrote {out_dir / stem}.md and .json")


if __name__ == "__main__":
    main()
