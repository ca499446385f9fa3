"""Statistics benchmark: time to compute the county's year-end report (and the console's
everyday statistics requests) over a generated year, for the demo county (164 villages,
182 terminals) and for 10,000 terminals, on SQLite and PostgreSQL.

The generated year, per group of 12 townships (a county; the 10,000-terminal size is
`County.for_size(10000)`: the demo county's 12 townships (164 villages, 182 terminals)
and 703 generated ones of up to 14 villages with one terminal each, 10,018 terminals in
all, grouped by twelve into 60 counties):

- every day, one schedule occurrence of the county's programme to all its terminals
  (outcome `fired`; one in twenty `played_offline` or `missed`), and
- every day, `--pushes` push broadcasts per township to that township's terminals
  (categories and priorities mixed, one in eight a drill);

each delivery one of: played to the end (five transitions), preempted and replayed,
cut off with an offset, failed mid-play, silent (`unknown`), or offline and expired,
its transitions rows of `delivery_transition` and its broadcast's counts rows of
`broadcast_count` as controller/deliveries.py writes them;
every terminal online about 93% of the time in stretches of about three weeks.
With `--pushes 1` that is two deliveries per terminal per day, 730 a year.

Rows are written in bulk (SQLite `executemany`, PostgreSQL `COPY`) with the product's
schema and indexes (created by `Database.start()`, i.e. Alembic at head); PostgreSQL is
then `ANALYZE`d (autovacuum would have done so on a live server), SQLite is not (nothing
does that in production).

Measured, `--repeats` times each, in this process on a fresh session:
- `year_report`: `controller.stats.year_report` (the summary of the year with
  coverage per category, township and village, every township's row, the online rate by
  month), then the report written as HTML, PDF and XLSX (`controller.report`);
- `month_summary`: `controller.stats.summary` for one month, the whole scope (what the
  console's statistics page asks first), and for one township;
- `online_month_by_day`: `controller.stats.online_series`, a month by day.

Run: .venv/bin/python bench/bench_stats.py --size 164 --db sqlite
     .venv/bin/python bench/bench_stats.py --size 10000 --db postgresql
Each run adds its result to <out-dir>/stats-<date>.json and rewrites
<out-dir>/stats-<date>.md from all the runs recorded there that day (`--out-dir`,
bench/results by default; a trial run at another size belongs elsewhere, e.g. /tmp).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import random
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy
from machine import machine_facts
from sqlmodel import Session

from controller import report, stats
from controller.county import County, seed
from controller.db import Database
from controller.deliveries import INSERT_TRANSITION, OFFLINE_AT_SEND, REACHED

ROOT = Path(__file__).resolve().parent.parent
TZ = ZoneInfo("Asia/Shanghai")
YEAR = 2025
Y0 = int(dt.datetime(YEAR, 1, 1, tzinfo=TZ).timestamp() * 1000)
DAY = 86_400_000
HOUR = 3_600_000
PG_HOST, PG_PORT = "127.0.0.1", 5432
CATEGORIES = (
    "forest_fire", "forest_fire", "flood", "anti_fraud", "anti_fraud", "road_safety",
    "anti_drug", "civility", "rural_revitalisation", "epidemic", "meeting",
)  # fmt: skip
PRIORITIES = ("emergency", "notice", "notice", "routine")
MEDIA = {f"{i:064x}": ms for i, ms in enumerate((12_000, 24_500, 48_000, 95_000), start=1)}
NOW_MS = int(dt.datetime(YEAR + 1, 6, 1, tzinfo=TZ).timestamp() * 1000)  # after the year
BATCH = 20_000
# The product's own bulk insert of transition rows names the columns (and their order).
TRANSITION_COLUMNS = INSERT_TRANSITION.columns


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- databases


@contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'stats.db'}"
        return
    import psycopg

    name = f"dalaba_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres", autocommit=True
    ) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- the year

COLUMNS = {
    "media": ("sha256", "mime", "size", "duration_ms", "source", "voices", "text", "created_ms"),
    "schedule": (
        "id", "name", "status", "version", "created_ms", "created_by", "updated_ms",
        "updated_by", "township_ids", "request", "recurrence", "text", "media_sha256",
        "voices", "params", "title", "category", "priority", "drill", "languages",
        "targets", "target", "expires_in_s", "misfire_grace_s",
    ),
    "broadcast": (
        "id", "created_ms", "created_by", "title", "text", "media_sha256", "category",
        "priority", "level", "drill", "targets", "target", "start_at_ms", "expires_at_ms",
        "status", "swept", "dispatch", "command_id", "voices", "device_count", "attempt",
        "resends",
    ),
    "occurrence": (
        "id", "schedule_id", "due_ms", "expires_at_ms", "outcome", "schedule_version",
        "devices_digest", "device_count", "suppressed", "broadcast_id", "fired_ms",
        "start_at_ms", "dispatch", "created_ms", "updated_ms",
    ),
    "delivery": (
        "broadcast_id", "device_id", "state", "updated_ms", "last_seq", "state_source",
        "attempt",
    ),
    "delivery_transition": TRANSITION_COLUMNS,
    "broadcast_count": ("broadcast_id", "state", "n"),
    "onlineinterval": (
        "device_id", "village_id", "township_id", "start_ms", "end_ms", "end_reason",
    ),
}  # fmt: skip


def _transitions(
    rng: random.Random, bid: str, device: str, created: int, duration: int
) -> tuple[str, int, int, list[tuple[Any, ...]]]:
    """(final state, last seq, last at, the delivery's `delivery_transition` rows), as
    the controller writes them: the first row at the send, the terminal's reports with
    their seq, the controller's inferences (sweep) flagged `inferred` with their cause.
    Rows made as tuples: a year at 10,000 terminals is tens of millions of them."""
    lat = rng.randint(300, 3000)
    x = rng.random()

    def row(
        state: str, at: int, seq: int | None, offset: int | None = None,
        reason: str | None = None, cause: str | None = None,
    ) -> tuple[Any, ...]:  # fmt: skip
        # Columns as TRANSITION_COLUMNS.
        return (bid, device, state, at, at, reason, cause is not None, cause, seq, offset, None)

    if x >= 0.92:  # offline at the send, expired by the sweep an hour later
        end = created + HOUR
        return "expired", 0, end, [
            row("offline", created, None, reason=OFFLINE_AT_SEND),
            row("expired", end, None, cause="sweep"),
        ]  # fmt: skip
    play = created + lat
    rows = [
        row("sent", created, None),
        row("received", created + lat // 3, 1),
        row("fetched", created + lat // 2, 2),
        row("playing", play, 3),
    ]
    if x < 0.86:
        end = play + duration
        return "done", 4, end, [*rows, row("done", end, 4)]
    off = rng.randint(500, duration - 100)
    if x < 0.89:
        again = play + off + 60_000
        end = again + duration
        rows += [
            row("preempted", play + off, 4, off),
            row("playing", again, 5),
            row("done", end, 6),
        ]
        return "done", 6, end, rows
    if x < 0.91:
        rows.append(row("failed", play + off, 4, off, reason="amplifier"))
        return "failed", 4, play + off, rows
    end = play + duration + 30_000
    return "unknown", 3, end, [*rows, row("unknown", end, None, cause="sweep")]


def generate(
    county: County, pushes: int, seed_: int = 2025
) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """(table, rows) in batches, in foreign-key order; JSON columns as text."""
    rng = random.Random(seed_)
    townships = [t for t in county.townships if t.villages]
    terminals = {t.id: [(d, v.id) for v in t.villages for d in v.device_ids()] for t in townships}
    counties = [townships[i : i + 12] for i in range(0, len(townships), 12)]
    yield (
        "media",
        [
            (sha, "audio/mpeg", 1000, ms, "speech", "", "", Y0 - 30 * DAY)
            for sha, ms in MEDIA.items()
        ],
    )
    shas = list(MEDIA)
    programmes = []
    for n, group in enumerate(counties):
        ids = [t.id for t in group]
        target = json.dumps({"townships": ids})
        programmes.append((f"s-{n:03d}", group))
        yield (
            "schedule",
            [
                (
                    f"s-{n:03d}", "news", "deleted", 1, Y0 - DAY, "bench", Y0 - DAY, "bench",
                    json.dumps(ids), "{}", '{"kind":"daily"}', "news", shas[2], "", "{}",
                    "news", "news", "routine", False, '["cmn"]', target, target, 600, 60,
                )
            ],
        )  # fmt: skip
    broadcasts: list[tuple[Any, ...]] = []
    occurrences: list[tuple[Any, ...]] = []
    deliveries: list[tuple[Any, ...]] = []
    moves: list[tuple[Any, ...]] = []
    counts: list[tuple[Any, ...]] = []

    def flush(final: bool = False) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
        nonlocal broadcasts, occurrences, deliveries, moves, counts
        if final or len(deliveries) >= BATCH:
            for table, rows in (
                ("broadcast", broadcasts), ("occurrence", occurrences),
                ("delivery", deliveries), ("delivery_transition", moves),
                ("broadcast_count", counts),
            ):  # fmt: skip
                if rows:
                    yield table, rows
            broadcasts, occurrences, deliveries, moves, counts = [], [], [], [], []

    def broadcast(
        bid: str, at: int, category: str, priority: str, drill: bool, ids: list[str],
        reach: list[tuple[str, str]], command: str, created: int,
    ) -> None:  # fmt: skip
        sha = shas[2] if category == "news" else rng.choice(shas)
        target = json.dumps({"townships": ids})
        broadcasts.append(
            (
                bid, created, "bench", "", category, sha, category, priority,
                2 if priority == "emergency" else None, drill, target, target, at, at + HOUR,
                "finished", True, "published" if command else "failed", command, "",
                len(reach), 0, "[]",
            )
        )  # fmt: skip
        # `broadcast_count` as the ledger leaves it: a row for every state a delivery
        # passed through (moved out of: n 0), and REACHED for those the terminal answered.
        tally: dict[str, int] = {REACHED: 0}
        for device, _village in reach:
            state, seq, last, rows = _transitions(rng, bid, device, created, MEDIA[sha])
            source = "controller" if state in ("expired", "unknown") else "device"
            deliveries.append((bid, device, state, last, seq, source, 0))
            moves.extend(rows)
            for r in rows:
                tally.setdefault(r[2], 0)
            tally[state] += 1
            tally[REACHED] += seq > 0
        counts.extend((bid, st, n) for st, n in tally.items())

    n = 0
    for day in range(365):
        base = Y0 + day * DAY
        for sid, group in programmes:
            due = base + 7 * HOUR
            outcome = rng.choices(["fired", "played_offline", "missed"], [19, 0.5, 0.5])[0]
            occ = f"o-{sid}-{day:03d}"
            fired = outcome == "fired"
            occurrences.append(
                (
                    occ, sid, due, due + 600_000, outcome, 1, "", 0, "{}", occ,
                    due - 3000 if fired else None, due if fired else None,
                    "published" if fired else None, due - 3 * DAY, due,
                )
            )  # fmt: skip
            reach = [x for t in group for x in terminals[t.id]]
            ids = [t.id for t in group]
            command = f"c-{occ}" if fired else ""
            broadcast(occ, due, "news", "routine", False, ids, reach, command, due - 3 * DAY)
        for township in townships:
            for _ in range(pushes):
                n += 1
                at = base + rng.randrange(8 * HOUR, 20 * HOUR)
                broadcast(
                    f"b{n:07d}", at, rng.choice(CATEGORIES), rng.choice(PRIORITIES),
                    rng.random() < 0.125, [township.id], terminals[township.id],
                    f"c{n:07d}", at - 600,
                )  # fmt: skip
        yield from flush()
    yield from flush(final=True)

    intervals: list[tuple[Any, ...]] = []
    for township in townships:
        for device, village in terminals[township.id]:
            at = Y0 - 20 * DAY + rng.randrange(0, 3 * DAY)
            while at < Y0 + 380 * DAY:
                end = at + int(rng.expovariate(1 / (21 * DAY))) + 60_000
                intervals.append((device, village, township.id, at, end, "status"))
                at = end + int(rng.expovariate(1 / (1.6 * DAY))) + 60_000
            if len(intervals) >= BATCH:
                yield "onlineinterval", intervals
                intervals = []
    if intervals:
        yield "onlineinterval", intervals


def load(url: str, county: County, pushes: int) -> dict[str, int]:
    """Write the generated year in bulk; rows per table."""
    counts: dict[str, int] = {}
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        for table, rows in generate(county, pushes):
            columns = COLUMNS[table]
            marks = ",".join("?" * len(columns))
            conn.executemany(f"INSERT INTO {table} ({','.join(columns)}) VALUES ({marks})", rows)
            counts[table] = counts.get(table, 0) + len(rows)
        conn.commit()
        conn.close()
        return counts
    import psycopg

    pg_url = url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(pg_url) as conn, conn.cursor() as cur:
        for table, rows in generate(county, pushes):
            columns = COLUMNS[table]
            with cur.copy(f"COPY {table} ({','.join(columns)}) FROM STDIN") as copy:
                copy.write(_copy_text(rows))
            counts[table] = counts.get(table, 0) + len(rows)
        conn.commit()
        conn.autocommit = True
        cur.execute("ANALYZE")
    return counts


def _copy_text(rows: list[tuple[Any, ...]]) -> bytes:
    """COPY's text format. The generated values hold no tab, newline or backslash."""
    out = io.StringIO()
    for row in rows:
        out.write(
            "\t".join(
                "\\N" if v is None else ("t" if v is True else "f" if v is False else str(v))
                for v in row
            )
        )
        out.write("\n")
    return out.getvalue().encode()


# --------------------------------------------------------------------------- measuring


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def measure(url: str, repeats: int) -> dict[str, Any]:
    db = Database(url)
    db.start()
    try:
        engine = db.engine
        assert engine is not None
        month = stats.period_of("month", dt.date(YEAR, 6, 1), TZ)
        scope = stats.Scope()

        def run(fn: Callable[[Session], Any]) -> Callable[[], Any]:
            def go() -> Any:
                with Session(engine) as session:
                    return fn(session)

            return go

        out: dict[str, Any] = {}
        t, data = timed(run(lambda s: stats.year_report(s, YEAR, TZ, scope, NOW_MS)), repeats)
        out["year_report_figures"] = t
        doc = report.build(data, lang="zh", area="示范县", tz=TZ, now_ms=NOW_MS)
        for name, fn in (
            ("html", report.to_html),
            ("pdf", report.to_pdf),
            ("xlsx", report.to_xlsx),
        ):
            t, body = timed(lambda fn=fn: fn(doc), repeats)  # type: ignore[misc]
            out[f"report_{name}"] = t
            out[f"report_{name}_bytes"] = len(body)
        t, _ = timed(run(lambda s: stats.summary(s, month, scope, NOW_MS)), repeats)
        out["month_summary_county"] = t
        t, _ = timed(run(lambda s: stats.summary(s, month, stats.Scope("t02"), NOW_MS)), repeats)
        out["month_summary_township"] = t
        t, _ = timed(run(lambda s: stats.online_series(s, month, scope, "day", NOW_MS)), repeats)
        out["online_month_by_day"] = t
        out["figures"] = {
            "broadcasts": data["broadcasts"]["total"],
            "drills": data["broadcasts"]["drill"],
            "plays": data["plays"]["total"] + data["drill"]["plays"]["total"],
            "targeted": data["reach"]["targeted"] + data["drill"]["reach"]["targeted"],
            "reach_rate": data["reach"]["rate"],
            "median_ms": data["timeliness"]["median_ms"],
            "p95_ms": data["timeliness"]["p95_ms"],
            "online_rate": data["online_rate"],
            "townships": len(data["townships"]),
            "first_sentence": doc.paragraphs[1] if len(doc.paragraphs) > 1 else "",
        }
        with engine.connect() as conn:
            if url.startswith("sqlite"):
                out["db_version"] = "SQLite " + sqlite3.sqlite_version
            else:
                version = conn.execute(sqlalchemy.text("SHOW server_version")).scalar()
                out["db_version"] = f"PostgreSQL {version}"
                size = sqlalchemy.text("SELECT pg_database_size(current_database())")
                out["db_bytes"] = int(conn.execute(size).scalar() or 0)
        if url.startswith("sqlite"):
            out["db_bytes"] = Path(url.removeprefix("sqlite:///")).stat().st_size
        return out
    finally:
        db.stop()


# --------------------------------------------------------------------------- results

ROWS = (
    ("year_report_figures", "**year report: figures** (`stats.year_report`)"),
    ("report_html", "… written as HTML"),
    ("report_pdf", "… written as PDF (reportlab)"),
    ("report_xlsx", "… written as XLSX (openpyxl)"),
    ("month_summary_county", "one month's summary, whole scope (`stats.summary`)"),
    ("month_summary_township", "one month's summary, one township"),
    ("online_month_by_day", "online rate of a month by day (`stats.online_series`)"),
)


def _fmt(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} / {max(times):.2f}"


def markdown(runs: dict[str, Any], machine: dict[str, str]) -> str:
    keys = sorted(runs, key=lambda k: (runs[k]["terminals"], runs[k]["db"]))
    lines = [
        f"# Statistics benchmark: the year-end report over a generated year, {dt.date.today()}",
        "",
        f"- Machine: {machine['nproc']} CPUs (`nproc`), {machine['cpu']}, {machine['ram']} RAM; "
        f"{machine['os']}; Python {machine['python']}. The machine is shared with other "
        "work (load averages per run below).",
        "- The year (bench/bench_stats.py docstring): per group of 12 townships a daily "
        "programme occurrence to all its terminals, and per township `--pushes` push "
        "broadcasts a day to its terminals; 86% of deliveries play to the end, the rest are "
        "replayed, cut off, failed, silent or offline and expired; online intervals of about "
        "three weeks. Written in bulk into the product's schema (Alembic head, all indexes); "
        "PostgreSQL `ANALYZE`d afterwards, SQLite not.",
        "- Measured in one process on a fresh session each time, median / max of the repeats, "
        "in seconds. The figures are computed in the database (one statement over the "
        "deliveries and their rows of the `delivery_transition` table, window functions for "
        "the percentiles; controller/stats.py), so the time grows with the deliveries "
        "of the period.",
        "",
    ]
    for key in keys:
        r = runs[key]
        f = r["result"]["figures"]
        rows = r["rows"]
        lines += [
            f"## {r['terminals']:,} terminals ({r['villages']:,} villages, "
            f"{r['townships']} townships), {r['result']['db_version']}",
            "",
            f"- Command: `{r['command']}`; generation and bulk load {r['load_s']:.0f} s; "
            f"load average {r['load_before']} before, {r['load_after']} after.",
            f"- Rows: {rows.get('broadcast', 0):,} broadcasts, {rows.get('delivery', 0):,} "
            f"deliveries ({rows.get('delivery_transition', 0):,} transitions), "
            f"{rows.get('occurrence', 0):,} occurrences, "
            f"{rows.get('onlineinterval', 0):,} online intervals; database "
            f"{r['result']['db_bytes'] / 1e9:.2f} GB.",
            f"- The year's figures: {f['broadcasts']:,} broadcasts ({f['drills']:,} drills), "
            f"{f['plays']:,} plays of {f['targeted']:,} deliveries, reach {f['reach_rate']}, "
            f"median {f['median_ms']} ms / p95 {f['p95_ms']} ms to playing, online "
            f"{f['online_rate']}; {f['townships']} township rows. "
            f"First category sentence: “{f['first_sentence']}”",
            "",
            f"| step ({r['repeats']} runs) | seconds (median / max) |",
            "| --- | --- |",
        ]
        for name, title in ROWS:
            lines.append(f"| {title} | {_fmt(r['result'][name])} |")
        lines += [
            f"| (PDF {r['result']['report_pdf_bytes'] / 1000:.0f} kB, XLSX "
            f"{r['result']['report_xlsx_bytes'] / 1000:.0f} kB, HTML "
            f"{r['result']['report_html_bytes'] / 1000:.0f} kB) | |",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=164, help="villages (164: the demo county)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pushes", type=int, default=1, help="push broadcasts per township-day")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out-dir", type=Path, default=ROOT / "bench" / "results", help="where results go"
    )
    args = parser.parse_args()
    county = County.for_size(args.size)
    terminals = sum(v.terminals for v in county.villages)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench-stats-") as tmp, database(
        args.db, Path(tmp)
    ) as url:  # fmt: skip
        db = Database(url)
        db.start()
        db.run_sync(lambda s: seed(s, county))
        db.stop()
        log(f"{terminals} terminals on {args.db}: generating a year")
        t0 = time.perf_counter()
        rows = load(url, county, args.pushes)
        load_s = time.perf_counter() - t0
        log(f"loaded in {load_s:.0f} s: {rows}")
        result = measure(url, args.repeats)
    log(f"year report figures: {result['year_report_figures']}")
    stamp = dt.date.today().isoformat()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"stats-{stamp}"
    path = stem.with_suffix(".json")
    saved = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    saved["machine"] = machine_facts()
    saved["runs"][f"{terminals}-{args.db}"] = {
        "terminals": terminals,
        "villages": len(county.villages),
        "townships": len(county.townships),
        "db": args.db,
        "pushes": args.pushes,
        "repeats": args.repeats,
        "command": ".venv/bin/python bench/bench_stats.py "
        + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "rows": rows,
        "load_s": load_s,
        "load_before": load_before,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "result": result,
    }
    path.write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")
    stem.with_suffix(".md").write_text(markdown(saved["runs"], saved["machine"]) + "\n")
    log(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
