"""The controller's MQTT side: signed commands out, device reports in.

Commands are signed here and nowhere else; reports are handed to the ingestor.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from controller.timefmt import iso
from dalaba import protocol as p
from dalaba.mqtt import BrokerAddress, MqttConnection
from dalaba.signing import Signer

log = logging.getLogger(__name__)

# When the broker no longer holds this controller's session, terminals are asked for
# the final reports they made since the link was lost, less this margin for their
# clocks; with no earlier link in this process (a start against a broker that lost
# the session), for this long back. A terminal keeps its latest 64 (edge_agent.outbox).
REPORT_AGAIN_MARGIN_MS = 60_000
REPORT_AGAIN_FIRST_WINDOW_MS = 3_600_000
REPORT_AGAIN_EXPIRY_MS = 60_000

# Every report topic the controller takes in, with its QoS.
REPORTS = (
    (p.Topics.ALL_DEVICE_STATUS, 1),
    (p.Topics.ALL_DEVICE_ACKS, 1),
    (p.Topics.ALL_DEVICE_EVENTS, 1),
    (p.Topics.ALL_DEVICE_TELEMETRY, 0),
)


class Dispatcher:
    def __init__(
        self,
        broker: BrokerAddress,
        signer: Signer,
        on_report: Callable[[str, str, bytes, Callable[[], None]], None],
        *,
        shared_ingest: bool = False,
    ) -> None:
        if not broker.username:
            raise ValueError("the controller needs a broker account (DALABA_BROKER_USERNAME)")
        self._broker = broker
        self.signer = signer
        self._on_report = on_report
        # The broker replaces every client id with the account's username
        # (use_username_as_clientid), so the id is the username: one session per replica,
        # dalaba-controller, dalaba-controller-2, ... (see dalaba_ops.broker.controller_username).
        self._client_id = broker.username
        # Replicas (PostgreSQL) share the report topics, so each report reaches one of
        # them; a single controller subscribes plainly. Each drops the other form, which
        # its persistent session may hold from before the county changed its mind.
        self._shared_ingest = shared_ingest
        self.counters: Counter[str] = Counter()
        self.mqtt: MqttConnection | None = None
        self._report_again_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.mqtt = MqttConnection(
            client_id=self._client_id,
            broker=self._broker,
            # Reports are acknowledged to the broker by the ingestor once stored.
            on_message_manual_ack=self._on_message,
            subscriptions=[
                (self._filter(topic, not self._shared_ingest), qos) for topic, qos in REPORTS
            ],
            unsubscriptions=[self._filter(topic, self._shared_ingest) for topic, _ in REPORTS],
            session_expiry_s=p.CONTROLLER_SESSION_EXPIRY_S,
            max_inflight=1000,
            on_connected=self._on_connected,
        )
        await self.mqtt.start(timeout_s=15)

    def _on_connected(self) -> None:
        """A broker that lost this controller's session (restarted without its saved
        state, or replaced) acknowledged every report published before the
        subscriptions were made again, and delivered them to nobody; the terminals'
        outboxes have let go of them. Ask every terminal to send its final reports
        again; those already stored are ignored by their `seq`."""
        mqtt = self.mqtt
        if mqtt is None or mqtt.session_present:
            return
        now = p.now_ms()
        lost = mqtt.lost_at_ms
        if lost is None:
            lost = now - REPORT_AGAIN_FIRST_WINDOW_MS
        since = max(0, lost - REPORT_AGAIN_MARGIN_MS)
        command = p.Command.new(
            p.ReportAgainBody(since=since), p.Target(all=True), now + REPORT_AGAIN_EXPIRY_MS
        )
        self._report_again_task = asyncio.get_running_loop().create_task(
            self._ask_report_again(command)
        )

    async def _ask_report_again(self, command: p.Command) -> None:
        assert isinstance(command.body, p.ReportAgainBody)
        assert self.mqtt is not None
        # At a first start the broker has no session to keep; after a lost link it
        # should have kept it (persistence), so say so louder.
        level = logging.INFO if self.mqtt.lost_at_ms is None else logging.WARNING
        log.log(
            level,
            "no session of this controller on the broker (a first start, or a broker that "
            "lost its saved state): terminals asked to report again what they finished "
            "since %s",
            iso(command.body.since),
        )
        if await self.send(command, (p.Topics.COMMAND_ALL,)):
            self.counters["report_again_sent"] += 1

    @staticmethod
    def _filter(topic: str, plain: bool) -> str:
        return topic if plain else p.Topics.shared(topic, p.Topics.CONTROLLER_SHARE_GROUP)

    async def stop(self) -> None:
        if self._report_again_task is not None:
            self._report_again_task.cancel()
        if self.mqtt is not None:
            await self.mqtt.stop()

    @property
    def connected(self) -> bool:
        return self.mqtt is not None and self.mqtt.connected

    async def send(self, command: p.Command, topics: tuple[str, ...]) -> bool:
        """Sign and publish one command on each topic, QoS 1, with the MQTT message
        expiry equal to the command's, so a terminal that reconnects in time still
        gets it and one that reconnects too late does not. True when the broker
        acknowledged every publish; otherwise paho keeps them queued for reconnect."""
        assert self.mqtt is not None
        envelope = p.seal(command, self.signer)
        expiry_s = max(1, (command.expires_at - p.now_ms()) // 1000)
        results = await asyncio.gather(
            *(
                self.mqtt.publish_confirmed(topic, envelope, expiry_s=expiry_s, timeout_s=3)
                for topic in topics
            ),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        self.counters["commands_published"] += len(topics) - len(failed)
        if failed:
            log.warning(
                "command %s: %d of %d publishes unconfirmed", command.id, len(failed), len(topics)
            )
        return not failed

    def _on_message(self, topic: str, payload: bytes, ack: Callable[[], None]) -> None:
        parsed = p.Topics.parse_device_topic(topic)
        if parsed is None:
            self.counters["dropped_unknown_topic"] += 1
            ack()
            return
        device_id, kind = parsed
        self._on_report(device_id, kind, payload, ack)
