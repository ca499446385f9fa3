"""The lean MQTT 5 client's codec (dalaba.mqtt_lean): packets as the spec lays them out,
properties of every wire type, and malformed input refused with the field named. The
client against a real broker: tests/integration/test_fleet_lean.py."""

from __future__ import annotations

import struct

import pytest

from dalaba import mqtt_lean as m
from dalaba.mqtt import WillMessage


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_variable_byte_integers_round_trip(value: int, encoded: bytes) -> None:
    assert m.encode_varint(value) == encoded
    assert m.decode_varint(encoded, 0) == (value, len(encoded))


def test_variable_byte_integer_limits() -> None:
    with pytest.raises(m.MqttProtocolError, match="out of range"):
        m.encode_varint(268_435_456)
    with pytest.raises(m.MqttProtocolError, match="more than four bytes"):
        m.decode_varint(b"\xff\xff\xff\xff\x01", 0)
    with pytest.raises(IndexError):  # incomplete: the reader waits for more
        m.decode_varint(b"\x80", 0)


def test_properties_of_every_wire_type_round_trip() -> None:
    props = {
        0x01: 1,  # payload format (byte)
        0x02: 3600,  # message expiry (four bytes)
        0x03: "application/json",  # content type (string)
        0x09: b"\x00\x01corr",  # correlation data (binary)
        0x0B: [7, 300],  # subscription identifiers (varint, repeatable)
        0x21: 20,  # receive maximum (two bytes)
        0x26: [("k", "v"), ("村", "广播")],  # user properties (string pairs, repeatable)
    }
    encoded = m.encode_properties(props)
    decoded, end = m.decode_properties(encoded, 0)
    assert decoded == props
    assert end == len(encoded)
    assert m.encode_properties(None) == b"\x00"
    # Decoding stops at the declared length: what follows is the payload.
    assert m.decode_properties(b"\x02\x01\x01XYZ", 0) == ({0x01: 1}, 3)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x02\x7f\x00", "property 0x7f: unknown"),
        (b"\x03\x02\x00\x00\x00\x10", "property 0x02: runs past the property length"),
        (b"\x03\x02\x00\x00", r"property 0x02: packet ends early"),
        (b"\x05\x21\x00\x01\x21\x00", r"property 0x21: packet ends early"),
        (b"\x06\x21\x00\x01\x21\x00\x02", r"property 0x21: given twice"),
        (b"\x04\x03\x00\x02\xff", "property 0x03: packet ends early"),
        (b"\x05\x03\x00\x02\xff\xfe", "property 0x03: not UTF-8"),
        (b"\x0a", "properties: packet ends early"),
    ],
)
def test_malformed_properties_are_refused_by_name(raw: bytes, message: str) -> None:
    with pytest.raises(m.MqttProtocolError, match=message):
        m.decode_properties(raw, 0)


def test_connect_packet_layout() -> None:
    will = WillMessage("dalaba/device/d-1/status", b'{"online":false}', qos=1, retain=True)
    packet = m.encode_connect(
        "d-1", keepalive_s=30, session_expiry_s=86_400, username="d-1", password="pw", will=will
    )
    reader = m.PacketReader()
    [(first, body)] = reader.feed(packet)
    assert first == m.CONNECT << 4
    assert body[:6] == b"\x00\x04MQTT" and body[6] == 5
    flags = body[7]
    # username, password, will retain, will QoS 1, will flag; clean start off.
    assert flags == 0x80 | 0x40 | 0x20 | 0x08 | 0x04
    assert struct.unpack("!H", body[8:10]) == (30,)
    props, pos = m.decode_properties(body, 10)
    assert props == {m.PROP_SESSION_EXPIRY: 86_400}
    client_id, pos = m._string(body, pos, "client id")
    assert client_id == "d-1"
    will_props, pos = m.decode_properties(body, pos)
    assert will_props == {}
    topic, pos = m._string(body, pos, "will topic")
    payload, pos = m._binary(body, pos, "will payload")
    user, pos = m._string(body, pos, "username")
    password, pos = m._binary(body, pos, "password")
    assert (topic, payload, user, password, pos) == (
        will.topic,
        will.payload,
        "d-1",
        b"pw",
        len(body),
    )


