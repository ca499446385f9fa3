"""The upper-level platform's link: package codec cost, and EBM package in -> every
terminal of the county playing.

1. **Codec.** Build (sign) and read (open the tar, parse, verify) an EBM package,
   `--codec-n` times each, with Ed25519 and with SM2/SM3 (when tongsuopy is installed).
2. **A whole county.** `dalaba_ops.demo.setup_county` (as the tests' `make_county`) with
   the stand-in platform of tests/upstream_standin.py as its trusted upper platform, and a
   warning source in automatic mode. Then `--runs` county-wide EBMs (the county's 6-digit
   code, the same text: the first renders its speech, the others find it cached and on
   every terminal), each answered, then its state asked once every terminal has started,
   then cancelled by an EBM of type 2. Per run, from the moment the POST is sent: the
   receipt; the first and last terminal's true sound start (the simulated speakers'
   `plays-started.jsonl`).

Run: .venv/bin/python bench/bench_upstream.py [--villages 164] [--runs 4]
Writes bench/results/upstream-<date>.md and .json. Everything runs under a temporary
directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from machine import machine_facts
from sqlmodel import select

from controller.api import keys
from controller.api.ebd import LINK
from controller.app import ControllerServer
from controller.auth import Role, create_user_and_token
from controller.models import Township
from controller.upstream import fields as f
from controller.upstream.package import read_package, text_of
from controller.upstream.signature import PackageVerifier
from controller.warnings.models import UpstreamSource
from dalaba.protocol import now_ms
from dalaba_ops.demo import setup_county
from firmware_sim.fleet import Fleet, device_dir
from tests.upstream_standin import PLATFORM_ID, PlatformStandIn, ebm_id

RESULTS = Path(__file__).resolve().parent / "results"
TEXT = "预计未来六小时有大暴雨，请沿河群众立即转移。"


def wall_ms() -> float:
    return time.time_ns() / 1e6


def codec(n: int, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scheme in ("ed25519", "sm2"):
        key_dir = work / f"codec-{scheme}"
        key_dir.mkdir()
        try:
            standin = PlatformStandIn(key_dir, "0" * 18, scheme=scheme)
        except RuntimeError as exc:  # SM2 without tongsuopy
            out[scheme] = {"skipped": str(exc)}
            continue
        verifier = PackageVerifier([standin.signer.public_pem()])
        t0 = time.perf_counter()
        packages = [standin.ebm(ebm_id(i % 10000), area_codes="500101") for i in range(n)]
        t1 = time.perf_counter()
        for data in packages:
            read_package(data, verifier, max_bytes=1_000_000)
        t2 = time.perf_counter()
        out[scheme] = {
            "n": n,
            "build_ms": round((t1 - t0) * 1000 / n, 3),
            "read_ms": round((t2 - t1) * 1000 / n, 3),
            "bytes": len(packages[0]),
        }
    return out


async def county_runs(villages: int, runs: int, work: Path) -> dict[str, Any]:
    key_dir = work / "platform"
    key_dir.mkdir()
    platform = PlatformStandIn(key_dir, "030000000000000001")
    await platform.start()
    os.environ.update(
        {
            "DALABA_UPSTREAM_TRUSTED_KEYS": json.dumps([str(platform.public_key_file)]),
            "DALABA_UPSTREAM_RESOURCE_CODE": "030000000000000001",
            "DALABA_UPSTREAM_PLATFORM_RESOURCE_CODE": PLATFORM_ID,
            "DALABA_UPSTREAM_URL": platform.url,
            "DALABA_UPSTREAM_REPORT_INTERVAL_S": "0",
        }
    )
    prepared = setup_county(work / "county", villages=villages, speech_backends=("espeak-ng",))
    await prepared.broker.start_async()
    controller = ControllerServer(prepared.settings)
    await controller.start()
    assert controller.app is not None
    fleet = Fleet.from_data_dir(prepared.data_dir, record_wav=False)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    result: dict[str, Any] = {"villages": villages, "terminals": len(fleet.configs), "runs": []}
    try:
        await fleet.start(connect_timeout_s=60 + villages / 20)
        platform.trust_county(controller.app[LINK].public_pem())
        db = controller.app[keys.DB]

        def provision(session: Any) -> tuple[str, str]:
            token = create_user_and_token(session, "province", Role.UPSTREAM, None)
            session.add(
                UpstreamSource(
                    id="province", mode="automatic", created_ms=now_ms(), updated_ms=now_ms()
                )
            )
            township = session.exec(select(Township)).first()
            return token, township.code[:6]

        token, county_code = await db.run(provision)
        await asyncio.sleep(5)  # every terminal online (the fleet has connected)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-tar"}
        devices = sorted(fleet.configs)
        for run in range(runs):
            the_id = ebm_id(100 + run)
            data = platform.ebm(the_id, area_codes=county_code, desc=TEXT)
            t_send = wall_ms()
            async with http.post(controller.base_url + "/api/ebd", data=data, headers=headers) as r:
                answer = await r.read()
                assert r.status == 200, answer[:300]
            t_receipt = wall_ms()
            bid = await db.run(lambda s, i=the_id: _broadcast_of(s, i))
            starts = await _wait_starts(prepared.data_dir, devices, bid, 60)
            state_pkg = platform.open(await _post(http, controller, headers, platform, the_id))
            cancel = platform.ebm(the_id, msg_type=2, area_codes="", desc="")
            async with http.post(
                controller.base_url + "/api/ebd", data=cancel, headers=headers
            ) as r:
                assert r.status == 200
            result["runs"].append(
                {
                    "speech": "rendered" if run == 0 else "cached",
                    "receipt_ms": round(t_receipt - t_send, 1),
                    "first_sound_ms": round(min(starts.values()) - t_send, 1),
                    "last_sound_ms": round(max(starts.values()) - t_send, 1),
                    "started": len(starts),
                    "state_code": text_of(state_pkg.body, f.STATE_CODE),
                }
            )
            await asyncio.sleep(3)  # the cancel reaches every terminal
    finally:
        await fleet.stop()
        await http.close()
        await controller.stop()
        prepared.broker.stop()
        await platform.stop()
    return result


async def _post(
    http: aiohttp.ClientSession,
    controller: ControllerServer,
    headers: dict[str, str],
    platform: PlatformStandIn,
    the_id: str,
) -> bytes:
    data = platform.state_request(the_id)
    async with http.post(controller.base_url + "/api/ebd", data=data, headers=headers) as r:
        return await r.read()


def _broadcast_of(session: Any, identifier: str) -> str:
    from controller.warnings.models import UpstreamMessage

    message = session.exec(
        select(UpstreamMessage).where(UpstreamMessage.identifier == identifier)
    ).one()
    assert message.broadcast_id, (message.outcome, message.reason)
    return str(message.broadcast_id)


async def _wait_starts(
    data_dir: Path, devices: list[str], bid: str, timeout_s: float
) -> dict[str, float]:
    starts: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(starts) < len(devices):
        for device_id in devices:
            if device_id in starts:
                continue
            path = device_dir(data_dir, device_id) / "plays-started.jsonl"
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry["broadcast_id"] == bid:
                    starts[device_id] = float(entry["start_ms"])
        await asyncio.sleep(0.05)
    return starts


def write(results: dict[str, Any], command: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    day = datetime.date.today().isoformat()
    base = RESULTS / f"upstream-{day}"
    base.with_suffix(".json").write_text(json.dumps(results, ensure_ascii=False, indent=2))
    lines = [
        f"# Upper-level platform link, {day}",
        "",
        f"Command: `{command}`. Machine: {results['machine']['nproc']} cores "
        f"({results['machine']['cpu']}), {results['machine']['ram']}; load average at start "
        f"{results['load_at_start']} (shared with other work: figures are not a quiet "
        "machine's).",
        "",
        "## Codec (per package: an EBM with title, text and area code)",
        "",
        "| scheme | build + sign (ms) | open + parse + verify (ms) | bytes |",
        "|---|---|---|---|",
    ]
    for scheme, row in results["codec"].items():
        if "skipped" in row:
            lines.append(f"| {scheme} | skipped: {row['skipped']} | | |")
        else:
            lines.append(f"| {scheme} | {row['build_ms']} | {row['read_ms']} | {row['bytes']} |")
    county = results["county"]
    lines += [
        "",
        f"## EBM package in -> terminals playing ({county['villages']} villages, "
        f"{county['terminals']} terminals, one process)",
        "",
        "Times from the POST of the package to /api/ebd: the signed receipt back; the first "
        "and last terminal's true sound start (simulated speakers' plays-started.jsonl).",
        "",
        "| run | speech | receipt (ms) | first sound (ms) | last sound (ms) | started | state |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, run in enumerate(county["runs"], 1):
        lines.append(
            f"| {n} | {run['speech']} | {run['receipt_ms']} | {run['first_sound_ms']} | "
            f"{run['last_sound_ms']} | {run['started']} | {run['state_code']} |"
        )
    cached = [r["last_sound_ms"] for r in county["runs"] if r["speech"] == "cached"]
    if cached:
        lines += ["", f"Cached speech, last sound: median {statistics.median(cached):.0f} ms."]
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return base.with_suffix(".md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--villages", type=int, default=164)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--codec-n", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-upstream-"))
    try:
        results: dict[str, Any] = {
            "machine": machine_facts(),
            "load_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "codec": codec(args.codec_n, work),
        }
        results["county"] = asyncio.run(county_runs(args.villages, args.runs, work))
        command = "python bench/bench_upstream.py " + " ".join(sys.argv[1:])
        print(write(results, command.strip()).read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
