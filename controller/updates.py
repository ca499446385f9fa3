"""Over-the-air agent updates: releases, rollouts in waves, and where each terminal stands.

An operator with the `updates` permission uploads a release (the agent's wheel, or a zip
bundle of its packages): the controller keeps the bytes with the media (served at
/media/<sha256>, fetched by terminals like audio) and records version, minimum version
to update from, sha256 and size. A rollout sends the release to the terminals a target
names (the broadcasts' targeting, `controller.targets`) in two waves: first
`first_wave_percent` of them (spread by a hash, not by place), then, once every terminal
of the first wave has answered finally (or `wave_timeout_s` passed), the rest, unless
`halt_failure_percent` or more of the first wave failed, rolled back or never answered:
then the rollout halts by itself, and an operator may resume it (send the rest anyway)
or leave it halted.

Each wave is one signed command (`dalaba.protocol.UpdateBody`, signed by the dispatcher
with the same key as every command) naming its terminals, published on each terminal's
own topic. Terminals report progress as `update_state` events; the ingestor stores them
here (`record_update_report`) in the same transaction as the event itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import math
import re
import uuid
import zipfile
from typing import Any

from pydantic import ValidationError
from sqlalchemy import JSON, BigInteger, Column, UniqueConstraint
from sqlmodel import Field, Session, SQLModel, col, select

from controller import audit
from controller.auth import Principal
from controller.db import Database
from controller.dispatch import Dispatcher
from controller.errors import ApiError, bad_request, not_found
from controller.media import MediaStore, media_ref
from controller.models import Device, Media
from controller.targets import TargetsIn, resolve
from controller.timefmt import iso
from dalaba import protocol as p

log = logging.getLogger(__name__)

RELEASE_SOURCE = "agent_release"  # Media.source of a release's bytes
RELEASE_MIME = "application/zip"
EVALUATE_EVERY_S = 2.0
_VERSION_LINE = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)


class RolloutState:
    FIRST_WAVE = "first_wave"
    SECOND_WAVE = "second_wave"
    HALTED = "halted"  # by itself (too many failures) or by an operator
    FINISHED = "finished"


# --------------------------------------------------------------------------- tables


class AgentRelease(SQLModel, table=True):
    id: str = Field(primary_key=True)
    version: str = Field(unique=True, index=True)
    min_version: str
    sha256: str
    size: int
    filename: str = ""
    notes: str = ""
    uploaded_by: str
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class UpdateRollout(SQLModel, table=True):
    id: str = Field(primary_key=True)
    release_id: str = Field(foreign_key="agentrelease.id", index=True)
    target: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    first_wave_percent: int
    halt_failure_percent: int
    self_test_s: int
    wave_timeout_s: int
    state: str
    # Why it halted, for the console to word: {"code": "first_wave_failed", "failed",
    # "of", "percent"} or {"code": "operator", "by"}.
    halt: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_by: str
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    # When the wave now under way was sent (its timeout counts from here).
    wave_sent_ms: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    finished_ms: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class UpdateTerminal(SQLModel, table=True):
    """Where one rollout stands on one terminal."""

    __table_args__ = (UniqueConstraint("rollout_id", "device_id"),)

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: str = Field(foreign_key="updaterollout.id", index=True)
    device_id: str = Field(index=True)
    wave: int  # 1 or 2
    state: str | None = None  # None: in a wave not sent yet; else a p.UpdateState value
    reason: str | None = None
    running: str | None = None  # the version it said it runs, with its last report
    updated_ms: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


# --------------------------------------------------------------------------- releases


def package_version(data: bytes) -> str:
    """The agent version inside a wheel or zip bundle (its dalaba/__init__.py), or a
    400 naming `file`: a mislabelled upload is caught here, not on 164 terminals."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            text = zf.read("dalaba/__init__.py").decode("utf-8", "replace")
            zf.getinfo("edge_agent/agent.py")
    except (zipfile.BadZipFile, KeyError, OSError):
        raise bad_request(
            "file", "not an agent wheel or bundle (no dalaba/__init__.py and edge_agent/agent.py)"
        ) from None
    found = _VERSION_LINE.search(text)
    if found is None:
        raise bad_request("file", "the package names no __version__")
    return found.group(1)


def release_view(r: AgentRelease) -> dict[str, Any]:
    return {
        "id": r.id,
        "version": r.version,
        "min_version": r.min_version,
        "sha256": r.sha256,
        "size": r.size,
        "filename": r.filename,
        "notes": r.notes,
        "uploaded_by": r.uploaded_by,
        "created_at": iso(r.created_ms),
    }


# --------------------------------------------------------------------------- reports


