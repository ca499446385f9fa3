"""The broker's write and read rules, tested against the real Mosquitto with a real
terminal's credentials (not by reading the ACL file): a terminal may publish only its
own reports and read only the command topics that cover it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dalaba import protocol as p
from dalaba.mqtt import BrokerAddress, MqttConnection
from edge_agent.config import DeviceConfig
from firmware_sim.fleet import device_dir

pytestmark = [pytest.mark.broker, pytest.mark.slow]


async def connect_as_terminal(
    county: Any, device_id: str, on_message: Any = None, subscribe: list[str] | None = None
) -> MqttConnection:
    config = DeviceConfig.load(device_dir(county.data_dir, device_id) / "device.json")
    conn = MqttConnection(
        client_id=device_id,
        broker=BrokerAddress.from_url(config.broker_url).with_credentials(
            config.mqtt_username, config.mqtt_password.get_secret_value()
        ),
        on_message=on_message or (lambda _t, _p: None),
        subscriptions=[(t, 1) for t in subscribe or []],
        session_expiry_s=0,
    )
    await conn.start()
    return conn


async def test_a_terminal_can_publish_only_its_own_reports(make_county: Any) -> None:
    county = await make_county(villages=3)
    hostile, victim = sorted(county.fleet.agents)[:2]
    await county.fleet.power_off(hostile)  # its credentials are now the attacker's
    seen: list[tuple[str, bytes]] = []
    watcher = await county.attacker(
        subscribe=f"{p.TOPIC_ROOT}/#", on_message=lambda t, m: seen.append((t, m))
    )
    conn = await connect_as_terminal(county, hostile)
    forbidden = [
        p.Topics.COMMAND_ALL,
        p.Topics.command_device(victim),
        p.Topics.command_village("t01-v02"),
        p.Topics.device_ack(victim),
        p.Topics.device_status(victim),
        p.Topics.device_telemetry(victim),
        f"{p.TOPIC_ROOT}/device/{hostile}/somewhere-else",
    ]
    for topic in forbidden:
        conn.publish(topic, b'{"forged": true}', qos=1)
    # Its own report topic is allowed; sent last on the same connection, it arrives after
    # anything the broker let through before it.
    marker = p.DeviceEvent(
        device_id=hostile, kind=p.EventKind.FAULT_CLEARED, at=p.now_ms(), reason="marker"
    ).to_bytes()
    await conn.publish_confirmed(p.Topics.device_event(hostile), marker)

    async def marker_arrived() -> bool:
        return any(m == marker for _, m in seen)

    await county.wait_for(marker_arrived, 10, "the allowed publish to arrive")
    leaked = [t for t, m in seen if m == b'{"forged": true}']
    assert leaked == []
    await conn.stop()
    await watcher.stop()


async def test_a_terminal_reads_only_the_command_topics_that_cover_it(make_county: Any) -> None:
    county = await make_county(villages=3)
    hostile, victim = sorted(county.fleet.agents)[:2]
    await county.fleet.power_off(hostile)
    got: list[str] = []
    conn = await connect_as_terminal(
        county,
        hostile,
        on_message=lambda t, _m: got.append(t),
        subscribe=[
            p.Topics.command_device(victim),  # another terminal's commands
            f"{p.TOPIC_ROOT}/device/+/ack",  # everyone's reports
            f"{p.TOPIC_ROOT}/cmd/#",  # every command topic
        ],
    )
    bid = await county.broadcast(
        text="会议通知。", category="meeting", targets={"devices": [victim]}
    )
    await county.wait_states(bid, {"done"}, 30)
    # Its own covering topic does deliver (so the subscription works at all).
    own = await county.broadcast(
        text="会议通知。", category="meeting", targets={"all": True}, expires_in_s=60
    )

    async def own_arrived() -> bool:
        return p.Topics.COMMAND_ALL in got

    await county.wait_for(own_arrived, 10, "the county-wide command to reach it")
    assert p.Topics.command_device(victim) not in got
    assert not [t for t in got if t.endswith("/ack")]
    await conn.stop()
    await asyncio.gather(county.wait_states(own, {"done", "offline"}, 30))
