"""Inline audio in a play command (`MediaRef.inline`): the largest allowed still fits the
terminals' envelope limit once signed, the controller leaves it out of a command that
would not fit, and the setting cannot be raised beyond what fits."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from pydantic import ValidationError

from controller.media import fits_inline, with_inline
from controller.settings import Settings
from dalaba import protocol as p
from dalaba.signing import Ed25519Signer, verifier_set_from_pem


def ref_for(data: bytes) -> p.MediaRef:
    return p.MediaRef(
        sha256=hashlib.sha256(data).hexdigest(),
        url=hashlib.sha256(data).hexdigest(),
        size=len(data),
        duration_ms=20_000,
    )


def play_command(media: p.MediaRef, target: p.Target) -> p.Command:
    body = p.PlayBody(
        broadcast_id="b" * 32,
        priority=p.Priority.EMERGENCY,
        level=1,
        category="flood",
        title="防" * 100,  # the longest title a broadcast may have
        media=media,
        start_at=p.now_ms() + 600,
        volume=100,
    )
    return p.Command.new(body, target, p.now_ms() + 3_600_000)


def test_the_largest_inline_audio_fits_the_envelope_limit_once_signed() -> None:
    data = os.urandom(p.MAX_INLINE_MEDIA_BYTES)
    media = with_inline(ref_for(data), data)
    assert fits_inline(media, p.Target(all=True))
    signer = Ed25519Signer.generate()
    sealed = p.seal(play_command(media, p.Target(all=True)), signer)
    assert len(sealed) <= p.MAX_COMMAND_BYTES
    # As a terminal opens it: from the PEM its key file holds.
    opened = p.open_envelope(sealed, verifier_set_from_pem([signer.trust_pem()]), p.now_ms())
    assert isinstance(opened.body, p.PlayBody)
    assert base64.b64decode(opened.body.media.inline or "") == data


def test_a_command_that_would_not_fit_goes_without_its_inline_audio() -> None:
    data = os.urandom(p.MAX_INLINE_MEDIA_BYTES)
    media = with_inline(ref_for(data), data)
    crowded = p.Target(devices=tuple(f"d-t{i:03d}-v{i:03d}-{i:04d}" for i in range(1500)))
    assert not fits_inline(media, crowded)
    # ... and indeed it would have been dropped by every terminal as oversized.
    sealed = p.seal(play_command(media, crowded), Ed25519Signer.generate())
    assert len(sealed) > p.MAX_COMMAND_BYTES


def test_inline_longer_than_the_protocol_allows_is_malformed() -> None:
    data = os.urandom(p.MAX_INLINE_MEDIA_BYTES + 3)
    with pytest.raises(ValidationError) as info:
        p.MediaRef.model_validate(
            {**ref_for(data).model_dump(), "inline": base64.b64encode(data).decode()}
        )
    assert info.value.errors()[0]["loc"] == ("inline",)


def test_an_older_terminal_reads_the_command_without_the_field() -> None:
    """Receivers ignore fields they do not know: a MediaRef without `inline` (as an
    older agent's model has it) still parses the newer command, with its URL."""
    data = b"OggS" + bytes(100)
    wire = with_inline(ref_for(data), data).model_dump_json()

    class OlderMediaRef(p._Payload):
        sha256: str
        url: str
        size: int
        duration_ms: int

    older = OlderMediaRef.model_validate_json(wire)
    assert older.url == hashlib.sha256(data).hexdigest()


def test_the_setting_is_bounded_by_what_fits() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(demo=True, inline_media_max_bytes=p.MAX_INLINE_MEDIA_BYTES + 1)
    assert info.value.errors()[0]["loc"] == ("inline_media_max_bytes",)
    assert Settings(demo=True).inline_media_max_bytes == 64 * 1024
