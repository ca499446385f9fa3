"""`/metrics` in the Prometheus text format, for the county's monitoring.

Two kinds of figures:

- **Live counts read from the database at scrape time** (terminals online by township,
  deliveries of the broadcasts still running by state, schedule occurrences by outcome,
  stored speech by backend). They are exact whatever the process has seen, so a
  controller restart does not reset them.
- **Process counters and one histogram** fed as things happen: ingest messages by
  outcome, commands published, and the time from a broadcast's publish to each terminal
  reporting `playing` (the figure a duty officer's "about one second" is about).

The scrape needs no login: like `/api/health` it carries counts, never names or text,
and monitoring systems scrape without a user. Put it behind the reverse proxy's access
rules if the county's network is not trusted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlalchemy import case, func
from sqlmodel import Session, col, select

from controller import deliveries as dm
from controller.events import BroadcastChanged, DeliveryChanged, EventHub
from controller.models import Broadcast, Delivery, Device, Media
from controller.schedules.models import Occurrence
from dalaba import protocol as p

if TYPE_CHECKING:
    from controller.db import Database
    from controller.dispatch import Dispatcher
    from controller.ingest import Ingestor

# Seconds from the publish to a terminal's `playing`: the designed sync lead is 0.6 s
# (1.5 s with a fresh download); anything past a few seconds is worth a look.
PLAYING_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)
# Forget a broadcast's publish time after this: late `playing` reports (a terminal back
# from an outage) are not what the histogram measures.
PUBLISH_MEMORY_S = 3600


@dataclass
class _Snapshot:
    online: dict[tuple[str, bool], int] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)
    occurrences: dict[str, int] = field(default_factory=dict)
    speech: dict[str, int] = field(default_factory=dict)
    active_broadcasts: int = 0


def _snapshot(session: Session, now: int) -> _Snapshot:
    snap = _Snapshot()
    for township, online, n in session.exec(
        select(Device.township_id, Device.online, func.count()).group_by(
            col(Device.township_id), col(Device.online)
        )
    ).all():
        snap.online[(township, bool(online))] = n
    running = (
        select(Broadcast.id)
        .where(Broadcast.status == dm.BroadcastStatus.ACTIVE.value)
        .where(col(Broadcast.expires_at_ms) > now)
    )
    snap.active_broadcasts = len(session.exec(running).all())
    for state, n in session.exec(
        select(Delivery.state, func.count())
        .where(col(Delivery.broadcast_id).in_(running))
        .group_by(col(Delivery.state))
    ).all():
        snap.deliveries[state] = n
    for outcome, n in session.exec(
        select(Occurrence.outcome, func.count()).group_by(col(Occurrence.outcome))
    ).all():
        snap.occurrences[outcome] = n
    first_voice = case(
        (col(Media.voices).like("edge-tts%"), "edge-tts"),
        (col(Media.voices).like("espeak-ng%"), "espeak-ng"),
        (col(Media.voices).like("neural%"), "neural"),
        else_="other",
    )
    for backend, n in session.exec(
        select(first_voice, func.count()).where(Media.source == "speech").group_by(first_voice)
    ).all():
        snap.speech[str(backend)] = n
    return snap


class Metrics:
    """Owns the process-lifetime metrics and renders a scrape."""

    def __init__(
        self, db: Database, ingestor: Ingestor, dispatcher: Dispatcher, events: EventHub
    ) -> None:
        self._db = db
        self._ingestor = ingestor
        self._dispatcher = dispatcher
        self.registry = CollectorRegistry()
        self.playing_latency = Histogram(
            "dalaba_dispatch_to_playing_seconds",
            "From a broadcast's publish to each terminal reporting playing.",
            buckets=PLAYING_BUCKETS,
            registry=self.registry,
        )
        self._published: dict[str, float] = {}
        # This process's own events only: each replica counts what it did.
        events.on(BroadcastChanged, self._on_broadcast, owner="metrics", relayed=False)
        events.on(DeliveryChanged, self._on_delivery, owner="metrics", relayed=False)

    def _on_broadcast(self, e: BroadcastChanged) -> None:
        # Emitted right after the publish (create) or the resend's publish.
        if e.change in ("created", "resent"):
            now = time.monotonic()
            self._published[e.broadcast_id] = now
            stale = [b for b, t in self._published.items() if now - t > PUBLISH_MEMORY_S]
            for broadcast_id in stale:
                del self._published[broadcast_id]

    def _on_delivery(self, e: DeliveryChanged) -> None:
        if e.state is p.DeliveryState.PLAYING and e.cause is dm.Cause.TERMINAL:
            published = self._published.get(e.broadcast_id)
            if published is not None:
                self.playing_latency.observe(time.monotonic() - published)

    async def render(self) -> bytes:
        snap = await self._db.run(lambda s: _snapshot(s, p.now_ms()))
        registry = CollectorRegistry()
        registry.register(_ScrapeCollector(snap, self))
        return generate_latest(registry) + generate_latest(self.registry)

    async def handle(self, _request: web.Request) -> web.Response:
        body = await self.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class _ScrapeCollector(Collector):
    def __init__(self, snap: _Snapshot, metrics: Metrics) -> None:
        self._snap = snap
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snap = self._snap
        online = GaugeMetricFamily(
            "dalaba_terminals", "Terminals by township and liveness.", labels=["township", "online"]
        )
        for (township, is_online), n in sorted(snap.online.items()):
            online.add_metric([township, "true" if is_online else "false"], n)
        yield online
        deliveries = GaugeMetricFamily(
            "dalaba_deliveries",
            "Deliveries of the broadcasts still running (not expired), by state.",
            labels=["state"],
        )
        for state in p.DeliveryState:
            deliveries.add_metric([state.value], snap.deliveries.get(state.value, 0))
        yield deliveries
        yield GaugeMetricFamily(
            "dalaba_broadcasts_running",
            "Broadcasts sent and not yet expired.",
            value=snap.active_broadcasts,
        )
        occurrences = GaugeMetricFamily(
            "dalaba_schedule_occurrences",
            "Schedule occurrences recorded, by outcome (missed ones are worth an alert).",
            labels=["outcome"],
        )
        for outcome in ("scheduled", "fired", "suppressed", "missed", "played_offline"):
            occurrences.add_metric([outcome], snap.occurrences.get(outcome, 0))
        occurrences.add_metric(["cancelled"], snap.occurrences.get("cancelled", 0))
        yield occurrences
        speech = GaugeMetricFamily(
            "dalaba_speech_media",
            "Rendered announcements stored, by the backend that spoke their first language.",
            labels=["backend"],
        )
        for backend in ("edge-tts", "neural", "espeak-ng", "other"):
            speech.add_metric([backend], snap.speech.get(backend, 0))
        yield speech
        yield GaugeMetricFamily(
            "dalaba_broker_connected",
            "1 while the controller's MQTT connection to the broker is up.",
            value=1 if self._metrics._dispatcher.connected else 0,
        )
        ingest = CounterMetricFamily(
            "dalaba_ingest_messages",
            "Terminal messages by what became of them since the controller started.",
            labels=["outcome"],
        )
        counters = self._metrics._ingestor.counters
        received = sum(n for k, n in counters.items() if k.startswith("received_"))
        ingest.add_metric(["received"], received)
        ingest.add_metric(["dropped"], counters.get("dropped", 0))
        ingest.add_metric(["unstorable"], counters.get("dropped_unstorable", 0))
        ingest.add_metric(["not_applied"], counters.get("reports_not_applied", 0))
        yield ingest
        commands = CounterMetricFamily(
            "dalaba_commands_published",
            "Signed commands the broker confirmed, one per area topic.",
            value=self._metrics._dispatcher.counters.get("commands_published", 0),
        )
        yield commands
