"""/metrics in the Prometheus text format, read with Prometheus's own parser, against a
real county: the counts match what happened, and every metric the example alert rules
use exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.broker, pytest.mark.slow]

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "dalaba-alerts.yml"


async def scrape(county: Any) -> dict[str, Any]:
    # No token: Prometheus scrapes without one.
    async with aiohttp.ClientSession() as http, http.get(f"{county.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Any, name: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for s in family.samples
        if name is None or s.name == name
    }


async def test_metrics_count_terminals_deliveries_and_publish_to_playing(make_county: Any) -> None:
    county = await make_county(villages=3)
    terminals = sorted(county.fleet.agents)
    bid = await county.broadcast(
        text="防火提醒：请勿野外用火。", category="fire_prevention", targets={"all": True}
    )
    await county.wait_states(bid, {"done"}, 60)

    families = await scrape(county)
    online = samples(families["dalaba_terminals"])
    assert sum(v for k, v in online.items() if ("online", "true") in k) == len(terminals)
    assert sum(v for k, v in online.items() if ("online", "false") in k) == 0
    deliveries = samples(families["dalaba_deliveries"])
    assert deliveries[(("state", "done"),)] == len(terminals)
    assert deliveries[(("state", "playing"),)] == 0
    latency = families["dalaba_dispatch_to_playing_seconds"]
    assert samples(latency, "dalaba_dispatch_to_playing_seconds_count")[()] == len(terminals)
    assert samples(families["dalaba_broker_connected"])[()] == 1
    ingest = samples(families["dalaba_ingest_messages"], "dalaba_ingest_messages_total")
    assert ingest[(("outcome", "received"),)] >= 4 * len(terminals)
    assert samples(families["dalaba_speech_media"])[(("backend", "espeak-ng"),)] >= 1


async def test_every_metric_in_the_example_alert_rules_exists(make_county: Any) -> None:
    county = await make_county(villages=1)
    families = await scrape(county)
    exposed = set()
    for family in families.values():
        exposed.update(s.name for s in family.samples)
        exposed.add(family.name)
    used = set(re.findall(r"\b(dalaba_[a-z_]+)", RULES.read_text()))
    assert used, "the rules file names no metric"
    assert used <= exposed, f"alert rules use metrics that do not exist: {used - exposed}"