_ORDER = {
    p.UpdateState.OFFERED.value: 0,
    p.UpdateState.DOWNLOADING.value: 1,
    p.UpdateState.INSTALLED.value: 2,
}


def record_update_report(session: Session, device_id: str, event: p.DeviceEvent, rx: int) -> bool:
    """Store a terminal's `update_state` event on its rollout row. False when it names
    no rollout of this terminal or is not an UpdateProgress (counted by the caller)."""
    try:
        progress = p.UpdateProgress.model_validate(event.detail)
    except ValidationError:
        return False
    row = session.exec(
        select(UpdateTerminal)
        .where(UpdateTerminal.rollout_id == progress.rollout_id)
        .where(UpdateTerminal.device_id == device_id)
    ).first()
    if row is None:
        return False
    new = progress.state
    if row.state is not None and not _moves_forward(row.state, new):
        return True  # a late or repeated report: the row already knows better
    row.state = new.value
    row.reason = event.reason if new in (p.UpdateState.FAILED, p.UpdateState.ROLLED_BACK) else None
    row.running = progress.running
    row.updated_ms = rx
    session.add(row)
    return True


def _moves_forward(old: str, new: p.UpdateState) -> bool:
    if p.UpdateState(old).final:
        return False
    return new.final or _ORDER[new.value] > _ORDER[old]


# --------------------------------------------------------------------------- service