def test_publish_round_trip_with_expiry_and_dup() -> None:
    packet = m.encode_publish(
        "dalaba/cmd/all", b"\x00payload", qos=1, retain=True, packet_id=513, expiry_s=90, dup=True
    )
    [(first, body)] = m.PacketReader().feed(packet)
    msg = m.decode_publish(first, body)
    assert msg == m.Publish(
        "dalaba/cmd/all", b"\x00payload", 1, True, True, 513, {m.PROP_MESSAGE_EXPIRY: 90}
    )
    qos0 = m.decode_publish(*m.PacketReader().feed(m.encode_publish("t", b"x"))[0])
    assert (qos0.qos, qos0.packet_id, qos0.payload, qos0.properties) == (0, 0, b"x", {})


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"topic": "a/+/b"}, "topic"),
        ({"topic": ""}, "topic"),
        ({"qos": 3}, "qos"),
        ({"qos": 1, "packet_id": 0}, "packet id"),
        ({"qos": 1, "packet_id": 70_000}, "packet id"),
    ],
)
def test_publish_refuses_bad_fields(kw: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"topic": "t", "qos": 0, "packet_id": 0} | kw
    with pytest.raises(m.MqttProtocolError, match=message):
        m.encode_publish(args.pop("topic"), b"", **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("first", "body", "message"),
    [
        (0x36, b"\x00\x01t\x00\x01\x00", "qos: 3"),
        (0x32, b"\x00\x01t\x00\x00\x00", "packet id: 0"),
        (0x32, b"\x00\x01t\x00", "packet id: packet ends early"),
        (0x30, b"\x00\x05ab", "publish topic: packet ends early"),
        (0x30, b"\x00\x02\xc3\x28\x00", "publish topic: not UTF-8"),
        (0x30, b"\x00\x02a\x00\x00", "U\\+0000"),
        (0x30, b"\x00\x00\x00", "empty without a topic alias"),
    ],
)
def test_malformed_publish_is_refused_by_name(first: int, body: bytes, message: str) -> None:
    with pytest.raises(m.MqttProtocolError, match=message):
        m.decode_publish(first, body)


def test_acks_subscribe_and_connack() -> None:
    assert m.encode_ack(m.PUBACK, 7) == b"\x40\x02\x00\x07"
    assert m.encode_ack(m.PUBREL, 7) == b"\x62\x02\x00\x07"  # PUBREL's fixed flags
    assert m.decode_ack(b"\x00\x07") == (7, 0)
    assert m.decode_ack(b"\x00\x07\x10") == (7, 0x10)  # no matching subscribers
    assert m.decode_ack(b"\x00\x07\x87\x00") == (7, 0x87)
    sub = m.encode_subscribe(9, [("dalaba/cmd/all", 1), ("dalaba/cmd/v/v1", 1)])
    [(first, body)] = m.PacketReader().feed(sub)
    assert first == 0x82 and body[:3] == b"\x00\x09\x00"
    assert body.endswith(b"dalaba/cmd/v/v1\x01")
    assert m.decode_suback(b"\x00\x09\x00\x01\x80") == (9, [1, 0x80])
    session, reason, props = m.decode_connack(b"\x01\x00\x03\x21\x00\x14")
    assert (session, reason, props) == (True, 0, {m.PROP_RECEIVE_MAXIMUM: 20})
    with pytest.raises(m.MqttProtocolError, match="connack flags"):
        m.decode_connack(b"\x02\x00\x00")
    with pytest.raises(m.MqttProtocolError, match="connack"):
        m.decode_connack(b"\x00")


def test_reader_splits_a_stream_at_any_boundary() -> None:
    packets = [
        m.encode_publish("a/b", b"x" * 200, qos=1, packet_id=1),  # a two-byte length
        m.encode_ack(m.PUBACK, 2),
        m.PINGREQ_PACKET,
        m.encode_publish("c", b"", qos=0),
    ]
    stream = b"".join(packets)
    for cut in range(1, len(stream)):
        reader = m.PacketReader()
        got = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert [bytes([f]) + m.encode_varint(len(b)) + b for f, b in got] == packets, cut
    # One byte at a time, as a slow link would deliver them.
    reader = m.PacketReader()
    got = [p for i in range(len(stream)) for p in reader.feed(stream[i : i + 1])]
    assert len(got) == 4


def test_reader_refuses_a_length_over_the_limit_or_malformed() -> None:
    with pytest.raises(m.MqttProtocolError, match="remaining length"):
        m.PacketReader(max_bytes=100).feed(b"\x30" + m.encode_varint(101))
    with pytest.raises(m.MqttProtocolError, match="remaining length: more than four bytes"):
        m.PacketReader().feed(b"\x30\xff\xff\xff\xff\x01")
