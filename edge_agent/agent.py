"""The terminal's agent: verify, fetch, arbitrate, play, report.

One instance per terminal. The simulator runs thousands of them in one event loop, so
nothing here blocks: file work is small, audio decoding belongs to the hardware, and
MQTT is driven from the loop by `dalaba.mqtt`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import aiohttp

from dalaba import protocol as p
from dalaba.mqtt import BrokerAddress, MqttConnection, WillMessage
from dalaba.signing import Ed25519Verifier, VerifierSet
from edge_agent.arbiter import Arbiter, Item
from edge_agent.cache import MediaCache
from edge_agent.config import FIRMWARE_VERSION, DeviceConfig
from edge_agent.hardware import Hardware, HardwareFault, PreparedAudio
from edge_agent.local_schedule import LocalSchedule, PinnedMedia
from edge_agent.replay import SeenCommands

log = logging.getLogger(__name__)


@dataclass
class _Track:
    """What the agent knows of one broadcast it was told to play (by a command, or by
    its local schedule)."""

    command_id: str
    expires_at: int
    body: p.PlayBody
    local: bool = False  # triggered by the terminal's own schedule
    cancelled: bool = False
    item: Item | None = None
    stop_reason: p.DeliveryState | None = None
    fetch_task: asyncio.Task[None] | None = field(default=None, repr=False)


class EdgeAgent:
    def __init__(
        self,
        config: DeviceConfig,
        hardware: Hardware,
        *,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = config
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
        self._clock_offset_ms: int | None = None
        self.cache = MediaCache(config.state_dir / "cache", config.cache_max_bytes)
        self._seen = SeenCommands(config.state_dir / "seen-commands.txt")
        self.schedule = LocalSchedule(config.state_dir)
        self._pinned = PinnedMedia(config.state_dir)
        self._schedule_wakeup = asyncio.Event()
        self._verifiers = VerifierSet(
            Ed25519Verifier.from_pem(*(k.encode() for k in config.controller_public_keys))
        )
        self.mqtt: MqttConnection | None = None
        # Remotely adjustable (ConfigBody); start from the provisioned values.
        self.normal_volume = config.normal_volume
        self.emergency_volume = config.emergency_volume
        self.telemetry_interval_s = config.telemetry_interval_s
        self._overrides_path = config.state_dir / "config-overrides.json"

    # ------------------------------------------------------------------ lifecycle

    async def start(self, connect_timeout_s: float | None = None) -> None:
        cfg = self.config
        self._seen.load(self.hw.clock.now_ms())
        self.schedule.load(self.hw.clock.now_ms())
        self._pinned.load()
        self._load_config_overrides()
        for sha in self._pinned.refs.keys() | self.schedule.media():
            self.cache.pin(sha)
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        offline = p.DeviceStatus(device_id=cfg.device_id, online=False, at=0)
        self.mqtt = MqttConnection(
            client_id=cfg.device_id,
            broker=BrokerAddress.from_url(cfg.broker_url).with_credentials(
                cfg.mqtt_username, cfg.mqtt_password.get_secret_value()
            ),
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
        if self.schedule.items or self._pinned.refs:
            # After a reboot: make sure what must be on flash still is.
            self._spawn(self._prefetch(self._wanted_media()))
        await self.mqtt.start(timeout_s=connect_timeout_s)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        """A short-lived background job, cancelled with the agent if still running."""
        task = asyncio.create_task(coro)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def stop(self, *, graceful: bool = True) -> None:
        """Graceful: announce offline and disconnect. Not graceful (power cut): the
        connection just dies and the broker publishes the last will."""
        tasks = [*self._tasks, *self._jobs]
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
                        device_id=self.config.device_id, online=False, at=self.hw.clock.now_ms()
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
        self.schedule.close()

    @property
    def connected(self) -> bool:
        return self.mqtt is not None and self.mqtt.connected

    def _on_connected(self) -> None:
        cfg = self.config
        status = p.DeviceStatus(
            device_id=cfg.device_id,
            online=True,
            at=self.hw.clock.now_ms(),
            firmware=FIRMWARE_VERSION,
            village_id=cfg.village_id,
            township_id=cfg.township_id,
        )
        self._publish(p.Topics.device_status(cfg.device_id), status, retain=True)
        self._publish_telemetry()

    # ------------------------------------------------------------------ commands

    def _on_message(self, topic: str, payload: bytes) -> None:
        now = self.hw.clock.now_ms()
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
        body = command.body
        if isinstance(body, p.PlayBody):
            self._accept_play(command, body)
        elif isinstance(body, p.CancelBody):
            self._cancel(body.broadcast_id, command.expires_at)
        elif isinstance(body, p.PreloadBody):
            released = self._pinned.replace(body.purpose, body.media)
            for sha in released - self.schedule.media():
                self.cache.unpin(sha)
            for ref in body.media:
                self.cache.pin(ref.sha256)
            self._spawn(self._prefetch(body.media, report_command=command.id))
        elif isinstance(body, p.ScheduleBody):
            self._apply_schedule(body)
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
            at=self.hw.clock.now_ms(),
            reason=reason.value,
            command_id=command.id if command is not None else None,
            broadcast_id=broadcast_id,
            detail={"message": detail},
        )
        self._publish(p.Topics.device_event(self.config.device_id), event)
        log.warning("%s: rejected command: %s %s", self.config.device_id, reason.value, detail)

    def _accept_play(self, command: p.Command, body: p.PlayBody) -> None:
        self._start_track(_Track(command_id=command.id, expires_at=command.expires_at, body=body))

    def _start_track(self, track: _Track) -> None:
        bid = track.body.broadcast_id
        # One broadcast (or scheduled occurrence) plays once, whichever path brings it
        # first; the claim is on flash, so a reboot does not play it again.
        if bid in self._tracks or self.schedule.claimed(bid):
            return
        self.schedule.claim(bid, track.expires_at)
        self._tracks[bid] = track
        self._report(track, p.DeliveryState.RECEIVED)
        track.fetch_task = asyncio.create_task(self._fetch_and_queue(track))
        lead = track.body.start_at - self.hw.clock.now_ms()
        if lead <= self.hw.amplifier.warmup_ms + 2_000 and not self.hw.amplifier.on:
            # Warm the amplifier while the audio is fetched, so a download that ends
            # just before the start instant does not also wait for the warm-up.
            self._spawn(self._prewarm())

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
            self.hw.clock.now_ms(),
            detail=body.model_dump(exclude_none=True, exclude={"kind"}),
        )
        self._publish_telemetry()

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
            self.hw.clock.now_ms(),
            detail={"version": body.version, "items": len(body.items)},
        )
        self._schedule_wakeup.set()

    async def _schedule_loop(self) -> None:
        # Claim each item a little before its start so it is fetched, decoded and the
        # amplifier warm by the instant; the controller's own command, when it can send
        # one, normally arrives earlier still and claims it first.
        lead = self.hw.amplifier.warmup_ms + 1500
        while True:
            now = self.hw.clock.now_ms()
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
            timeout = min(1.0, max(0.05, (min(upcoming) - now) / 1000)) if upcoming else 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._schedule_wakeup.wait(), timeout)

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

    async def _prefetch(
        self, refs: tuple[p.MediaRef, ...], report_command: str | None = None
    ) -> None:
        fetched = failed = 0
        for ref in refs:
            try:
                await self._ensure_media(ref, self.hw.clock.now_ms() + 3600_000)
                fetched += 1
            except ConnectionError as exc:
                failed += 1
                log.info(
                    "%s: prefetch of %s failed: %s", self.config.device_id, ref.sha256[:12], exc
                )
        if report_command is not None:
            self._publish_event(
                p.EventKind.PRELOADED,
                "ok" if not failed else "incomplete",
                self.hw.clock.now_ms(),
                detail={"fetched": fetched, "failed": failed},
                command_id=report_command,
            )

    async def _fetch_and_queue(self, track: _Track) -> None:
        media = track.body.media
        try:
            path = await self._ensure_media(media, track.expires_at)
            if track.cancelled:
                return
            prepared = await self.hw.speaker.prepare(path, media.sha256)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._report(track, p.DeliveryState.FAILED, f"media: {exc}")
            return
        if track.cancelled:
            return
        self._report(track, p.DeliveryState.FETCHED)
        self.cache.pin(media.sha256)
        track.item = Item(
            broadcast_id=track.body.broadcast_id,
            command_id=track.command_id,
            rank=track.body.rank,
            start_at_ms=track.body.start_at,
            expires_at_ms=track.expires_at,
            replay_after_preemption=track.body.priority is not p.Priority.ROUTINE,
            payload=prepared,
        )
        self._arbiter.offer(track.item)
        self._wakeup.set()

    async def _ensure_media(self, media: p.MediaRef, expires_at: int) -> Path:
        if self.cache.has(media.sha256):
            return self.cache.path_for(media.sha256)
        assert self._http is not None
        url = urljoin(self.config.media_base_url, media.url)
        last_error: Exception | None = None
        for attempt in range(self.config.fetch_attempts):
            if self.hw.clock.now_ms() >= expires_at:
                break
            if not self.hw.network.up:
                last_error = ConnectionError("network down")
                await asyncio.sleep(min(2.0**attempt, 10))
                continue
            try:
                async with self._http.get(url) as resp:
                    if resp.status != 200:
                        raise ConnectionError(f"HTTP {resp.status} for {media.url}")
                    data = await resp.read()
                await self.hw.network.transfer_delay(len(data))
                return self.cache.put(media.sha256, data)
            except (aiohttp.ClientError, ConnectionError, ValueError, TimeoutError) as exc:
                last_error = exc
                await asyncio.sleep(min(0.2 * 2.0**attempt, 5))
        raise ConnectionError(f"could not fetch {media.sha256[:12]}: {last_error}")

    def _cancel(self, broadcast_id: str, expires_at: int) -> None:
        track = self._tracks.get(broadcast_id)
        if track is None:
            # Not started here (yet): claim it, so neither a late command nor the local
            # schedule plays what the controller has cancelled.
            if not self.schedule.claimed(broadcast_id):
                self.schedule.claim(broadcast_id, expires_at)
            return
        if track.cancelled:
            return
        track.cancelled = True
        if self._playing_item is not None and self._playing_item.broadcast_id == broadcast_id:
            track.stop_reason = p.DeliveryState.CANCELLED
            assert self._play_task is not None
            self._play_task.cancel()
            return
        if self._arbiter.remove(broadcast_id) is not None:
            self._release(track.body.media.sha256)
        self._report(track, p.DeliveryState.CANCELLED, "cancelled by the controller")

    # ------------------------------------------------------------------ playing

    async def _player_loop(self) -> None:
        warmup = self.hw.amplifier.warmup_ms
        while True:
            now = self.hw.clock.now_ms()
            decision = self._arbiter.decide(now, lead_ms=warmup)
            for item in decision.expired:
                track = self._tracks.get(item.broadcast_id)
                if track is not None:
                    self._release(track.body.media.sha256)
                    self._report(track, p.DeliveryState.EXPIRED, "expired before it could play")
            if decision.play is not None:
                if decision.preempted is not None and self._play_task is not None:
                    track = self._tracks[decision.preempted.broadcast_id]
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

    async def _play(self, item: Item) -> None:
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
            if not self.hw.amplifier.on:
                await self.hw.amplifier.power_on()
            await self.hw.speaker.play(
                prepared,
                start_at_ms=body.start_at,
                broadcast_id=body.broadcast_id,
                on_started=lambda: self._report(track, p.DeliveryState.PLAYING),
            )
            self._report(track, p.DeliveryState.DONE)
        except asyncio.CancelledError:
            reason = track.stop_reason or p.DeliveryState.CANCELLED
            track.stop_reason = None
            requeued = reason is p.DeliveryState.PREEMPTED and item.replay_after_preemption
            self._report(
                track,
                reason,
                "interrupted by a higher priority broadcast"
                if reason is p.DeliveryState.PREEMPTED
                else "stopped",
            )
            # Not re-raised: the player loop cancelled us deliberately and goes on.
        except HardwareFault as exc:
            self._report(track, p.DeliveryState.FAILED, str(exc))
        finally:
            self._arbiter.finished(item)
            if self._playing_item is item:
                self._playing_item = None
            if not requeued:
                self._release(body.media.sha256)
            self._amp_off_task = asyncio.create_task(self._amplifier_off_later())
            self._wakeup.set()

    async def _amplifier_off_later(self) -> None:
        await asyncio.sleep(self.config.amplifier_hold_s)
        if self._playing_item is None:
            await self.hw.amplifier.power_off()

    # ------------------------------------------------------------------ reporting

    def _next_seq(self) -> int:
        # Increasing across restarts without persisting a counter.
        self._seq = max(self._seq + 1, time.time_ns() // 1000)
        return self._seq

    def _report(self, track: _Track, state: p.DeliveryState, reason: str | None = None) -> None:
        report = p.DeliveryReport(
            device_id=self.config.device_id,
            broadcast_id=track.body.broadcast_id,
            command_id=track.command_id,
            state=state,
            at=self.hw.clock.now_ms(),
            seq=self._next_seq(),
            reason=reason,
            offline=not self.connected,
        )
        self.counters[f"state_{state.value}"] += 1
        self._publish(p.Topics.device_ack(self.config.device_id), report)
        if track.local and state is p.DeliveryState.DONE and not self.connected:
            # Queued with the reports; tells the controller this one ran on our own clock.
            self._publish_event(
                p.EventKind.PLAYED_OFFLINE,
                track.body.broadcast_id,
                report.at,
                detail={"occurrence_id": track.body.broadcast_id, "start_at": track.body.start_at},
            )

    def _publish(self, topic: str, payload: p._Payload, *, retain: bool = False) -> None:
        if self.mqtt is None:
            return
        # QoS 1: paho queues it while we are offline and sends it on reconnect.
        self.mqtt.publish(topic, payload.to_bytes(), qos=p.REPORT_QOS, retain=retain)

    def telemetry(self) -> p.Telemetry:
        hw = self.hw
        cache_bytes, cache_items = self.cache.usage()
        return p.Telemetry(
            device_id=self.config.device_id,
            at=hw.clock.now_ms(),
            firmware=FIRMWARE_VERSION,
            uptime_s=int(time.monotonic() - self._started_at),
            amplifier_on=hw.amplifier.on,
            amplifier_ok=hw.amplifier.ok,
            speaker_line_ok=hw.speaker.line_ok,
            power_source=hw.power.source,
            battery_pct=hw.power.battery_pct,
            temperature_c=hw.sensors.temperature_c,
            signal_dbm=hw.sensors.signal_dbm,
            volume=hw.speaker.volume,
            playing=self._playing_item.broadcast_id if self._playing_item else None,
            cache_bytes=cache_bytes,
            cache_items=cache_items,
            clock_offset_ms=self._clock_offset_ms,
            faults=tuple(sorted(self._faults)),
            schedule_version=self.schedule.version,
            dropped_messages=self.counters["dropped"],
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
        while True:
            await asyncio.sleep(self.telemetry_interval_s)
            self._publish_telemetry()

    def _current_faults(self) -> set[p.Fault]:
        faults = set()
        if not self.hw.amplifier.ok:
            faults.add(p.Fault.AMPLIFIER)
        if not self.hw.speaker.line_ok:
            faults.add(p.Fault.SPEAKER_LINE)
        if self.hw.power.source == "battery":
            faults.add(p.Fault.ON_BATTERY)
        if self._clock_offset_ms is not None and abs(self._clock_offset_ms) > 2_000:
            faults.add(p.Fault.CLOCK)
        return faults

    async def _fault_watch_loop(self) -> None:
        while True:
            current = self._current_faults()
            if current != self._faults:
                raised, cleared = current - self._faults, self._faults - current
                self._faults = current
                now = self.hw.clock.now_ms()
                for fault in sorted(raised):
                    self._publish_event(p.EventKind.FAULT_RAISED, fault.value, now)
                for fault in sorted(cleared):
                    self._publish_event(p.EventKind.FAULT_CLEARED, fault.value, now)
                self._publish_telemetry()
            await asyncio.sleep(1.0)

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
            reason=reason,
            detail=detail or {},
            command_id=command_id,
        )
        self._publish(p.Topics.device_event(self.config.device_id), event)