class UpdateService:
    def __init__(self, db: Database, media: MediaStore, dispatcher: Dispatcher) -> None:
        self._db = db
        self._media = media
        self._dispatcher = dispatcher
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="update-rollouts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ------------------------------------------------------------------ releases

    async def add_release(
        self,
        principal: Principal,
        data: bytes,
        *,
        version: str,
        min_version: str,
        filename: str,
        notes: str,
    ) -> dict[str, Any]:
        inside = package_version(data)
        if inside != version:
            raise bad_request("version", f"the package is version {inside}, not {version}")
        if p.version_key(min_version) > p.version_key(version):
            raise bad_request("min_version", f"above the release's own version {version}")
        media = await self._media.put(
            data, mime=RELEASE_MIME, duration_ms=0, source=RELEASE_SOURCE, text=filename
        )

        def store(session: Session) -> dict[str, Any]:
            if session.exec(select(AgentRelease).where(AgentRelease.version == version)).first():
                raise ApiError(409, "release_exists", f"version {version} is already uploaded")
            release = AgentRelease(
                id=uuid.uuid4().hex[:16],
                version=version,
                min_version=min_version,
                sha256=media.sha256,
                size=media.size,
                filename=filename,
                notes=notes,
                uploaded_by=principal.user,
                created_ms=p.now_ms(),
            )
            session.add(release)
            audit.record(
                session,
                principal,
                "update.release",
                release.id,
                version=version,
                sha256=media.sha256,
            )
            return release_view(release)

        return await self._db.run(store)

    async def releases(self) -> list[dict[str, Any]]:
        def load(session: Session) -> list[dict[str, Any]]:
            rows = session.exec(select(AgentRelease).order_by(col(AgentRelease.created_ms).desc()))
            return [release_view(r) for r in rows]

        return await self._db.run(load)

    # ------------------------------------------------------------------ rollouts

    async def create_rollout(
        self,
        principal: Principal,
        *,
        release_id: str,
        targets: TargetsIn,
        first_wave_percent: int,
        halt_failure_percent: int,
        self_test_s: int,
        wave_timeout_s: int,
    ) -> dict[str, Any]:
        def create(session: Session) -> str:
            release = session.get(AgentRelease, release_id)
            if release is None:
                raise bad_request("release_id", f"unknown release {release_id!r}")
            resolved = resolve(session, targets, principal)
            if not resolved.device_ids:
                raise bad_request("targets", "no terminal there")
            rollout = UpdateRollout(
                id=uuid.uuid4().hex[:16],
                release_id=release.id,
                target=resolved.target.model_dump(mode="json"),
                first_wave_percent=first_wave_percent,
                halt_failure_percent=halt_failure_percent,
                self_test_s=self_test_s,
                wave_timeout_s=wave_timeout_s,
                state=RolloutState.FIRST_WAVE,
                created_by=principal.user,
                created_ms=p.now_ms(),
            )
            session.add(rollout)
            first = first_wave(rollout.id, resolved.device_ids, first_wave_percent)
            for device_id in resolved.device_ids:
                session.add(
                    UpdateTerminal(
                        rollout_id=rollout.id,
                        device_id=device_id,
                        wave=1 if device_id in first else 2,
                    )
                )
            audit.record(
                session,
                principal,
                "update.rollout",
                rollout.id,
                version=release.version,
                terminals=len(resolved.device_ids),
                first_wave=len(first),
            )
            return rollout.id

        async with self._lock:
            rollout_id = await self._db.run(create)
            await self._send_wave(rollout_id, 1)
        return await self.rollout(rollout_id)

    async def halt(self, principal: Principal, rollout_id: str) -> dict[str, Any]:
        def halt(session: Session) -> None:
            rollout = _rollout_or_404(session, rollout_id)
            if rollout.state in (RolloutState.FINISHED, RolloutState.HALTED):
                return
            rollout.state = RolloutState.HALTED
            rollout.halt = {"code": "operator", "by": principal.user}
            session.add(rollout)
            audit.record(session, principal, "update.halt", rollout_id)

        async with self._lock:
            await self._db.run(halt)
        return await self.rollout(rollout_id)

    async def resume(self, principal: Principal, rollout_id: str) -> dict[str, Any]:
        """Send the rest of a halted rollout (the operator looked and decided)."""

        def resume(session: Session) -> bool:
            rollout = _rollout_or_404(session, rollout_id)
            if rollout.state != RolloutState.HALTED:
                raise ApiError(409, "not_halted", f"rollout {rollout_id} is {rollout.state}")
            waiting = session.exec(
                select(UpdateTerminal)
                .where(UpdateTerminal.rollout_id == rollout_id)
                .where(col(UpdateTerminal.state).is_(None))
            ).first()
            audit.record(session, principal, "update.resume", rollout_id)
            if waiting is None:
                rollout.state = RolloutState.FINISHED
                rollout.finished_ms = p.now_ms()
            else:
                rollout.state = RolloutState.SECOND_WAVE
            rollout.halt = None
            session.add(rollout)
            return waiting is not None

        async with self._lock:
            if await self._db.run(resume):
                await self._send_wave(rollout_id, 2)
        return await self.rollout(rollout_id)

    async def _send_wave(self, rollout_id: str, wave: int) -> None:
        def prepare(session: Session) -> tuple[p.Command, tuple[str, ...]]:
            rollout = _rollout_or_404(session, rollout_id)
            release = session.get(AgentRelease, rollout.release_id)
            media = session.get(Media, release.sha256) if release is not None else None
            assert release is not None and media is not None
            rows = session.exec(
                select(UpdateTerminal)
                .where(UpdateTerminal.rollout_id == rollout_id)
                .where(UpdateTerminal.wave == wave)
            ).all()
            now = p.now_ms()
            for row in rows:
                row.state = p.UpdateState.OFFERED.value
                row.updated_ms = now
                session.add(row)
            rollout.wave_sent_ms = now
            session.add(rollout)
            devices = tuple(sorted(r.device_id for r in rows))
            body = p.UpdateBody(
                rollout_id=rollout.id,
                release_id=release.id,
                version=release.version,
                min_version=release.min_version,
                package=media_ref(media),
                self_test_s=rollout.self_test_s,
            )
            # Expires with the wave: a terminal that gets it later must not install a
            # release its rollout has already given up on.
            command = p.Command.new(
                body, p.Target(devices=devices), expires_at=now + rollout.wave_timeout_s * 1000
            )
            return command, devices

        command, devices = await self._db.run(prepare)
        if devices:
            topics = tuple(p.Topics.command_device(d) for d in devices)
            await self._dispatcher.send(command, topics)
        log.info("rollout %s: wave %d offered to %d terminals", rollout_id, wave, len(devices))

    # ------------------------------------------------------------------ waves

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(EVALUATE_EVERY_S)
            try:
                await self.evaluate()
            except Exception:
                log.exception("evaluating rollouts failed")

    async def evaluate(self, now: int | None = None) -> None:
        """Move each rollout on: second wave, halt, or finished."""
        at = now if now is not None else p.now_ms()

        def decide(session: Session) -> list[str]:
            to_send = []
            active = session.exec(
                select(UpdateRollout).where(
                    col(UpdateRollout.state).in_(
                        [RolloutState.FIRST_WAVE, RolloutState.SECOND_WAVE]
                    )
                )
            ).all()
            for rollout in active:
                wave = 1 if rollout.state == RolloutState.FIRST_WAVE else 2
                rows = session.exec(
                    select(UpdateTerminal)
                    .where(UpdateTerminal.rollout_id == rollout.id)
                    .where(UpdateTerminal.wave == wave)
                ).all()
                timed_out = (
                    rollout.wave_sent_ms is not None
                    and at - rollout.wave_sent_ms >= rollout.wave_timeout_s * 1000
                )
                settled = [r for r in rows if r.state and p.UpdateState(r.state).final]
                if len(settled) < len(rows) and not timed_out:
                    continue
                if wave == 2:
                    rollout.state = RolloutState.FINISHED
                    rollout.finished_ms = at
                    session.add(rollout)
                    continue
                bad = sum(1 for r in rows if r.state != p.UpdateState.DONE.value)
                share = 100 * bad / max(1, len(rows))
                if share >= rollout.halt_failure_percent:
                    rollout.state = RolloutState.HALTED
                    rollout.halt = {
                        "code": "first_wave_failed",
                        "failed": bad,
                        "of": len(rows),
                        "percent": rollout.halt_failure_percent,
                    }
                    audit.record(session, "system", "update.halted", rollout.id, failed=bad)
                elif _second_wave(session, rollout.id):
                    rollout.state = RolloutState.SECOND_WAVE
                    to_send.append(rollout.id)
                else:
                    rollout.state = RolloutState.FINISHED
                    rollout.finished_ms = at
                session.add(rollout)
            return to_send

        async with self._lock:
            for rollout_id in await self._db.run(decide):
                await self._send_wave(rollout_id, 2)

    # ------------------------------------------------------------------ views

    async def rollouts(self) -> list[dict[str, Any]]:
        def load(session: Session) -> list[dict[str, Any]]:
            rows = session.exec(
                select(UpdateRollout).order_by(col(UpdateRollout.created_ms).desc()).limit(200)
            ).all()
            return [_rollout_view(session, r, terminals=False) for r in rows]

        return await self._db.run(load)

    async def rollout(self, rollout_id: str) -> dict[str, Any]:
        def load(session: Session) -> dict[str, Any]:
            return _rollout_view(session, _rollout_or_404(session, rollout_id), terminals=True)

        return await self._db.run(load)


