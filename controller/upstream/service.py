"""The county's side of the link to the upper-level platform.

`UpstreamLink.receive` answers one package from above with a signed package: a receipt
(EBDResponse) with its result code, or for a state request the EBMStateResponse. An EBM is
handed to the one warning intake (controller/warnings/intake.py), which plays, holds for
review, cancels or records it, and keeps it verbatim; nothing is stored for a package
refused before that (bad tar, bad XML, bad signature, missing content).

`UpstreamLink.report` sends up, as signed packages POSTed to the platform: the broadcast
log (EBMBrdLog) of a period, the terminals' states (EBRDTState) and the platform's state
with the county's online rate over the period (EBRPSState). It runs every
`upstream_report_interval_s` (incremental: since the last report) and on request
(POST /api/upstream/reports, or an OMDRequest from the platform); each package sent is
logged (`UpstreamReport`) with the receipt the platform gave.
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import aiohttp
from sqlmodel import Session, col, func, select

from controller import history
from controller.approvals import PendingBroadcast
from controller.media import MediaStore
from controller.models import Broadcast, Delivery, Device
from controller.settings import Settings
from controller.speech import UnsupportedAudio, normalise_upload
from controller.upstream import fields as f
from controller.upstream.models import UpstreamReport
from controller.upstream.package import (
    Package,
    PackageRefused,
    build_package,
    element,
    parse_xml,
    read_ebm,
    read_package,
    text_of,
)
from controller.upstream.signature import PackageSigner, PackageVerifier
from controller.warnings.intake import IncomingWarning, IntakeContext, IntakeOutcome, intake
from controller.warnings.models import UpstreamMessage
from dalaba.protocol import now_ms

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-tar"
MAX_LOG_ITEMS = 5000  # per broadcast-log package; a longer log goes in several
# Deliveries one report round reads at most (the newest); beyond it the round says it was
# cut (`truncated` in its log row), and a shorter period must be asked for.
MAX_LOG_ROWS = 200_000


async def read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes | None:
    """A whole body, or None as soon as it is longer than `limit` (a stream's `read(n)`
    returns what has arrived, not necessarily all of it)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class AudioRefused(Exception):
    def __init__(self, code: f.ResultCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _origin(url: str) -> str:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


@dataclass(frozen=True)
class Answer:
    """A package to send back, and what the county made of the one received."""

    body: bytes
    result: f.ResultCode
    reason: str
    outcome: IntakeOutcome | None = None


class UpstreamLink:
    def __init__(
        self,
        settings: Settings,
        intake_context: Callable[[], IntakeContext],
        signer: PackageSigner,
        verifier: PackageVerifier,
        media: MediaStore,
    ) -> None:
        self._settings = settings
        self._media = media
        self._context = intake_context
        self._signer = signer
        self._verifier = verifier
        self._zone = ZoneInfo(settings.timezone)
        self._task: asyncio.Task[None] | None = None
        self._requested: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, intake_context: Callable[[], IntakeContext], media: MediaStore
    ) -> UpstreamLink:
        signer = PackageSigner.load_or_create(
            settings.upstream_signing_scheme or settings.signing_scheme,
            settings.upstream_key_path,
        )
        return cls(
            settings,
            intake_context,
            signer,
            PackageVerifier.from_files(settings.upstream_trusted_keys),
            media,
        )

    def public_pem(self) -> bytes:
        """The county's package key, for the upper platform to trust."""
        return self._signer.public_pem()

    @property
    def own_id(self) -> str:
        return self._settings.upstream_resource_code

    @property
    def platform_id(self) -> str:
        return self._settings.upstream_platform_resource_code

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Every replica: packages come in on any of them (and their audio by URL)."""
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._settings.upstream_http_timeout_s)
        )

    async def start_reports(self) -> None:
        """The leader only (controller/replicas.py): one county, one report per round."""
        if self._settings.upstream_url and self._settings.upstream_report_interval_s > 0:
            self._task = asyncio.create_task(self._report_loop())

    async def stop_reports(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def stop(self) -> None:
        tasks = [*self._requested, *([self._task] if self._task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    # ------------------------------------------------------------------ packages in

    async def receive(self, data: bytes, source_id: str) -> Answer:
        try:
            package = read_package(
                data, self._verifier, max_bytes=self._settings.upstream_package_max_bytes
            )
            self._check_addressing(package)
        except PackageRefused as exc:
            log.warning("upstream package refused (%d): %s", exc.code, exc.reason)
            return self._receipt(exc.ebd_id, exc.code, exc.reason)
        if package.ebd_type is f.EbdType.EBM:
            return await self._ebm(package, source_id)
        if package.ebd_type is f.EbdType.EBM_STATE_REQUEST:
            return await self._state(package, source_id)
        if package.ebd_type is f.EbdType.OMD_REQUEST:
            return await self._omd(package)
        # ConnectionCheck, or the platform's receipt for something we sent.
        return self._receipt(package.ebd_id, f.ResultCode.PARSED, "")

    def _check_addressing(self, package: Package) -> None:
        if package.ebd_type not in f.INBOUND_TYPES:
            raise PackageRefused(
                f.ResultCode.OTHER, f"{package.ebd_type} is sent up, not down", package.ebd_id
            )
        if self.platform_id and package.src != self.platform_id:
            raise PackageRefused(
                f.ResultCode.OTHER, f"{f.SRC}: not the configured platform", package.ebd_id
            )
        if package.dest and self.own_id and package.dest != self.own_id:
            raise PackageRefused(f.ResultCode.OTHER, f"{f.DEST}: not this county", package.ebd_id)

    async def _ebm(self, package: Package, source_id: str) -> Answer:
        ebm = read_ebm(package.body)
        try:
            order = f.to_order(ebm, self._zone)
        except f.EbmInvalid as exc:
            return self._receipt(package.ebd_id, f.ResultCode.CONTENT_MISSING, str(exc))
        audio = order.audio
        if audio is not None and audio.kind is f.AuxType.FILE and audio.ref not in package.files:
            return self._receipt(
                package.ebd_id,
                f.ResultCode.CONTENT_MISSING,
                f"{f.AUX_DESC}: {audio.ref} is not in the package",
            )
        try:
            media_id = await self._audio(audio, package) if audio is not None else None
        except AudioRefused as exc:
            return self._receipt(package.ebd_id, exc.code, str(exc))
        warning = IncomingWarning(
            source_id=source_id,
            protocol="ebm",
            identifier=order.ebm_id,
            sender=order.sender or package.src,
            sent=order.sent or package.sent,
            msg_type="cancel" if order.cancel else "alert",
            status="actual",
            raw=package.message,
            content_type="application/xml",
            references=[order.ebm_id] if order.cancel else [],
            level=order.level,
            event=order.event_type,
            language=ebm.language,
            headline=order.title,
            description=ebm.description,
            audio_url=order.audio.ref if order.audio else None,
            media_id=media_id,
            area_codes=list(order.area_codes),
            starts_at_ms=order.starts_ms,
            expires_at_ms=order.ends_ms,
            detail={"ebd_id": package.ebd_id, "src": package.src, "event_type": ebm.event_type},
        )
        outcome = await intake(self._context(), warning)
        # Valid: whatever the intake made of it (played, held for review, recorded, outside
        # the county) is what the state request answers. A refusal by the intake (a
        # disabled source) or a broadcast it could not send stops there: "other".
        code = (
            f.ResultCode.OTHER
            if outcome.outcome in ("refused", "failed")
            else (f.ResultCode.PARSED)
        )
        answer = self._receipt(package.ebd_id, code, outcome.reason)
        return Answer(answer.body, answer.result, answer.reason, outcome)

    async def _audio(self, audio: f.Audio, package: Package) -> str:
        """The EBM's recording, from the package or fetched from the platform, through
        the same checks and normalisation as an upload; its media id."""
        settings = self._settings
        limit = settings.upload_max_bytes
        if audio.kind is f.AuxType.FILE:
            data = package.files[audio.ref]
        else:
            data = await self._fetch(audio.ref, limit)
        if len(data) > limit:
            raise AudioRefused(f.ResultCode.OTHER, f"audio larger than {limit} bytes")
        try:
            rendered = await normalise_upload(
                data, max_duration_s=settings.upload_max_duration_s, max_bytes=limit
            )
        except UnsupportedAudio as exc:
            raise AudioRefused(f.ResultCode.PARSE_FAILED, f"audio: {exc.reason}") from None
        row = await self._media.put(
            rendered.audio,
            mime=rendered.mime,
            duration_ms=rendered.duration_ms,
            source="upstream",
            text=f"EBM {package.ebd_id}",
        )
        return row.sha256

    async def _fetch(self, url: str, limit: int) -> bytes:
        allowed = {_origin(o) for o in self._settings.upstream_audio_origins}
        if self._settings.upstream_url:
            allowed.add(_origin(self._settings.upstream_url))
        if _origin(url) not in allowed:
            raise AudioRefused(f.ResultCode.OTHER, "audio URL: not the platform's origin")
        assert self._http is not None, "started"
        try:
            async with self._http.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise AudioRefused(f.ResultCode.OTHER, f"audio URL: HTTP {response.status}")
                data = await read_at_most(response.content, limit)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AudioRefused(f.ResultCode.OTHER, f"audio URL: {type(exc).__name__}") from None
        if data is None:
            raise AudioRefused(f.ResultCode.OTHER, f"audio larger than {limit} bytes")
        return data

    async def _state(self, package: Package, source_id: str) -> Answer:
        ebm_id = text_of(package.body, f"{f.STATE_EBM}/{f.EBM_ID}")
        if not f.EBM_ID_PATTERN.match(ebm_id):
            return self._receipt(package.ebd_id, f.ResultCode.CONTENT_MISSING, f"{f.EBM_ID}")
        ctx = self._context()
        state = await ctx.db.run(lambda s: ebm_state(s, ebm_id, source_id))
        body = element(
            f.EbdType.EBM_STATE_RESPONSE.value,
            None,
            element(f.REPORT_TIME, f.format_time(now_ms(), self._zone)),
            element(f.STATE_EBM, None, element(f.EBM_ID, ebm_id)),
            element(f.STATE_CODE, int(state.code)),
            element(f.STATE_DESC, state.code.name.lower()),
            element(
                f.COVERAGE,
                None,
                element(f.COVERAGE_RATE, f"{state.coverage:.4f}"),
                element(f.COVERAGE_AREA, ",".join(state.area_codes)),
                element(f.TARGETED, state.targeted),
                element(f.SUCCEEDED, state.succeeded),
            ),
        )
        return Answer(
            self._package(f.EbdType.EBM_STATE_RESPONSE, body, related=package.ebd_id)[1],
            f.ResultCode.PARSED,
            state.code.name.lower(),
        )

    async def _omd(self, package: Package) -> Answer:
        """The platform asks for operational data: receipt now, the reports sent up."""
        kind = text_of(package.body, f.REPORT_TYPE) or f.INCREMENTAL
        try:
            start = f.parse_time(text_of(package.body, f.REPORT_START), self._zone)
            end = f.parse_time(text_of(package.body, f.REPORT_END), self._zone)
        except ValueError as exc:
            return self._receipt(package.ebd_id, f.ResultCode.CONTENT_MISSING, str(exc))
        if not self._settings.upstream_url:
            return self._receipt(package.ebd_id, f.ResultCode.OTHER, "upstream_url not set")
        asked = text_of(package.body, f.OMD_TYPE)
        task = asyncio.create_task(
            self._report_safely("omd", start, end, full=kind == f.FULL, only=asked)
        )
        self._requested.add(task)  # kept until done, and cancelled on stop
        task.add_done_callback(self._requested.discard)
        return self._receipt(package.ebd_id, f.ResultCode.PARSED, "")

    def refuse(self, code: f.ResultCode, reason: str) -> Answer:
        """A receipt for what could not even be read (too large)."""
        return self._receipt("", code, reason)

    def _receipt(self, related: str, code: f.ResultCode, reason: str) -> Answer:
        body = element(
            f.EbdType.EBD_RESPONSE.value,
            None,
            element(f.RESULT_CODE, int(code)),
            element(f.RESULT_DESC, reason[:200]),
        )
        return Answer(
            self._package(f.EbdType.EBD_RESPONSE, body, related=related or None)[1], code, reason
        )

    def _package(
        self, ebd_type: f.EbdType, body: ET.Element, related: str | None = None
    ) -> tuple[str, bytes]:
        """A signed package for the platform: (its EBDID, the tar)."""
        return build_package(
            ebd_type,
            body,
            own_id=self.own_id,
            dest_id=self.platform_id,
            signer=self._signer,
            zone=self._zone,
            now_ms=now_ms(),
            related=related,
        )

    # ------------------------------------------------------------------ reports up

    async def _report_loop(self) -> None:
        interval_ms = self._settings.upstream_report_interval_s * 1000
        while True:
            await asyncio.sleep(self._settings.upstream_report_interval_s)
            ctx = self._context()
            last = await ctx.db.run(_last_scheduled_end)
            end = now_ms()
            await self._report_safely("schedule", last or end - interval_ms, end, full=False)

    async def _report_safely(self, trigger: str, start: int, end: int, **kw: Any) -> None:
        try:
            await self.report(trigger, start, end, **kw)
        except Exception:  # one failed round must not end the schedule
            log.exception("upstream report (%s) failed", trigger)

    async def report(
        self, trigger: str, start_ms: int, end_ms: int, *, full: bool = False, only: str = ""
    ) -> list[dict[str, Any]]:
        """Build, sign and send the reports of [start_ms, end_ms); return what was sent."""
        if not self._settings.upstream_url:
            raise RuntimeError("upstream_url is not set")
        ctx = self._context()
        snapshot = await ctx.db.run(lambda s: _snapshot(s, start_ms, end_ms, full, self._zone))
        if snapshot.truncated:
            log.warning("upstream report: more than %d deliveries, the newest sent", MAX_LOG_ROWS)
        sent = []
        for ebd_type, body, items in _report_bodies(snapshot, self.own_id, self._zone):
            if only and only != ebd_type.value:
                continue
            ebd_id, data = self._package(ebd_type, body)
            row = UpstreamReport(
                ebd_id=ebd_id,
                ebd_type=ebd_type.value,
                trigger=trigger,
                created_ms=now_ms(),
                period_start_ms=start_ms,
                period_end_ms=end_ms,
                items=items,
                detail={"full": full, "truncated": snapshot.truncated},
            )
            await self._post(row, data)
            await ctx.db.run(_adder(row))
            sent.append(report_view(row))
        return sent

    async def _post(self, row: UpstreamReport, data: bytes) -> None:
        assert self._http is not None, "started"
        url = self._settings.upstream_url or ""
        try:
            async with self._http.post(
                url, data=data, headers={"Content-Type": CONTENT_TYPE}
            ) as response:
                row.http_status = response.status
                answer = await read_at_most(
                    response.content, self._settings.upstream_package_max_bytes
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            row.status, row.error = "failed", f"{type(exc).__name__}: {exc}"[:300]
            return
        if answer is None:
            row.status, row.error = "failed", "the receipt is too large"
            return
        if row.http_status != 200:
            row.status, row.error = "failed", f"HTTP {row.http_status}"
            return
        try:
            receipt = read_package(
                answer, self._verifier, max_bytes=self._settings.upstream_package_max_bytes
            )
            code = int(text_of(receipt.body, f.RESULT_CODE))
        except (PackageRefused, ValueError) as exc:
            row.status, row.error = "failed", f"unreadable receipt: {exc}"[:300]
            return
        row.result_code = code
        if code not in (f.ResultCode.RECEIVED, f.ResultCode.PARSED):
            row.status = "refused"
            row.error = text_of(receipt.body, f.RESULT_DESC)[:300]


def _adder(row: UpstreamReport) -> Callable[[Session], None]:
    return lambda session: session.add(row)


def report_view(row: UpstreamReport) -> dict[str, Any]:
    from controller.timefmt import iso

    return {
        "ebd_id": row.ebd_id,
        "type": row.ebd_type,
        "trigger": row.trigger,
        "created_at": iso(row.created_ms),
        "period": {"start": iso(row.period_start_ms), "end": iso(row.period_end_ms)},
        "items": row.items,
        "status": row.status,
        "http_status": row.http_status,
        "result_code": row.result_code,
        "error": row.error,
        "truncated": bool((row.detail or {}).get("truncated")),
    }


def _last_scheduled_end(session: Session) -> int | None:
    return session.exec(
        select(func.max(UpstreamReport.period_end_ms)).where(UpstreamReport.trigger == "schedule")
    ).one()


# ------------------------------------------------------------------ state of an EBM


@dataclass(frozen=True)
class EbmState:
    code: f.BroadcastState
    coverage: float
    targeted: int
    succeeded: int
    area_codes: tuple[str, ...]


def ebm_state(session: Session, ebm_id: str, source_id: str) -> EbmState:
    """What became of an EBM this source sent: its play message's outcome and broadcast
    (directly, or once an officer released it from review), and its cancel. Another
    source's EBM is not this source's to know of: not processed."""
    messages = session.exec(
        select(UpstreamMessage)
        .where(UpstreamMessage.protocol == "ebm")
        .where(UpstreamMessage.source_id == source_id)
        .where(UpstreamMessage.identifier == ebm_id)
        .order_by(col(UpstreamMessage.received_ms))
    ).all()
    plays = [m for m in messages if m.msg_type == "alert" and m.outcome != "duplicate"]
    # A sender may resend after a refusal: the copy that was acted on counts.
    acted = [m for m in plays if m.outcome not in ("refused", "failed")]
    if not plays:
        return EbmState(f.BroadcastState.NOT_PROCESSED, 0.0, 0, 0, ())
    play = (acted or plays)[-1]
    codes = _area_codes(play)
    broadcast_id = play.broadcast_id
    if broadcast_id is None and play.approval_id is not None:
        request = session.get(PendingBroadcast, play.approval_id)
        if request is not None and request.broadcast_id is None:
            waiting = request.status == "pending"
            code = f.BroadcastState.WAITING if waiting else f.BroadcastState.CANCELLED
            return EbmState(code, 0.0, 0, 0, codes)
        broadcast_id = request.broadcast_id if request is not None else None
    if broadcast_id is None:
        code = {"recorded": f.BroadcastState.NOT_PROCESSED}.get(
            play.outcome, f.BroadcastState.FAILED
        )
        return EbmState(code, 0.0, 0, 0, codes)
    broadcast = session.get(Broadcast, broadcast_id)
    if broadcast is None:  # removed by retention
        return EbmState(f.BroadcastState.NOT_PROCESSED, 0.0, 0, 0, codes)
    by_state = dict(
        session.exec(
            select(Delivery.state, func.count())
            .where(Delivery.broadcast_id == broadcast.id)
            .group_by(col(Delivery.state))
        ).all()
    )
    targeted = sum(by_state.values())
    done = by_state.get("done", 0)
    return EbmState(
        f.broadcast_state(broadcast.status, by_state),
        round(done / targeted, 4) if targeted else 0.0,
        targeted,
        done,
        codes,
    )


def _area_codes(message: UpstreamMessage) -> tuple[str, ...]:
    body = parse_xml(message.raw).find(f.EBM)  # verbatim as received: parsed defensively
    return (
        tuple(c for c in text_of(body, f"{f.CONTENT}/{f.AREA_CODE}").split(",") if c)
        if (body is not None)
        else ()
    )


# ------------------------------------------------------------------ report contents


@dataclass(frozen=True)
class Snapshot:
    start_ms: int
    end_ms: int
    full: bool
    log: list[dict[str, Any]]
    truncated: bool
    devices: list[dict[str, Any]]
    online_rate: float | None
    online: int
    total: int
    now_ms: int


def _snapshot(session: Session, start_ms: int, end_ms: int, full: bool, zone: ZoneInfo) -> Snapshot:
    """Read everything one round of reports needs, in one transaction."""
    query = select(Delivery, Broadcast, Device).where(
        Delivery.broadcast_id == Broadcast.id, Delivery.device_id == Device.id
    )
    # Full: every delivery of the broadcasts started in the period; incremental: the
    # deliveries that changed in it.
    moment = col(Broadcast.start_at_ms) if full else col(Delivery.updated_ms)
    query = query.where(moment >= start_ms).where(moment < end_ms)
    query = query.order_by(col(Delivery.updated_ms).desc()).limit(MAX_LOG_ROWS + 1)
    ebm_of = _ebm_ids(session)
    log_rows = []
    for delivery, broadcast, device in session.exec(query).all():
        log_rows.append(
            {
                "ebm_id": ebm_of.get(broadcast.id, ""),
                "broadcast_id": broadcast.id,
                "resource_code": device.resource_code or device.id,
                "state": delivery.state,
                "start_ms": broadcast.start_at_ms,
                "updated_ms": delivery.updated_ms,
                "title": broadcast.title,
                "drill": broadcast.drill,
            }
        )
    devices = [
        {
            "resource_code": d.resource_code or d.id,
            "state": f.device_state(d.online, d.faults or {}, d.playing_broadcast_id is not None),
            "faults": sorted(d.faults or {}),
        }
        for d in session.exec(select(Device).order_by(col(Device.id))).all()
    ]
    return Snapshot(
        start_ms=start_ms,
        end_ms=end_ms,
        full=full,
        log=log_rows[:MAX_LOG_ROWS],
        truncated=len(log_rows) > MAX_LOG_ROWS,
        devices=devices,
        online_rate=history.online_rate(session, start_ms, end_ms),
        online=sum(1 for d in devices if d["state"] is not f.DeviceState.OFF),
        total=len(devices),
        now_ms=now_ms(),
    )


def _ebm_ids(session: Session) -> dict[str, str]:
    rows = session.exec(
        select(UpstreamMessage.broadcast_id, UpstreamMessage.identifier)
        .where(UpstreamMessage.protocol == "ebm")
        .where(col(UpstreamMessage.broadcast_id).is_not(None))
    ).all()
    return {b: i for b, i in rows if b}


def _report_bodies(
    snap: Snapshot, own_id: str, zone: ZoneInfo
) -> list[tuple[f.EbdType, ET.Element, int]]:
    def t(ms: int) -> str:
        return f.format_time(ms, zone)

    period = [
        element(f.REPORT_TIME, t(snap.now_ms)),
        element(f.REPORT_TYPE, f.FULL if snap.full else f.INCREMENTAL),
        element(f.REPORT_START, t(snap.start_ms)),
        element(f.REPORT_END, t(snap.end_ms)),
    ]
    logs = []
    for first in range(0, max(len(snap.log), 1), MAX_LOG_ITEMS):
        chunk = snap.log[first : first + MAX_LOG_ITEMS]
        log_body = element(f.EbdType.BROADCAST_LOG.value, None, *period)
        for row in chunk:
            log_body.append(
                element(
                    f.LOG_ITEM,
                    None,
                    element(f.EBM_ID, row["ebm_id"]),
                    element(f.DEVICE_ID, row["resource_code"]),
                    element(f.LOG_RESULT, f.log_result(row["state"])),
                    element(f.START_TIME, t(row["start_ms"])),
                    element(f.END_TIME, t(row["updated_ms"])),
                    element(f.TITLE, row["title"]),
                )
            )
        logs.append((f.EbdType.BROADCAST_LOG, log_body, len(chunk)))
    state_body = element(f.EbdType.TERMINAL_STATE.value, None, *period)
    for device in snap.devices:
        state_body.append(
            element(
                f.DEVICE_ITEM,
                None,
                element(f.DEVICE_ID, device["resource_code"]),
                element(f.STATE, int(device["state"])),
                element(f.STATE_TEXT, ",".join(device["faults"])),
            )
        )
    rate = "" if snap.online_rate is None else f"{snap.online_rate:.4f}"
    platform_body = element(
        f.EbdType.PLATFORM_STATE.value,
        None,
        *period,
        element(
            f.PLATFORM_ITEM,
            None,
            element(f.PLATFORM_ID, own_id),
            element(f.STATE, int(f.DeviceState.ON)),
            element(f.ONLINE_RATE, rate),
            element(f.TERMINALS_TOTAL, snap.total),
            element(f.TERMINALS_ONLINE, snap.online),
        ),
    )
    return [
        *logs,
        (f.EbdType.TERMINAL_STATE, state_body, len(snap.devices)),
        (f.EbdType.PLATFORM_STATE, platform_body, 1),
    ]
