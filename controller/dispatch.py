"""The controller's MQTT side: signed commands out, device reports in.

Commands are signed here and nowhere else; reports are handed to the ingestor.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from dalaba import protocol as p
from dalaba.mqtt import BrokerAddress, MqttConnection
from dalaba.signing import Signer

log = logging.getLogger(__name__)

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
        )
        await self.mqtt.start(timeout_s=15)

    @staticmethod
    def _filter(topic: str, plain: bool) -> str:
        return topic if plain else p.Topics.shared(topic, p.Topics.CONTROLLER_SHARE_GROUP)

    async def stop(self) -> None:
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