def halt_reason(halt: dict[str, Any] | None) -> str | None:
    """The halt in words, for the API and the log (the console words `halt` itself)."""
    if not halt:
        return None
    if halt.get("code") == "operator":
        return f"halted by {halt.get('by')}"
    return (
        f"{halt.get('failed')} of {halt.get('of')} terminals of the first wave failed, rolled "
        f"back or did not answer (halt at {halt.get('percent')}%)"
    )


def first_wave(rollout_id: str, device_ids: tuple[str, ...], percent: int) -> set[str]:
    """`percent` of the terminals (at least one), chosen by a hash so the first wave is
    spread over the county, not the first township in alphabetical order."""
    count = max(1, math.ceil(len(device_ids) * percent / 100))

    def spread(device_id: str) -> str:
        return hashlib.sha256(f"{rollout_id}/{device_id}".encode()).hexdigest()

    return set(sorted(device_ids, key=spread)[:count])


def _second_wave(session: Session, rollout_id: str) -> list[UpdateTerminal]:
    return list(
        session.exec(
            select(UpdateTerminal)
            .where(UpdateTerminal.rollout_id == rollout_id)
            .where(UpdateTerminal.wave == 2)
        ).all()
    )


def _rollout_or_404(session: Session, rollout_id: str) -> UpdateRollout:
    rollout = session.get(UpdateRollout, rollout_id)
    if rollout is None:
        raise not_found(f"rollout {rollout_id}")
    return rollout


def _rollout_view(session: Session, r: UpdateRollout, *, terminals: bool) -> dict[str, Any]:
    release = session.get(AgentRelease, r.release_id)
    rows = session.exec(select(UpdateTerminal).where(UpdateTerminal.rollout_id == r.id)).all()
    counts: dict[str, int] = {}
    for row in rows:
        key = row.state or "waiting"
        counts[key] = counts.get(key, 0) + 1
    view: dict[str, Any] = {
        "id": r.id,
        "release_id": r.release_id,
        "version": release.version if release is not None else "",
        "target": r.target,
        "state": r.state,
        "halt": r.halt,
        "halt_reason": halt_reason(r.halt),
        "first_wave_percent": r.first_wave_percent,
        "halt_failure_percent": r.halt_failure_percent,
        "self_test_s": r.self_test_s,
        "wave_timeout_s": r.wave_timeout_s,
        "created_by": r.created_by,
        "created_at": iso(r.created_ms),
        "finished_at": iso(r.finished_ms),
        "counts": counts,
    }
    if terminals:
        places = {
            d.id: d
            for d in session.exec(
                select(Device).where(col(Device.id).in_([row.device_id for row in rows]))
            )
        }
        view["terminals"] = [
            {
                "device_id": row.device_id,
                "village_id": places[row.device_id].village_id if row.device_id in places else None,
                "wave": row.wave,
                "state": row.state or "waiting",
                "reason": row.reason,
                "running": row.running,
                "updated_at": iso(row.updated_ms),
            }
            for row in sorted(rows, key=lambda x: (x.wave, x.device_id))
        ]
    return view
