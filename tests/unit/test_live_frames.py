"""Live paging frames: what verifies, what is refused, and how the terminal's buffer
orders, drops and ends them."""

from __future__ import annotations

import asyncio
import base64
import warnings

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dalaba import protocol as p
from edge_agent.live import LiveLost, LiveReceiver, decode_mulaw

BID = "b" * 32


def session(**spec: object) -> tuple[Ed25519PrivateKey, p.LiveStream]:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return key, p.LiveStream(session_key=base64.b64encode(public).decode(), **spec)  # type: ignore[arg-type]


def test_a_frame_verifies_only_with_its_session_key_and_broadcast() -> None:
    key, spec = session()
    raw = p.seal_live_frame(BID, 7, 1234, b"\x01\x02", key.sign)
    frame = p.open_live_frame(raw, BID, spec.public_key())
    assert (frame.seq, frame.t_ms, frame.end, frame.audio) == (7, 1234, False, b"\x01\x02")

    _, other = session()
    for bad_raw, bid, pub in (
        (raw, BID, other.public_key()),  # someone else's key
        (raw, "c" * 32, spec.public_key()),  # replayed into another session
        (raw[:20] + bytes([raw[20] ^ 1]) + raw[21:], BID, spec.public_key()),  # altered audio
    ):
        with pytest.raises(p.ProtocolError) as exc:
            p.open_live_frame(bad_raw, bid, pub)
        assert exc.value.reason is p.RejectReason.BAD_SIGNATURE


def test_garbage_is_refused_by_shape() -> None:
    _, spec = session()
    with pytest.raises(p.ProtocolError, match="too short"):
        p.open_live_frame(b"DLF1", BID, spec.public_key())
    with pytest.raises(p.ProtocolError) as exc:
        p.open_live_frame(b"x" * 10_000, BID, spec.public_key())
    assert exc.value.reason is p.RejectReason.OVERSIZED
    with pytest.raises(p.ProtocolError, match="magic"):
        p.open_live_frame(b"XXXX" + bytes(100), BID, spec.public_key())
    with pytest.raises(ValueError):
        p.seal_live_frame(BID, 0, 0, bytes(p.MAX_LIVE_AUDIO_BYTES + 1), lambda b: bytes(64))
    with pytest.raises(p.ProtocolError):
        p.LiveStream(session_key="!" * 44).public_key()


def test_live_topics_round_trip_and_refuse_other_levels() -> None:
    assert p.Topics.parse_live_topic(p.Topics.live(BID)) == BID
    assert p.Topics.parse_live_topic(f"{p.TOPIC_ROOT}/live/a/b") is None
    assert p.Topics.parse_live_topic(p.Topics.command_device("d1")) is None


def test_mulaw_decoding_matches_the_reference() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    data = bytes(range(256))
    assert decode_mulaw(data) == audioop.ulaw2lin(data, 2)


async def test_the_receiver_plays_in_order_drops_forgeries_late_and_repeats_and_ends() -> None:
    key, spec = session(playout_delay_ms=500)
    forger = Ed25519PrivateKey.generate()
    rx = LiveReceiver(BID, spec)
    now = p.now_ms()
    audio = bytes([0xFF]) * 640  # mu-law silence

    assert rx.offer(p.seal_live_frame(BID, 0, now - 10_000, audio, key.sign))  # long past
    assert rx.offer(p.seal_live_frame(BID, 1, now, audio, key.sign))
    assert not rx.offer(p.seal_live_frame(BID, 2, now, b"\x00" * 640, forger.sign))
    assert not rx.offer(p.seal_live_frame(BID, 1, now, audio, key.sign))  # a replay
    assert rx.offer(p.seal_live_frame(BID, 2, now + 40, audio, key.sign))
    assert rx.offer(p.seal_live_frame(BID, 3, now + 80, b"", key.sign, end=True))

    got = [(at, len(pcm)) async for at, pcm in rx.chunks(p.now_ms)]
    assert got == [(now + 500, 1280), (now + 540, 1280)]
    assert rx.counters["late"] == 1
    assert rx.counters["refused_bad_signature"] == 1
    assert rx.counters["duplicate"] == 1


async def test_the_receiver_gives_up_when_the_frames_stop() -> None:
    key, spec = session(loss_timeout_ms=500)
    rx = LiveReceiver(BID, spec)
    rx.offer(p.seal_live_frame(BID, 0, p.now_ms(), bytes(8), key.sign))
    got = []
    with pytest.raises(LiveLost):
        async for item in rx.chunks(p.now_ms):
            got.append(item)
            # A forged frame does not keep the session alive.
            rx.offer(p.seal_live_frame(BID, 1, p.now_ms(), bytes(8), lambda b: bytes(64)))
    assert len(got) == 1
    await asyncio.sleep(0)
