"""Live paging (实时喊话): a person speaks in the browser, the chosen terminals play it now.

A session is a broadcast of priority `paging` like any other (its deliveries carry each
terminal's state: `playing` is live, then `done`, `failed` or `preempted`), whose signed
play command names the paging chime as its media and carries a fresh Ed25519 public key
(`PlayBody.live`). The browser sends 16 kHz PCM over a WebSocket; the controller cuts it
into frames, encodes them as G.711 mu-law, signs each with the session's private key and
publishes them at QoS 0 on the session's own topic, which the terminals subscribed to
when they accepted the command. The private key never leaves this process and dies with
the session, so neither a broker account nor a replayed frame can speak through it.

Everything said after the chime is recorded; when the session ends, chime and voice are
stored as media and become the broadcast's media, so the records page plays what the
poles played, with who spoke, where and when in the broadcast and the audit log.
"""

from __future__ import annotations

import asyncio
import audioop
import base64
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydub import AudioSegment
from sqlmodel import Session

from controller import audit
from controller import deliveries as dm
from controller.auth import Principal
from controller.broadcasts import LIVE_ENDED_EXPIRY_MS, LIVE_PAGING_VOICES, add_deliveries
from controller.db import Database
from controller.dispatch import Dispatcher
from controller.errors import bad_request, forbidden, not_found
from controller.events import BroadcastChanged, EventHub
from controller.media import MediaStore, media_ref
from controller.models import Broadcast, Media
from controller.prepositioning import media_in_place
from controller.settings import Settings
from controller.speech import tones
from controller.speech.render import concat, encode_ogg_opus, silence
from controller.targets import TargetsIn, resolve
from dalaba import protocol as p

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
FRAME_MS = 60  # the brief allows 20-60 ms: fewer signatures to check, +20 ms latency
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000 * 2  # 16-bit PCM in
MAX_SESSION_S = 30 * 60  # a forgotten open microphone stops itself
# Anchored frame stamps drift from the wall clock by at most this before re-anchoring
# (the browser paused, the network stalled).
REANCHOR_MS = 200
ENDED_KEPT_MS = 3600_000  # an ended session still answers its view (and a late stop)
CATEGORY = "other"
TITLE = "实时喊话 live paging"


@dataclass
class LiveSession:
    broadcast_id: str
    principal: Principal
    key: Ed25519PrivateKey
    speak_from_ms: int  # the chime has ended on the terminals: frames count from here
    expires_at_ms: int
    device_count: int
    chime: Media
    seq: int = 0
    anchor_ms: int | None = None  # stamp of frame seq 0 of the current anchoring
    anchor_seq: int = 0
    pending: bytearray = field(default_factory=bytearray)
    recording: bytearray = field(default_factory=bytearray)
    bytes_published: int = 0
    spoken_ms: int = 0
    ended: bool = False
    ended_ms: int | None = None
    timer: asyncio.TimerHandle | None = None
    finishing: asyncio.Future[None] | None = None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.broadcast_id,
            "started_by": self.principal.user,
            "speak_from_ms": self.speak_from_ms,
            "device_count": self.device_count,
            "frames": self.seq,
            "spoken_ms": self.spoken_ms,
            "ended": self.ended,
        }


