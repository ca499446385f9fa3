"""A controller that finds its broker session gone asks the terminals to report again.

A broker that restarts without its saved state (killed before its autosave, or a new
broker) acknowledges every report published before the controller has subscribed
again, and delivers it to nobody; the terminal's outbox has let go of it. The
controller notices at its CONNACK (no session present) and publishes a signed
`ReportAgainBody` on the all-terminals topic (controller/dispatch.py); a terminal
publishes its final reports again (tests/unit/test_agent_truth.py), and the end to end
case is tests/integration/test_faults.py's power cut. Here: the real Dispatcher and a
real Mosquitto, whose session the controller has or has not.
"""

from __future__ import annotations

import pytest

from dalaba import protocol as p
from dalaba.signing import Ed25519Signer
from tests.integration import test_broker_identity as identity
from tests.integration.test_broker_identity import (
    Broker,
    Controller,
    Terminal,
    wait_until,
)

# The same private Mosquitto (dalaba's config) and controller key as there.
broker = identity.broker
signer = identity.signer
terminal = identity.victim  # a terminal's connection, started

pytestmark = pytest.mark.broker

HOUR_MS = 3_600_000
MARGIN_MS = 60_000
SLACK_MS = 5_000


def asks(terminal: Terminal) -> list[p.ReportAgainBody]:
    return [c.body for c in terminal.commands if isinstance(c.body, p.ReportAgainBody)]


class Recording(Controller):
    """The controller's Dispatcher, remembering every command it signed and sent."""

    sent: list[p.Command]

    @classmethod
    async def start(cls, broker: Broker, signer: Ed25519Signer) -> Recording:
        controller = cls(broker, signer)
        controller.sent = []
        send = controller.dispatcher.send

        async def recorded(command: p.Command, topics: tuple[str, ...]) -> bool:
            controller.sent.append(command)
            return await send(command, topics)

        controller.dispatcher.send = recorded  # type: ignore[method-assign]
        await controller.dispatcher.start()
        return controller

    def asks(self) -> list[p.ReportAgainBody]:
        return [c.body for c in self.sent if isinstance(c.body, p.ReportAgainBody)]


async def test_a_controller_without_its_session_asks_the_terminals_to_report_again(
    broker: Broker, signer: Ed25519Signer, terminal: Terminal
) -> None:
    # A first start: the broker has no session of the controller's. Asked for the last
    # hour, on the topic every terminal listens to, signed like any command.
    before = p.now_ms()
    controller = await Recording.start(broker, signer)
    await wait_until(lambda: len(asks(terminal)) == 1, "the terminal asked to report again")
    since = asks(terminal)[0].since
    assert before - HOUR_MS - MARGIN_MS - SLACK_MS <= since <= p.now_ms() - HOUR_MS - MARGIN_MS

    # A restart against a broker that kept the session: nothing to ask. The command
    # sent after it arrives, so an ask made at the CONNACK would have arrived first.
    await controller.stop()
    controller = await Recording.start(broker, signer)
    assert controller.dispatcher.mqtt is not None and controller.dispatcher.mqtt.session_present
    marker = p.Command.new(
        p.CancelBody(broadcast_id="b-marker"), p.Target(all=True), p.now_ms() + 60_000
    )
    assert await controller.dispatcher.send(marker, (p.Topics.COMMAND_ALL,))
    await terminal.wait_for_command(marker.id)
    assert len(asks(terminal)) == 1
    assert controller.asks() == []

    # The broker crashes and comes back without its saved state: the controller asks
    # for what was finished since its link was lost (less the clock margin).
    broker.process.kill()
    (broker.process.files.data_dir / "mosquitto.db").unlink(missing_ok=True)
    await wait_until(lambda: not controller.dispatcher.connected, "the controller's link lost")
    lost_at = controller.dispatcher.mqtt.lost_at_ms
    assert lost_at is not None
    await broker.process.start_async()
    await wait_until(lambda: len(controller.asks()) == 1, "the controller asked again")
    assert controller.asks()[0].since == lost_at - MARGIN_MS
    await wait_until(lambda: controller.dispatcher.counters["report_again_sent"] == 1, "its PUBACK")
    await controller.stop()
