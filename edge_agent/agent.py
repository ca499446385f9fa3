"""The terminal's agent: verify, fetch, arbitrate, play, report.

One instance per terminal. The simulator runs thousands of them in one event loop, so
nothing here blocks: file work is small, audio decoding belongs to the hardware, and
MQTT is driven from the loop by `dalaba.mqtt`.

What survives a crash or a power cut, on the terminal's flash (`state_dir`):
- every report and event not yet acknowledged by the broker (`edge_agent.outbox`),
  sent in order after the reconnect or the next start;
- every play accepted and not finished (`edge_agent.journal`): at the next start an
  interrupted play is reported (`failed: interrupted`, with the offset reached) or, if
  it is still wanted, played again from its start, and a queued one is resumed;
- the command ids seen (replay protection), the broadcasts and occurrences claimed
  (with the attempt) and those played to the end.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import aiohttp
import paho.mqtt.client as paho

from dalaba import protocol as p
from dalaba.mqtt import MqttConnection, WillMessage
from dalaba.signing import verifier_set_from_pem
from edge_agent.arbiter import Arbiter, Item
from edge_agent.cache import MediaCache
from edge_agent.clocksync import ClockSync, ControllerClock, parse_time_answer
from edge_agent.config import FIRMWARE_VERSION, DeviceConfig
from edge_agent.fetcher import PREFETCH_BACKOFF, FetchDeadline, MediaFetcher, MediaUnavailable
from edge_agent.hardware import Hardware, HardwareFault, PreparedAudio
from edge_agent.journal import OwedPlay, PlayJournal
from edge_agent.live import LiveLost, LiveReceiver
from edge_agent.local_schedule import LocalSchedule, PinnedMedia
from edge_agent.outbox import FinalReports, Outbox
from edge_agent.output_watch import SilenceWatch, capture_to_wav
from edge_agent.phone import CallSession, PhoneLine
from edge_agent.replay import SeenCommands
from edge_agent.updater import Updater

log = logging.getLogger(__name__)

# A play that cannot start on its signed instant (its audio came late, it waited behind
# another, it is played again after an interruption) starts on this grid after it:
# terminals that are late by about the same start together instead of echoing.
LATE_STEP_MS = 2_000
# Later than this after its planned instant, a start moves to the next step of the grid;
# and `playing` carries `late_ms` when it started this much after the signed instant.
LATE_TOLERANCE_MS = 250
# Time kept between deciding a start instant and the instant itself.
START_MARGIN_MS = 100
# How often the progress mark of a sounding play is refreshed (see edge_agent.journal).
PROGRESS_MARK_S = 3.0
# The local schedule's loop sleeps until its next item is due; at the latest this long
# (s) it looks again, which bounds the effect of a clock step nobody announced.
SCHEDULE_RECHECK_S = 30.0
# Outbox entries handed to MQTT at once, below the connection's in-flight limit (100) so
# paho never holds one back (it would resend those out of order after a reconnect).
OUTBOX_WINDOW = 50
# An entry handed to MQTT and not acknowledged after this long while connected is
# handed over again (at least once; the controller ignores a duplicate).
OUTBOX_ACK_TIMEOUT_S = 60.0
# Pre-positioned and scheduled audio: the whole batch is retried for this long.
PREFETCH_WINDOW_MS = 120_000
# The attempt a cancelled broadcast is claimed for: no resend can exceed it.
CANCELLED_CLAIM = 100

# The faults that silence the output (named in a `silent` report's reason).
_OUTPUT_FAULTS = frozenset({p.Fault.AMPLIFIER, p.Fault.SPEAKER_LINE})

_PROGRESS_STATES = frozenset(
    {
        p.DeliveryState.RECEIVED,
        p.DeliveryState.FETCHED,
        p.DeliveryState.PLAYING,
        p.DeliveryState.PREEMPTED,
    }
)


def late_slot(start_at_ms: int, earliest_ms: int) -> int:
    """The signed start if it is not before `earliest_ms`, else the first instant
    `start_at + k × LATE_STEP_MS` (k ≥ 1) that is not."""
    if earliest_ms <= start_at_ms:
        return start_at_ms
    steps = -(-(earliest_ms - start_at_ms) // LATE_STEP_MS)
    return start_at_ms + steps * LATE_STEP_MS


@dataclass
class _Track:
    """What the agent knows of one broadcast it was told to play (by a command, or by
    its local schedule)."""

    command_id: str
    expires_at: int
    body: p.PlayBody
    local: bool = False  # triggered by the terminal's own schedule
    received_at: int = 0  # terminal clock
    resumed: bool = False  # taken up again after a restart
    cancelled: bool = False
    on_receipt: bool = False  # no clock estimate: played as soon as it could
    finished: bool = False  # a final report was made
    item: Item | None = None
    stop_reason: p.DeliveryState | None = None
    started_mono: float | None = None  # while sounding: when its first sample went out
    duration_ms: int = 0
    fetch_task: asyncio.Task[None] | None = field(default=None, repr=False)
    # The audio carried in the command (base64, `MediaRef.inline`) until the fetch task
    # has checked and stored it; never journaled (the body names the audio by hash).
    inline: str | None = field(default=None, repr=False)


class _AckedConnection(MqttConnection):
    """An MqttConnection that also says when the broker acknowledged a QoS 1 publish
    (its PUBACK), so the outbox can let go of the entry."""

    def __init__(self, *, on_published: Callable[[int], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_published = on_published

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any
    ) -> None:
        super()._on_publish(client, userdata, mid, rc, props)
        self._on_published(mid)


class EdgeAgent:
    def __init__(
        self,
        config: DeviceConfig,
        hardware: Hardware,
        *,
        http: aiohttp.ClientSession | None = None,
        connection_class: Callable[..., MqttConnection] | None = None,
        on_verified: Callable[[p.Command], None] | None = None,
    ) -> None:
        self.config = config
        # The simulator's fleet passes a lighter MQTT client (dalaba.mqtt_lean) with the
        # same interface and an `on_published` argument; a terminal uses paho's.
        self._connection_class = connection_class or _AckedConnection
        # Told of every command that passed verification and addressing (the
        # simulator's benchmark records when each terminal held it).
        self._on_verified = on_verified
        self.hw = hardware
        self._http = http
        self._own_http = http is None
        self.counters: Counter[str] = Counter()
        self._tracks: dict[str, _Track] = {}
        self._arbiter = Arbiter()
        self._wakeup = asyncio.Event()
        self._play_task: asyncio.Task[None] | None = None
        self._playing_item: Item | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._jobs: set[asyncio.Task[None]] = set()
        self._seq = 0
        self._started_at = time.monotonic()
        self._faults: set[p.Fault] = set()
        self._amp_off_task: asyncio.Task[None] | None = None
        self._clock_offset_ms: int | None = None  # from commands' issue times
        # Signed instants are compared with this clock; it is the board's own unless the
        # device file asks for the controller's (then corrected by the estimate).
        self.clock = ControllerClock(hardware.clock)
        self.clock_sync = (
            ClockSync(self.clock, self._ask_controller_time)
            if config.clock_source == "controller"
            else None
        )
        self._stopping = False
        state = config.state_dir
        self.cache = MediaCache(state / "cache", config.cache_max_bytes)
        self.fetcher = MediaFetcher(
            cache=self.cache,
            base_url=config.media_base_url,
            network=hardware.network,
            clock=self.clock,
            session=self._session,
        )
        self._seen = SeenCommands(state / "seen-commands.txt")
        self._completed = SeenCommands(state / "played-broadcasts.txt")
        self.schedule = LocalSchedule(state)
        self._pinned = PinnedMedia(state)
        self.outbox = Outbox(
            state / "outbox.log",
            max_entries=config.outbox_max_entries,
            max_bytes=config.outbox_max_bytes,
            fsync=config.fsync_flash_writes,
        )
        self.journal = PlayJournal(state / "owed-plays.log", fsync=config.fsync_flash_writes)
        self._finals = FinalReports(state / "final-reports.log")
        self._inflight: dict[int, tuple[int, float]] = {}  # MQTT mid -> (outbox n, handed at)
        self._last_progress_mark = 0.0
        self._schedule_wakeup = asyncio.Event()
        # Whatever the key file holds: Ed25519 or SM2 keys, or certificates for them.
        self._verifiers = verifier_set_from_pem(config.controller_public_keys)
        self.updater = Updater(
            state_dir=state,
            fetcher=self.fetcher,
            verifiers=self._verifiers,
            now_ms=self.hw.clock.now_ms,
            report=self._report_update,
            quiet=self._quiet_for,
        )
        self.mqtt: MqttConnection | None = None
        # Remotely adjustable (ConfigBody); start from the provisioned values.
        self.normal_volume = config.normal_volume
        self.emergency_volume = config.emergency_volume
        self.telemetry_interval_s = config.telemetry_interval_s
        self._overrides_path = state / "config-overrides.json"
        # Phone-call broadcast, on a terminal with a modem (edge_agent.phone).
        self.phone: PhoneLine | None = None
        if self.hw.modem is not None:
            self.phone = PhoneLine(
                self.hw.modem,
                state,
                offer=self._offer_call,
                withdraw=self._withdraw_call,
                report=self._report_call,
                now_ms=self.hw.clock.now_ms,
            )
        # Live paging sessions accepted and not yet over, by broadcast id.
        self._live: dict[str, LiveReceiver] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self, connect_timeout_s: float | None = None) -> None:
        cfg = self.config
        now = self.clock.now_ms()
        self._seen.load(now)
        self._completed.load(now)
        self.schedule.load(now)
        self._pinned.load()
        self.outbox.load()
        self._finals.load()
        owed = self.journal.load()
        self._load_config_overrides()
        if self.phone is not None:
            self.phone.load()
        for sha in self._pinned.refs.keys() | self.schedule.media():
            self.cache.pin(sha)
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        offline = p.DeviceStatus(device_id=cfg.device_id, online=False, at=0)
        self.mqtt = self._connection_class(
            on_published=self._on_published,
            client_id=cfg.device_id,
            broker=cfg.broker_address(),
            on_message=self._on_message,
            subscriptions=[
                (t, p.COMMAND_QOS)
                for t in p.Topics.subscriptions_for(cfg.device_id, cfg.village_id, cfg.township_id)
            ],
            session_expiry_s=p.DEVICE_SESSION_EXPIRY_S,
            will=WillMessage(p.Topics.device_status(cfg.device_id), offline.to_bytes()),
            on_connected=self._on_connected,
            bind_address=self.hw.network.bind_address,
            may_connect=lambda: self.hw.network.up,
        )
        self._tasks = [
            asyncio.create_task(self._player_loop(), name=f"{cfg.device_id}-player"),
            asyncio.create_task(self._telemetry_loop(), name=f"{cfg.device_id}-telemetry"),
            asyncio.create_task(self._fault_watch_loop(), name=f"{cfg.device_id}-faults"),
            asyncio.create_task(self._schedule_loop(), name=f"{cfg.device_id}-schedule"),
        ]
        if self.clock_sync is not None:
            self._tasks.append(
                asyncio.create_task(self.clock_sync.run(), name=f"{cfg.device_id}-clock")
            )
        if self.phone is not None:
            self._tasks.append(asyncio.create_task(self.phone.run(), name=f"{cfg.device_id}-phone"))
        self._recover(owed)
        if self.schedule.items or self._pinned.refs:
            # After a reboot: make sure what must be on flash still is.
            self._spawn(self._prefetch(self._wanted_media()))
        await self.mqtt.start(timeout_s=connect_timeout_s)
        # Connected: a release on trial can pass its self-test (edge_agent/updater.py).
        self.updater.after_start()

    def _session(self) -> aiohttp.ClientSession:
        assert self._http is not None, "start() first"
        return self._http

    async def _ask_controller_time(self) -> int:
        timeout = aiohttp.ClientTimeout(total=2)
        async with self._session().get(self.config.controller_time_url(), timeout=timeout) as resp:
            resp.raise_for_status()
            return parse_time_answer(await resp.json())

    @property
    def plays_on_receipt(self) -> bool:
        """The controller's clock is wanted and the offset from it is not known: a
        start instant cannot be placed, so a play starts as soon as it can."""
        return self.clock_sync is not None and self.clock.estimate is None

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        """A short-lived background job, cancelled with the agent if still running."""
        task = asyncio.create_task(coro)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def stop(self, *, graceful: bool = True) -> None:
        """Graceful: announce offline and disconnect. Not graceful (power cut): the
        connection just dies and the broker publishes the last will. Either way a play
        that is sounding is cut without a report: the play journal reports it at the
        next start, as it would after a crash."""
        self._stopping = True
        tasks = [*self._tasks, *self._jobs, *self.updater.tasks()]
        if self._play_task is not None:
            tasks.append(self._play_task)
        if self._amp_off_task is not None:
            tasks.append(self._amp_off_task)
        tasks += [t.fetch_task for t in self._tracks.values() if t.fetch_task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.mqtt is not None:
            if graceful and self.mqtt.connected:
                with contextlib.suppress(Exception):
                    status = p.DeviceStatus(
                        device_id=self.config.device_id, online=False, at=self.clock.now_ms()
                    )
                    await self.mqtt.publish_confirmed(
                        p.Topics.device_status(self.config.device_id),
                        status.to_bytes(),
                        retain=True,
                        timeout_s=2,
                    )
                await self.mqtt.stop()
            else:
                self.mqtt.drop()
                await self.mqtt.stop()
        if self._own_http and self._http is not None:
            await self._http.close()
        self._seen.close()
        self._completed.close()
        self.schedule.close()
        self.outbox.close()
        self.journal.close()

    @property
    def connected(self) -> bool:
        return self.mqtt is not None and self.mqtt.connected

    def _on_connected(self) -> None:
        cfg = self.config
        status = p.DeviceStatus(
            device_id=cfg.device_id,
            online=True,
            at=self.clock.now_ms(),
            firmware=FIRMWARE_VERSION,
            village_id=cfg.village_id,
            township_id=cfg.township_id,
        )
        assert self.mqtt is not None
        self.mqtt.publish(
            p.Topics.device_status(cfg.device_id), status.to_bytes(), qos=1, retain=True
        )
        self._publish_telemetry()
        # What MQTT held when the link died it sends again itself, from this callback's
        # caller; the outbox follows once that is done, so the order holds.
        now = time.monotonic()
        self._inflight = {mid: (n, now) for mid, (n, _) in self._inflight.items()}
        asyncio.get_running_loop().call_soon(self._pump)

    # ------------------------------------------------------------------ after a restart

    def _recover(self, owed: list[OwedPlay]) -> None:
        """Take up the plays the previous run left open (see edge_agent.journal)."""
        finals = self._final_reports_pending()
        now = self.clock.now_ms()
        for play in owed:
            bid = play.broadcast_id
            if (bid, play.body.attempt) in finals or self._completed.seen(bid):
                # Its end was reported just before the stop; only the journal missed it.
                self.journal.ended(bid)
                continue
            track = _Track(
                command_id=play.command_id,
                expires_at=play.expires_at,
                body=play.body,
                local=play.local,
                received_at=now,
                resumed=True,
            )
            self._tracks[bid] = track
            if play.started_at is not None:
                # It was sounding when the agent stopped: a crash or a power cut.
                if now < play.expires_at and play.body.priority is not p.Priority.ROUTINE:
                    self._report(
                        track,
                        p.DeliveryState.PREEMPTED,
                        p.FAIL_INTERRUPTED,
                        offset_ms=play.offset_ms,
                        final=False,
                    )
                    self.journal.stopped(bid)  # played again from its start, below
                else:
                    self._report(
                        track, p.DeliveryState.FAILED, p.FAIL_INTERRUPTED, offset_ms=play.offset_ms
                    )
                    continue
            elif now >= play.expires_at:
                self._report(track, p.DeliveryState.EXPIRED, "expired before it could play")
                continue
            self.cache.pin(play.body.media.sha256)
            track.fetch_task = asyncio.create_task(self._fetch_and_queue(track))
        self.journal.compact()

    def _final_reports_pending(self) -> set[tuple[str, int]]:
        """(broadcast id, attempt) of the final delivery reports still in the outbox."""
        found: set[tuple[str, int]] = set()
        ack_topic = p.Topics.device_ack(self.config.device_id)
        for entry in self.outbox.entries():
            if entry.topic != ack_topic or not entry.keep:
                continue
            with contextlib.suppress(ValueError, TypeError, KeyError):
                report = json.loads(entry.payload)
                found.add((str(report["broadcast_id"]), int(report.get("attempt", 0))))
        return found

    # ------------------------------------------------------------------ commands

    def _on_message(self, topic: str, payload: bytes) -> None:
        live_id = p.Topics.parse_live_topic(topic)
        if live_id is not None:
            self._on_live_frame(live_id, payload)
            return
        now = self.clock.now_ms()
        try:
            command = p.open_envelope(payload, self._verifiers, now)
        except p.CommandRejected as exc:
            self._reject(exc.reason, exc.detail, exc.command)
            return
        except p.ProtocolError as exc:
            # Garbage is counted and dropped; it never stops the next valid command.
            self.counters[f"dropped_{exc.reason.value}"] += 1
            self.counters["dropped"] += 1
            log.info("%s: dropped payload on %s: %s", self.config.device_id, topic, exc)
            return
        self._note_clock_offset(command, now)
        cfg = self.config
        if not command.target.covers(cfg.device_id, cfg.village_id, cfg.township_id):
            self._reject(p.RejectReason.NOT_ADDRESSED, f"arrived on {topic}", command)
            return
        if self._seen.seen(command.id):
            self._reject(p.RejectReason.REPLAYED, "command id already seen", command)
            return
        self._seen.remember(command.id, command.expires_at)
        if self._on_verified is not None:
            self._on_verified(command)
        body = command.body
        if isinstance(body, p.PlayBody):
            self._accept_play(command, body)
        elif isinstance(body, p.CancelBody):
            self._cancel(body.broadcast_id, command.expires_at)
        elif isinstance(body, p.PreloadBody):
            # Not kept (audio staged for a request still waiting for approval): fetched
            # and verified only, then evicted like any unpinned entry if never played.
            if body.keep:
                released = self._pinned.replace(body.purpose, body.media)
                for sha in released - self.schedule.media():
                    self.cache.unpin(sha)
                for ref in body.media:
                    self.cache.pin(ref.sha256)
            self._spawn(self._prefetch(body.media, report_command=command.id))
        elif isinstance(body, p.ScheduleBody):
            self._apply_schedule(body)
        elif isinstance(body, p.UpdateBody):
            self.updater.offer(body, payload)
        elif isinstance(body, p.PhoneBookBody):
            self._apply_phone_book(body)
        elif isinstance(body, p.ClipRequestBody):
            self._spawn(self._upload_clip(body))
        elif isinstance(body, p.ReportAgainBody):
            self._report_again(body.since)
        else:
            self._apply_config(body)

    def _note_clock_offset(self, command: p.Command, now: int) -> None:
        # A fresh command's issue time bounds our clock's error from the controller's;
        # keep the smallest magnitude seen (the least delayed message).
        offset = now - command.issued_at
        if self._clock_offset_ms is None or abs(offset) < abs(self._clock_offset_ms):
            self._clock_offset_ms = offset

    def _reject(self, reason: p.RejectReason, detail: str, command: p.Command | None) -> None:
        self.counters[f"rejected_{reason.value}"] += 1
        body = command.body if command is not None else None
        broadcast_id = getattr(body, "broadcast_id", None)
        event = p.DeviceEvent(
            device_id=self.config.device_id,
            kind=p.EventKind.COMMAND_REJECTED,
            at=self.clock.now_ms(),
            reason=reason.value,
            command_id=command.id if command is not None else None,
            broadcast_id=broadcast_id,
            detail={"message": _clip(detail)},
        )
        # Droppable when the outbox is full: someone flooding forgeries must not push
        # out the reports of what was played.
        self._send(p.Topics.device_event(self.config.device_id), event, keep=False)
        log.warning("%s: rejected command: %s %s", self.config.device_id, reason.value, detail)

    def _accept_play(self, command: p.Command, body: p.PlayBody) -> None:
        inline = body.media.inline
        if inline is not None:
            media = body.media.model_copy(update={"inline": None})
            body = body.model_copy(update={"media": media})
        track = _Track(
            command_id=command.id, expires_at=command.expires_at, body=body, inline=inline
        )
        if body.live is not None:
            try:
                receiver = LiveReceiver(body.broadcast_id, body.live)
            except p.ProtocolError as exc:
                self._reject(exc.reason, exc.detail, command)
                return
            if not self._start_track(track):
                return
            # Listen from now: frames spoken during the chime wait in the buffer.
            self._live[body.broadcast_id] = receiver
            if self.mqtt is not None:
                self.mqtt.subscribe(p.Topics.live(body.broadcast_id), p.LIVE_QOS)
            return
        self._start_track(track)

    def _on_live_frame(self, broadcast_id: str, payload: bytes) -> None:
        receiver = self._live.get(broadcast_id)
        if receiver is None:
            self.counters["live_frame_unexpected"] += 1
            return
        if not receiver.offer(payload):
            self.counters["live_frames_refused"] += 1

    def _end_live(self, broadcast_id: str) -> None:
        receiver = self._live.pop(broadcast_id, None)
        if receiver is None:
            return
        for name, n in receiver.counters.items():
            self.counters[f"live_{name}"] += n
        if self.mqtt is not None:
            self.mqtt.unsubscribe(p.Topics.live(broadcast_id))

    def _start_track(self, track: _Track) -> bool:
        """Take up a broadcast, unless this terminal already has or had it.

        One broadcast (or scheduled occurrence) plays once, whichever path brings it
        first: the claim is on flash, so a reboot does not play it again. A resend (a
        higher `attempt` than the claim's) is taken up again, unless this terminal
        played the broadcast to the end or is still at it."""
        bid = track.body.broadcast_id
        if self._completed.seen(bid):
            self.counters["already_played"] += 1
            return False
        current = self._tracks.get(bid)
        if current is not None and not current.finished:
            return False
        claimed = self.schedule.claimed_attempt(bid)
        if claimed is not None and track.body.attempt <= claimed:
            return False
        now = self.clock.now_ms()
        self.schedule.claim(bid, track.expires_at, track.body.attempt)
        track.received_at = now
        self._tracks[bid] = track
        self.journal.accepted(track.command_id, track.expires_at, track.local, track.body, now)
        self._report(track, p.DeliveryState.RECEIVED)
        self.updater.yield_to_play()
        track.fetch_task = asyncio.create_task(self._fetch_and_queue(track))
        lead = track.body.start_at - now
        if lead <= self.hw.amplifier.warmup_ms + 2_000 and not self.hw.amplifier.on:
            # Warm the amplifier while the audio is fetched, so a download that ends
            # just before the start instant does not also wait for the warm-up.
            self._spawn(self._prewarm())
        return True

    async def _prewarm(self) -> None:
        if self._amp_off_task is not None:
            self._amp_off_task.cancel()
        with contextlib.suppress(HardwareFault):
            await self.hw.amplifier.power_on()
        # Nothing came of it (fetch failed, cancelled)? Do not leave it on.
        await asyncio.sleep(self.config.amplifier_hold_s + 30)
        if self._playing_item is None and not self._arbiter.queued:
            await self.hw.amplifier.power_off()

    def _load_config_overrides(self) -> None:
        try:
            body = p.ConfigBody.model_validate_json(self._overrides_path.read_bytes())
        except (OSError, ValueError):
            return
        self._set_config(body)

    def _set_config(self, body: p.ConfigBody) -> None:
        if body.normal_volume is not None:
            self.normal_volume = body.normal_volume
        if body.emergency_volume is not None:
            self.emergency_volume = body.emergency_volume
        if body.telemetry_interval_s is not None:
            self.telemetry_interval_s = body.telemetry_interval_s

    def _apply_config(self, body: p.ConfigBody) -> None:
        # Merge with what was set before and keep it on flash: a reboot must not undo
        # the technician's volume.
        merged = p.ConfigBody(
            normal_volume=self.normal_volume if body.normal_volume is None else body.normal_volume,
            emergency_volume=(
                self.emergency_volume if body.emergency_volume is None else body.emergency_volume
            ),
            telemetry_interval_s=(
                self.telemetry_interval_s
                if body.telemetry_interval_s is None
                else body.telemetry_interval_s
            ),
        )
        tmp = self._overrides_path.with_suffix(".tmp")
        tmp.write_bytes(merged.to_bytes())
        os.replace(tmp, self._overrides_path)
        self._set_config(body)
        if body.normal_volume is not None and not self._playing_emergency():
            self.hw.speaker.set_volume(body.normal_volume)
        self._publish_event(
            p.EventKind.CONFIG_APPLIED,
            "ok",
            self.clock.now_ms(),
            detail=body.model_dump(exclude_none=True, exclude={"kind"}),
        )
        self._publish_telemetry()

    # ------------------------------------------------------------------ updates

    def _quiet_for(self, window_ms: int) -> bool:
        """Nothing plays, waits, is owed, or is due on the local schedule within
        `window_ms`: an update may switch (restart) now."""
        if self._playing_item is not None or self._arbiter.queued:
            return False
        now = self.hw.clock.now_ms()
        # A play owed later than the window is taken up again after the restart (journal).
        if any(
            not t.finished and t.body.start_at - now <= window_ms for t in self._tracks.values()
        ):
            return False
        return not self.schedule.due(now, window_ms)

    def _report_update(self, progress: p.UpdateProgress, reason: str | None) -> None:
        event = p.DeviceEvent(
            device_id=self.config.device_id,
            kind=p.EventKind.UPDATE_STATE,
            at=self.hw.clock.now_ms(),
            reason=_clip(reason) if reason else progress.state.value,
            detail=progress.model_dump(mode="json"),
        )
        # Kept when the outbox is full: the console must learn where an update stands.
        self._send(p.Topics.device_event(self.config.device_id), event, keep=True)

    async def _on_board_clock(
        self, chunks: AsyncIterable[tuple[int, bytes]]
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Live chunks are timed on the controller's clock (the frames' stamps); the
        speaker counts on the board's own."""
        async for at, pcm in chunks:
            yield self.clock.to_local(at), pcm

    def _playing_emergency(self) -> bool:
        item = self._playing_item
        track = self._tracks.get(item.broadcast_id) if item is not None else None
        return track is not None and track.body.priority is p.Priority.EMERGENCY

    # ------------------------------------------------------------------ local schedule

    def _apply_schedule(self, body: p.ScheduleBody) -> None:
        old_media = self.schedule.media()
        if not self.schedule.replace(body):
            self.counters["schedule_not_newer"] += 1
            return
        new_media = self.schedule.media()
        for sha in old_media - new_media - self._pinned.refs.keys():
            self.cache.unpin(sha)
        for sha in new_media:
            self.cache.pin(sha)
        self._spawn(self._prefetch(tuple(i.media for i in body.items)))
        self._publish_event(
            p.EventKind.SCHEDULE_APPLIED,
            str(body.version),
            self.clock.now_ms(),
            detail={"version": body.version, "items": len(body.items)},
        )
        self._schedule_wakeup.set()

    async def _schedule_loop(self) -> None:
        # Claim each item a little before its start so it is fetched, decoded and the
        # amplifier warm by the instant; the controller's own command, when it can send
        # one, normally arrives earlier still and claims it first.
        lead = self.hw.amplifier.warmup_ms + 1500
        while True:
            now = self.clock.now_ms()
            for item in self.schedule.due(now, lead):
                body = item.play_body()
                track = _Track(
                    command_id=f"schedule-v{self.schedule.version}",
                    expires_at=item.expires_at,
                    body=body,
                    local=True,
                )
                self._start_track(track)
            self._schedule_wakeup.clear()
            upcoming = [
                i.start_at - lead for i in self.schedule.items.values() if i.start_at - lead > now
            ]
            # Sleep until the next item is due, or until a new schedule or a clock
            # change wakes us (clock_changed). No one-second poll: with thousands of
            # agents in one simulator that poll alone was half of the idle fleet's CPU.
            # The recheck bounds what a stepped board clock nobody announced can delay;
            # its jitter keeps a fleet's rechecks apart.
            timeout = SCHEDULE_RECHECK_S * (0.9 + random.random() / 5)
            if upcoming:
                timeout = min(timeout, max(0.05, (min(upcoming) - now) / 1000))
            timer = asyncio.get_running_loop().call_later(timeout, self._schedule_wakeup.set)
            try:
                await self._schedule_wakeup.wait()  # a timer, not wait_for: no task per wait
            finally:
                timer.cancel()

    def clock_changed(self) -> None:
        """The board's clock was stepped or its offset re-estimated: what is due is
        worked out again at once."""
        self._schedule_wakeup.set()

    def _wanted_media(self) -> tuple[p.MediaRef, ...]:
        refs = {i.media.sha256: i.media for i in self.schedule.items.values()}
        refs.update(self._pinned.refs)
        return tuple(refs.values())

    def _release(self, sha256: str) -> None:
        """A played, cancelled or expired item no longer needs its audio kept, unless
        the audio is pre-positioned, scheduled, or waiting in the queue again."""
        if sha256 in self._pinned.refs or sha256 in self.schedule.media():
            return
        if any(
            t.body.media.sha256 == sha256
            for t in self._tracks.values()
            if t.item is not None
            and (t.item in self._arbiter.queued or t.item is self._playing_item)
        ):
            return
        self.cache.unpin(sha256)

    # ------------------------------------------------------------------ fetching

    async def _prefetch(
        self, refs: tuple[p.MediaRef, ...], report_command: str | None = None
    ) -> None:
        fetched = failed = 0
        # One window for the batch: a controller that is away costs each later item a
        # single round of tries, not a window each.
        deadline = self.clock.now_ms() + PREFETCH_WINDOW_MS
        for ref in refs:
            try:
                await self.fetcher.fetch(ref, deadline, PREFETCH_BACKOFF)
                fetched += 1
            except (MediaUnavailable, FetchDeadline) as exc:
                failed += 1
                log.info(
                    "%s: prefetch of %s failed: %s", self.config.device_id, ref.sha256[:12], exc
                )
        if report_command is not None:
            self._publish_event(
                p.EventKind.PRELOADED,
                "ok" if not failed else "incomplete",
                self.clock.now_ms(),
                detail={"fetched": fetched, "failed": failed},
                command_id=report_command,
            )

    def _store_inline(self, media: p.MediaRef, inline: str) -> None:
        """Check the audio carried in the command against its hash and store it in the
        cache (where the fetch below then finds it); ValueError if it is not."""
        try:
            data = base64.b64decode(inline, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not valid base64") from None
        # Hashed once either way (a county of simulated terminals pays it 10,000 times).
        if self.cache.has(media.sha256):
            actual = hashlib.sha256(data).hexdigest()
            if actual != media.sha256:
                raise ValueError(f"hash mismatch: expected {media.sha256[:12]}, got {actual[:12]}")
        else:
            try:
                self.cache.put(media.sha256, data)  # checks the hash before it writes
            except ValueError as exc:
                raise ValueError(f"hash mismatch: {str(exc).partition(': ')[2]}") from None
        self.counters["inline_media_stored"] += 1

    async def _fetch_and_queue(self, track: _Track) -> None:
        media = track.body.media
        grace_ms = int(self.config.fetch_grace_s * 1000)
        # Until the start plus the grace; a command that arrived after its start (a
        # terminal back from an outage, a restart) gets the grace from its arrival.
        deadline = min(max(track.body.start_at, track.received_at) + grace_ms, track.expires_at)
        if track.inline is not None:
            inline, track.inline = track.inline, None
            try:
                self._store_inline(media, inline)
            except ValueError as exc:
                # Signed, yet not the audio it names: a broken controller. Neither these
                # bytes nor a guess at the right ones are played; the board says why.
                self.counters["inline_media_refused"] += 1
                self._report(track, p.DeliveryState.FAILED, f"media: inline audio refused: {exc}")
                return
        try:
            path = await self.fetcher.fetch(media, deadline)
            if track.cancelled:
                return
            prepared = await self.hw.speaker.prepare(path, media.sha256)
        except asyncio.CancelledError:
            raise
        except MediaUnavailable as exc:
            self._report(track, p.DeliveryState.FAILED, f"media: {exc}")
            return
        except FetchDeadline as exc:
            reason = (
                f"media: could not fetch before start + grace "
                f"({self.config.fetch_grace_s:g} s): {exc}"
            )
            self._report(track, p.DeliveryState.FAILED, reason)
            return
        except Exception as exc:
            self._report(track, p.DeliveryState.FAILED, f"media: {exc}")
            return
        if track.cancelled:
            return
        now = self.clock.now_ms()
        # A start that passed while fetching moves to the late grid, far enough ahead
        # to warm the amplifier.
        lead = 0 if self.hw.amplifier.on else self.hw.amplifier.warmup_ms
        track.on_receipt = self.plays_on_receipt
        if track.on_receipt:
            start = now + lead + START_MARGIN_MS
        else:
            start = late_slot(track.body.start_at, now + lead + START_MARGIN_MS)
        if start >= track.expires_at:
            self._report(track, p.DeliveryState.EXPIRED, "expired before it could play")
            return
        if not track.resumed:
            self._report(track, p.DeliveryState.FETCHED)
        self.cache.pin(media.sha256)
        track.item = Item(
            broadcast_id=track.body.broadcast_id,
            command_id=track.command_id,
            rank=track.body.rank,
            start_at_ms=start,
            expires_at_ms=track.expires_at,
            # A live voice interrupted is not played again later: it would be stale.
            replay_after_preemption=track.body.priority is not p.Priority.ROUTINE
            and track.body.live is None,
            payload=prepared,
        )
        self._arbiter.offer(track.item)
        self._wakeup.set()

    def _cancel(self, broadcast_id: str, expires_at: int) -> None:
        # Claimed beyond any resend: neither a late play command, a resend nor the local
        # schedule plays what the controller has cancelled.
        self.schedule.claim(broadcast_id, expires_at, CANCELLED_CLAIM)
        track = self._tracks.get(broadcast_id)
        if track is None or track.cancelled or track.finished:
            return
        track.cancelled = True
        if self._playing_item is not None and self._playing_item.broadcast_id == broadcast_id:
            track.stop_reason = p.DeliveryState.CANCELLED
            assert self._play_task is not None
            self._play_task.cancel()
            return
        if track.fetch_task is not None and not track.fetch_task.done():
            track.fetch_task.cancel()
        if self._arbiter.remove(broadcast_id) is not None:
            self._release(track.body.media.sha256)
        self._report(track, p.DeliveryState.CANCELLED, "cancelled by the controller")

    # ------------------------------------------------------------------ playing

    async def _player_loop(self) -> None:
        warmup = self.hw.amplifier.warmup_ms
        while True:
            now = self.clock.now_ms()
            decision = self._arbiter.decide(now, lead_ms=warmup)
            for item in decision.expired:
                track = self._tracks.get(item.broadcast_id)
                if track is not None:
                    self._release(track.body.media.sha256)
                    self._report(track, p.DeliveryState.EXPIRED, "expired before it could play")
            if decision.play is not None:
                if decision.preempted is not None and self._play_task is not None:
                    track = self._tracks.get(decision.preempted.broadcast_id)
                    if track is not None:  # None: a phone call (it reports itself)
                        track.stop_reason = p.DeliveryState.PREEMPTED
                    self._play_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._play_task
                self._playing_item = decision.play
                self._play_task = asyncio.create_task(self._play(decision.play))
            self._forget_old_tracks(now)
            self._wakeup.clear()
            wake_at = self._arbiter.next_wakeup_ms(lead_ms=warmup)
            timeout = None if wake_at is None else max(0.0, (wake_at - now) / 1000)
            waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(self._wakeup.wait())]
            if self._play_task is not None and not self._play_task.done():
                waiters.append(self._play_task)  # type: ignore[arg-type]
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            waiters[0].cancel()

    def _forget_old_tracks(self, now: int) -> None:
        # Claims on flash keep an expired broadcast from playing again; the in-memory
        # track is only needed while it can still be reported on.
        stale = [
            bid
            for bid, t in self._tracks.items()
            if t.expires_at < now - 60_000
            and (self._playing_item is None or self._playing_item.broadcast_id != bid)
            and (t.fetch_task is None or t.fetch_task.done())
        ]
        for bid in stale:
            del self._tracks[bid]
        # A live session that never got to play (cancelled, expired, failed fetch).
        playing = self._playing_item.broadcast_id if self._playing_item is not None else None
        for bid in [b for b in self._live if b != playing]:
            track = self._tracks.get(bid)
            if track is None or track.finished:
                self._end_live(bid)

    async def _play(self, item: Item) -> None:
        if isinstance(item.payload, CallSession):
            await self._play_call(item, item.payload)
            return
        track = self._tracks[item.broadcast_id]
        body = track.body
        prepared = item.payload
        assert isinstance(prepared, PreparedAudio)
        requeued = False
        try:
            if self._amp_off_task is not None:
                self._amp_off_task.cancel()
            emergency = body.priority is p.Priority.EMERGENCY
            self.hw.speaker.set_volume(
                (body.volume if body.volume is not None else self.emergency_volume)
                if emergency
                else self.normal_volume
            )
            # Warm before the first sample: returns at once if it already is, and joins
            # a warm-up already under way (a prewarm) instead of starting another.
            await self.hw.amplifier.power_on()
            start = item.start_at_ms
            now = self.clock.now_ms()
            if track.on_receipt:
                start = max(start, now)
            elif now - start > LATE_TOLERANCE_MS:
                # Missed its instant (queued behind another, played again after an
                # interruption, a slow warm-up): the next step of the late grid.
                start = late_slot(body.start_at, now + START_MARGIN_MS)
            watch = SilenceWatch(self.hw.output_monitor)

            def started() -> None:
                watch.begin()
                self._on_play_started(track, prepared)

            try:
                await self.hw.speaker.play(
                    prepared,
                    # The speaker counts on the board's own clock.
                    start_at_ms=self.clock.to_local(start),
                    broadcast_id=body.broadcast_id,
                    on_started=started,
                    attempt=body.attempt,
                )
            finally:
                watch.stop()
            receiver = self._live.get(body.broadcast_id)
            if receiver is not None:
                # After the chime, the live voice until the speaker's end frame.
                await self.hw.speaker.play_stream(
                    self._on_board_clock(receiver.chunks(self.clock.now_ms)),
                    broadcast_id=body.broadcast_id,
                )
            self._report_played(track, watch.verdict(prepared.duration_ms))
        except LiveLost as exc:
            self._report(track, p.DeliveryState.FAILED, f"live: {exc}")
        except asyncio.CancelledError:
            if self._stopping:
                # Power cut or shutdown: nothing is said now. The journal still holds
                # the play, and the next start reports it (as after a crash).
                raise
            reason = track.stop_reason or p.DeliveryState.CANCELLED
            track.stop_reason = None
            requeued = reason is p.DeliveryState.PREEMPTED and item.replay_after_preemption
            self._report(
                track,
                reason,
                "interrupted by a higher priority broadcast"
                if reason is p.DeliveryState.PREEMPTED
                else "stopped",
                offset_ms=self._offset_ms(track),
                final=not requeued,
            )
            if requeued:
                self.journal.stopped(body.broadcast_id)
            # Not re-raised: the player loop cancelled us deliberately and goes on.
        except HardwareFault as exc:
            self._report(track, p.DeliveryState.FAILED, str(exc), offset_ms=self._offset_ms(track))
        finally:
            self._end_live(body.broadcast_id)
            track.started_mono = None
            self._arbiter.finished(item)
            if self._playing_item is item:
                self._playing_item = None
            if not requeued:
                self._release(body.media.sha256)
            if not self._stopping:
                self._amp_off_task = asyncio.create_task(self._amplifier_off_later())
                self._wakeup.set()

    async def _upload_clip(self, body: p.ClipRequestBody) -> None:
        """The first seconds of what the loopback captured of the last play, to the one
        upload the signed request authorises (an empty body: nothing played yet)."""
        pcm = self.hw.output_monitor.last_clip(body.max_ms)
        wav = b"" if pcm is None else capture_to_wav(pcm)
        url = urljoin(self.config.media_base_url, body.upload_path)
        try:
            await self.hw.network.transfer_delay(len(wav))
            async with self._session().put(
                url,
                data=wav,
                headers={"X-Dalaba-Clip-Token": body.token, "Content-Type": "audio/wav"},
            ) as resp:
                ok = resp.status in (200, 201)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("%s: clip upload: %s", self.config.device_id, exc)
            ok = False
        self.counters["clips_uploaded" if ok else "clip_uploads_failed"] += 1

    # ------------------------------------------------------------------ phone calls

    def _apply_phone_book(self, body: p.PhoneBookBody) -> None:
        if self.phone is None:
            self.counters["phone_book_without_modem"] += 1
            return
        if not self.phone.apply(body):
            self.counters["phone_book_not_newer"] += 1
            return
        # The count, never the numbers: events are read by more people than whitelists.
        self._publish_event(
            p.EventKind.CONFIG_APPLIED,
            "phone_book",
            self.hw.clock.now_ms(),
            detail={"phone_book_version": body.version, "numbers": len(body.numbers)},
        )

    def _offer_call(self, item: Item) -> None:
        self._arbiter.offer(item)
        self._wakeup.set()

    def _withdraw_call(self, broadcast_id: str) -> None:
        self._arbiter.remove(broadcast_id)
        self._wakeup.set()

    def _report_call(self, detail: dict[str, object]) -> None:
        self._publish_event(
            p.EventKind.CALL, str(detail["outcome"]), self.hw.clock.now_ms(), detail=detail
        )

    async def _play_call(self, item: Item, call: CallSession) -> None:
        """A whitelisted caller, live at paging rank, until they hang up."""
        outcome, played_ms = p.CallOutcome.PLAYED, 0
        try:
            if self._amp_off_task is not None:
                self._amp_off_task.cancel()
            self.hw.speaker.set_volume(self.normal_volume)
            await self.hw.amplifier.power_on()
            call.started.set()
            played = await self.hw.speaker.play_stream(
                call.chunks(self.hw.clock.now_ms), broadcast_id=item.broadcast_id
            )
            played_ms = played.played_ms
        except asyncio.CancelledError:
            call.finish(p.CallOutcome.PREEMPTED, played_ms)
            if self._stopping:
                raise
        except HardwareFault as exc:
            log.warning("%s: call: %s", self.config.device_id, exc)
            outcome = p.CallOutcome.FAILED
        finally:
            call.finish(outcome, played_ms)
            self._arbiter.finished(item)
            if self._playing_item is item:
                self._playing_item = None
            if not self._stopping:
                self._amp_off_task = asyncio.create_task(self._amplifier_off_later())
                self._wakeup.set()

    def _report_played(self, track: _Track, silence: tuple[int, int] | None) -> None:
        """The play ran to its end: `done`, or `silent` if the output monitor found the
        line quiet for part of it (the seconds affected, and where they began)."""
        if silence is None:
            self._report(track, p.DeliveryState.DONE)
            return
        silent_ms, from_ms = silence
        faults = sorted(f.value for f in self._current_faults() & _OUTPUT_FAULTS)
        cause = ", ".join(faults) if faults else "no fault showing now"
        self._report(
            track,
            p.DeliveryState.SILENT,
            f"no sound on the speaker line for {silent_ms / 1000:.1f} s"
            f" from {from_ms / 1000:.1f} s ({cause})",
            offset_ms=from_ms,
            silent_ms=silent_ms,
        )

    def _on_play_started(self, track: _Track, prepared: PreparedAudio) -> None:
        now = self.clock.now_ms()
        track.started_mono = self._last_progress_mark = time.monotonic()
        track.duration_ms = prepared.duration_ms
        self.journal.started(track.body.broadcast_id, now, prepared.duration_ms)
        if track.on_receipt:
            # How late is unknown without a clock; say why it did not wait instead.
            self._report(
                track,
                p.DeliveryState.PLAYING,
                "clock offset from the controller unknown: played on receipt",
                on_receipt=True,
            )
            return
        late = now - track.body.start_at
        self._report(
            track, p.DeliveryState.PLAYING, late_ms=late if late >= LATE_TOLERANCE_MS else None
        )

    @staticmethod
    def _offset_ms(track: _Track) -> int | None:
        """How far into the audio the play got, if it sounded at all."""
        if track.started_mono is None:
            return None
        elapsed = int((time.monotonic() - track.started_mono) * 1000)
        return max(0, min(track.duration_ms, elapsed))

    async def _amplifier_off_later(self) -> None:
        await asyncio.sleep(self.config.amplifier_hold_s)
        if self._playing_item is None:
            await self.hw.amplifier.power_off()

    # ------------------------------------------------------------------ reporting

    def _next_seq(self) -> int:
        # Increasing across restarts without persisting a counter.
        self._seq = max(self._seq + 1, time.time_ns() // 1000)
        return self._seq

    def _report(
        self,
        track: _Track,
        state: p.DeliveryState,
        reason: str | None = None,
        *,
        late_ms: int | None = None,
        offset_ms: int | None = None,
        final: bool | None = None,
        on_receipt: bool = False,
        silent_ms: int | None = None,
    ) -> None:
        """Report a state change of `track` (through the outbox). `final` (default: the
        state's own finality) means this terminal is done with the broadcast."""
        report = p.DeliveryReport(
            device_id=self.config.device_id,
            broadcast_id=track.body.broadcast_id,
            command_id=track.command_id,
            state=state,
            at=self.clock.now_ms(),
            seq=self._next_seq(),
            reason=_clip(reason) if reason is not None else None,
            offline=not self.connected,
            late_ms=late_ms,
            offset_ms=offset_ms,
            attempt=track.body.attempt,
            on_receipt=on_receipt,
            silent_ms=silent_ms,
        )
        self.counters[f"state_{state.value}"] += 1
        topic = p.Topics.device_ack(self.config.device_id)
        sent = self._send(topic, report, keep=state not in _PROGRESS_STATES)
        if state.final:
            self._finals.remember(report.at, topic, sent)
        if final if final is not None else state.final:
            # After the report is in the outbox: a crash in between leaves the play
            # owed in the journal, and `_recover` finds its final report pending.
            track.finished = True
            self.journal.ended(track.body.broadcast_id)
            if state is p.DeliveryState.DONE:
                self._completed.remember(track.body.broadcast_id, track.expires_at)
        if track.local and state is p.DeliveryState.DONE and not self.connected:
            # Queued with the reports; tells the controller this one ran on our own clock.
            self._publish_event(
                p.EventKind.PLAYED_OFFLINE,
                track.body.broadcast_id,
                report.at,
                detail={"occurrence_id": track.body.broadcast_id, "start_at": track.body.start_at},
            )

    def _send(self, topic: str, payload: p._Payload, *, keep: bool) -> bytes:
        """Put a report or event in the outbox and send what the window allows; returns
        the bytes put there."""
        data = payload.to_bytes()
        self.outbox.add(topic, data, keep=keep)
        self._pump()
        return data

    def _report_again(self, since_ms: int) -> None:
        """The controller lost what the broker acknowledged for it (its session was
        gone): publish the final reports made since `since_ms` again, through the
        outbox like any report. Those it already has are ignored by their `seq`."""
        again = self._finals.since(since_ms)
        for topic, payload in again:
            self.outbox.add(topic, payload, keep=True)
        self.counters["reported_again"] += len(again)
        log.debug("%s: %d final reports sent again", self.config.device_id, len(again))
        self._pump()

    def _pump(self) -> None:
        """Hand the oldest unsent outbox entries to MQTT while connected."""
        mqtt = self.mqtt
        if mqtt is None or not mqtt.connected or self._stopping:
            return
        room = OUTBOX_WINDOW - len(self._inflight)
        if room <= 0:
            return
        now = time.monotonic()
        for entry in self.outbox.take(room):
            mid = mqtt.publish(entry.topic, entry.payload, qos=p.REPORT_QOS)
            self._inflight[mid] = (entry.n, now)

    def _on_published(self, mid: int) -> None:
        handed = self._inflight.pop(mid, None)
        if handed is None:
            return  # status, or an entry handed over again meanwhile
        self.outbox.remove(handed[0])
        self._pump()

    def _hand_over_again(self) -> None:
        """Entries whose acknowledgement has not come after a long time connected."""
        if not self.connected:
            return
        now = time.monotonic()
        stale = [mid for mid, (_, t) in self._inflight.items() if now - t > OUTBOX_ACK_TIMEOUT_S]
        if stale:
            self.outbox.unsend(self._inflight.pop(mid)[0] for mid in stale)
            self._pump()

    def telemetry(self) -> p.Telemetry:
        hw = self.hw
        cache_bytes, cache_items = self.cache.usage()
        return p.Telemetry(
            device_id=self.config.device_id,
            at=self.clock.now_ms(),
            firmware=FIRMWARE_VERSION,
            uptime_s=int(time.monotonic() - self._started_at),
            amplifier_on=hw.amplifier.on,
            amplifier_ok=hw.amplifier.ok,
            speaker_line_ok=hw.speaker.line_ok,
            power_source=hw.power.source,
            battery_pct=hw.power.battery_pct,
            temperature_c=hw.sensors.temperature_c,
            signal_dbm=hw.sensors.signal_dbm,
            operator=hw.sensors.operator,
            volume=hw.speaker.volume,
            playing=self._playing_item.broadcast_id if self._playing_item else None,
            cache_bytes=cache_bytes,
            cache_items=cache_items,
            clock_offset_ms=self._known_clock_offset_ms(),
            faults=tuple(sorted(self._faults)),
            schedule_version=self.schedule.version,
            dropped_messages=self.counters["dropped"],
            interval_s=self.telemetry_interval_s,
            outbox=len(self.outbox),
        )

    def _publish_telemetry(self) -> None:
        if self.mqtt is None or not self.mqtt.connected:
            return  # QoS 0 and stale by the time we reconnect: not worth queueing
        self.mqtt.publish(
            p.Topics.device_telemetry(self.config.device_id),
            self.telemetry().to_bytes(),
            qos=p.TELEMETRY_QOS,
        )

    async def _telemetry_loop(self) -> None:
        # The first interval at a random point: terminals started or reconnected
        # together (a simulator's thousands, a county after a broker restart) would
        # otherwise all send in the same second ever after. Every later one keeps the
        # interval (telemetry also goes out at each connect).
        await asyncio.sleep(self.telemetry_interval_s * random.random())
        while True:
            self._publish_telemetry()
            await asyncio.sleep(self.telemetry_interval_s)

    def _current_faults(self) -> set[p.Fault]:
        faults = set()
        if not self.hw.amplifier.ok:
            faults.add(p.Fault.AMPLIFIER)
        if not self.hw.speaker.line_ok:
            faults.add(p.Fault.SPEAKER_LINE)
        if self.hw.power.source == "battery":
            faults.add(p.Fault.ON_BATTERY)
        offset = self._known_clock_offset_ms()
        if offset is not None and abs(offset) > 2_000:
            faults.add(p.Fault.CLOCK)  # corrected here, but the board's NTP is broken
        if self.clock_sync is not None and self.clock_sync.failures:
            faults.add(p.Fault.CLOCK)  # cannot be placed: plays on receipt
        return faults

    def _known_clock_offset_ms(self) -> int | None:
        if self.clock_sync is None:
            # A board's time service (chrony, edge_agent/boards/linux.py SystemClock)
            # knows the clock's offset better than commands' issue times do (those
            # carry the network's delay); the simulated clock has none.
            ntp = getattr(self.hw.clock, "ntp_offset_ms", None)
            return ntp if ntp is not None else self._clock_offset_ms
        estimate = self.clock.estimate
        return estimate.offset_ms if estimate is not None else None

    async def _fault_watch_loop(self) -> None:
        ticks = 0
        # Hardware is polled (a board has no interrupt for every sensor) once a second,
        # at a random phase so a simulator's thousands of agents do not wake together.
        await asyncio.sleep(random.random())
        while True:
            current = self._current_faults()
            if current != self._faults:
                raised, cleared = current - self._faults, self._faults - current
                self._faults = current
                now = self.clock.now_ms()
                for fault in sorted(raised):
                    self._publish_event(p.EventKind.FAULT_RAISED, fault.value, now)
                for fault in sorted(cleared):
                    self._publish_event(p.EventKind.FAULT_CLEARED, fault.value, now)
                self._publish_telemetry()
            self._mark_progress()
            ticks += 1
            if ticks % 10 == 0:
                self._hand_over_again()
            await asyncio.sleep(1.0)

    def _mark_progress(self) -> None:
        item = self._playing_item
        track = self._tracks.get(item.broadcast_id) if item is not None else None
        if track is None or track.started_mono is None:
            return
        if time.monotonic() - self._last_progress_mark >= PROGRESS_MARK_S:
            self._last_progress_mark = time.monotonic()
            self.journal.touch()

    def _publish_event(
        self,
        kind: p.EventKind,
        reason: str,
        at: int,
        detail: dict[str, object] | None = None,
        command_id: str | None = None,
    ) -> None:
        event = p.DeviceEvent(
            device_id=self.config.device_id,
            kind=kind,
            at=at,
            reason=_clip(reason),
            detail=detail or {},
            command_id=command_id,
        )
        # Fault and housekeeping events are superseded by later ones (and telemetry);
        # a play on the terminal's own clock is not.
        keep = kind is p.EventKind.PLAYED_OFFLINE
        self._send(p.Topics.device_event(self.config.device_id), event, keep=keep)


def _clip(text: str, limit: int = 500) -> str:
    """Reasons are bounded on the wire (a URL list can be long)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