class LivePagingService:
    def __init__(
        self,
        db: Database,
        media: MediaStore,
        dispatcher: Dispatcher,
        settings: Settings,
        events: EventHub,
    ) -> None:
        self._db = db
        self._media = media
        self._dispatcher = dispatcher
        self._settings = settings
        self._events = events
        self._sessions: dict[str, LiveSession] = {}
        self._chime: Media | None = None

    def get(self, principal: Principal, broadcast_id: str) -> LiveSession:
        session = self._sessions.get(broadcast_id)
        if session is None:
            raise not_found(f"live paging session {broadcast_id}")
        if session.principal.user != principal.user:
            raise forbidden("only the person who started a live session may speak in it")
        return session

    async def _chime_media(self) -> Media:
        if self._chime is None:
            segment = concat([tones.paging_call(), silence(200)])
            audio = await encode_ogg_opus(segment)
            self._chime = await self._media.put(
                audio, mime="audio/ogg", duration_ms=len(segment), source="tone", text=TITLE
            )
        return self._chime

    async def start(self, principal: Principal, targets: TargetsIn) -> LiveSession:
        principal.require_live_paging()
        forget_before = p.now_ms() - ENDED_KEPT_MS
        for bid, old in list(self._sessions.items()):
            if old.ended_ms is not None and old.ended_ms < forget_before:
                del self._sessions[bid]
        resolved = await self._db.run(lambda s: resolve(s, targets, principal))
        if not resolved.device_ids:
            raise bad_request("targets", "no terminal is installed in the chosen area")
        chime = await self._chime_media()
        in_place = await self._db.run(
            lambda s: media_in_place(s, chime.sha256, resolved.device_ids)
        )
        lead = self._settings.sync_lead_ms + (0 if in_place else self._settings.fetch_lead_ms)
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        now = p.now_ms()
        start_at = now + lead
        expires_at = start_at + (MAX_SESSION_S + 60) * 1000
        play = p.PlayBody(
            broadcast_id=uuid.uuid4().hex,
            priority=p.Priority.PAGING,
            category=CATEGORY,
            title=TITLE,
            media=media_ref(chime, self._settings.media_mirrors),
            start_at=start_at,
            live=p.LiveStream(session_key=base64.b64encode(public).decode(), frame_ms=FRAME_MS),
        )
        command = p.Command.new(play, resolved.target, expires_at)

        def record(session: Session) -> None:
            session.add(
                Broadcast(
                    id=play.broadcast_id,
                    created_ms=now,
                    created_by=principal.user,
                    title=TITLE,
                    media_sha256=chime.sha256,
                    category=CATEGORY,
                    priority=p.Priority.PAGING.value,
                    targets=targets.model_dump(),
                    target=resolved.target.model_dump(mode="json"),
                    start_at_ms=start_at,
                    expires_at_ms=expires_at,
                    command_id=command.id,
                    voices=LIVE_PAGING_VOICES,
                    device_count=len(resolved.device_ids),
                    dispatch=dm.DispatchStatus.PENDING.value,
                )
            )
            session.flush()
            add_deliveries(session, play.broadcast_id, resolved.device_ids, now)
            audit.record(
                session,
                principal,
                "live_paging.start",
                play.broadcast_id,
                targets=targets.model_dump(),
                devices=len(resolved.device_ids),
            )

        await self._db.run(record)
        live = LiveSession(
            broadcast_id=play.broadcast_id,
            principal=principal,
            key=key,
            speak_from_ms=start_at + chime.duration_ms,
            expires_at_ms=expires_at,
            device_count=len(resolved.device_ids),
            chime=chime,
        )
        self._sessions[live.broadcast_id] = live
        live.timer = asyncio.get_running_loop().call_later(
            MAX_SESSION_S + lead / 1000, lambda: asyncio.ensure_future(self.end(live))
        )
        published = await self._dispatcher.send(command, resolved.topics)
        status = dm.DispatchStatus.PUBLISHED if published else dm.DispatchStatus.PENDING

        def mark(session: Session) -> None:
            row = session.get(Broadcast, play.broadcast_id)
            if row is not None:
                row.dispatch = status.value
                session.add(row)

        await self._db.run(mark)
        self._events.emit(
            BroadcastChanged(
                broadcast_id=live.broadcast_id,
                change="created",
                status=dm.BroadcastStatus.ACTIVE,
                actor=principal.user,
            )
        )
        log.info(
            "live paging %s by %s to %d terminals",
            live.broadcast_id,
            principal.user,
            live.device_count,
        )
        return live

    def feed(self, live: LiveSession, pcm: bytes) -> None:
        """16 kHz mono 16-bit little-endian PCM from the microphone, in any chunking."""
        if live.ended:
            return
        now = p.now_ms()
        if now < live.speak_from_ms:
            return  # the chime is still sounding: the console says when to speak
        live.pending += pcm[: len(pcm) - len(pcm) % 2]
        while len(live.pending) >= FRAME_BYTES:
            chunk = bytes(live.pending[:FRAME_BYTES])
            del live.pending[:FRAME_BYTES]
            live.recording += chunk
            live.spoken_ms += FRAME_MS
            self._publish(live, audioop.lin2ulaw(chunk, 2), now)

    def _publish(self, live: LiveSession, ulaw: bytes, now: int, *, end: bool = False) -> None:
        # Stamps advance by exactly one frame: the terminals hear even spacing whatever
        # the network did to the WebSocket; re-anchored when they drift from the clock.
        anchored = (
            None
            if live.anchor_ms is None
            else live.anchor_ms + (live.seq - live.anchor_seq) * FRAME_MS
        )
        if anchored is None or abs(now - anchored) > REANCHOR_MS:
            live.anchor_ms, live.anchor_seq, anchored = now, live.seq, now
        frame = p.seal_live_frame(
            live.broadcast_id, live.seq, anchored, ulaw, live.key.sign, end=end
        )
        live.seq += 1
        mqtt = self._dispatcher.mqtt
        if mqtt is not None and mqtt.connected:
            mqtt.publish(p.Topics.live(live.broadcast_id), frame, qos=p.LIVE_QOS)
            live.bytes_published += len(frame)

    async def stop(self, principal: Principal, broadcast_id: str) -> LiveSession:
        live = self.get(principal, broadcast_id)
        await self.end(live)
        return live

    async def end(self, live: LiveSession) -> None:
        """Send the end frame, and keep what was said as the broadcast's media. Every
        caller (stop, the socket closing, the time limit) waits for the same ending, so
        an answer to `stop` means the recording is stored."""
        if live.finishing is None:
            live.finishing = asyncio.ensure_future(self._finish(live))
        await asyncio.shield(live.finishing)

    async def _finish(self, live: LiveSession) -> None:
        live.ended = True
        live.ended_ms = p.now_ms()
        if live.timer is not None:
            live.timer.cancel()
        now = p.now_ms()
        # QoS 0: the end frame is sent three times (a duplicate is ignored); a terminal
        # that misses all three ends on its loss timeout, in silence.
        for _ in range(3):
            self._publish(live, b"", now, end=True)
        speech = AudioSegment(
            data=bytes(live.recording), sample_width=2, frame_rate=SAMPLE_RATE, channels=1
        )
        live.recording = bytearray()  # the view stays a while (a late stop); the audio not
        chime = AudioSegment.from_file(self._media.path_for(live.chime.sha256))
        segment = concat([chime, speech])
        try:
            audio = await encode_ogg_opus(segment)
            stored = await self._media.put(
                audio, mime="audio/ogg", duration_ms=len(segment), source="live", text=TITLE
            )
        except Exception:
            log.exception("live paging %s: recording not stored", live.broadcast_id)
            return

        def keep(session: Session) -> None:
            row = session.get(Broadcast, live.broadcast_id)
            if row is not None:
                row.media_sha256 = stored.sha256
                # Settled by the sweep soon after the terminals' last reports.
                row.expires_at_ms = min(row.expires_at_ms, p.now_ms() + LIVE_ENDED_EXPIRY_MS)
                session.add(row)
            audit.record(
                session,
                live.principal,
                "live_paging.end",
                live.broadcast_id,
                spoken_ms=len(speech),
                recording=stored.sha256,
                frames=live.seq,
            )

        await self._db.run(keep)
        log.info("live paging %s ended: %d ms spoken", live.broadcast_id, len(speech))

    async def close(self) -> None:
        for live in list(self._sessions.values()):
            if not live.ended:
                await self.end(live)
