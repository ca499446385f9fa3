"""`Idempotency-Key` on the POSTs that create or send: a client that retries (a timeout
on a flaky county line, a double click) gets the first answer again, and nothing is sent
twice.

The key is the caller's: the same key from another user is another key. The first
request with a key claims it in the database (a row, so several controller replicas
agree); its answer is stored and replayed, status and body, to every retry with the same
key and the same request for 24 hours (`Idempotent-Replayed: true` marks a replay). The
same key with a different request is a 422 naming `Idempotency-Key`. A retry that
arrives while the first is still running waits for its answer on this replica (another
replica's is answered 409, retry later): never a second send.

Only what the first request did is remembered. A refusal (a 4xx, or a 503 "try later":
nothing was created or sent) releases the key, so the retry really tries again. A request
that died midway (the controller stopped, any other 5xx) may or may not have sent: its
key answers 409 `idempotency_key_unfinished` until it expires, and a person looks before
sending again with a new key.

Applied by route (`IDEMPOTENT_ROUTES`) in one middleware, so handlers, including those
of other modules (approvals), need not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import ValidationError
from sqlalchemy import BigInteger, Column, LargeBinary
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, delete

from controller.auth import PRINCIPAL
from controller.db import Database
from controller.errors import ApiError
from dalaba.protocol import now_ms

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
TTL_MS = 24 * 3600 * 1000
MAX_KEY_CHARS = 255
MAX_BODY_BYTES = 1024 * 1024  # the bodies of these routes are small JSON
WAIT_S = 60.0  # a first request renders speech and publishes; its twin waits this long
PURGE_EVERY_S = 600.0

# (method, route path as registered). Every POST that creates or sends something.
IDEMPOTENT_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "/api/broadcasts"),
        ("POST", "/api/workorders/{id}/notes"),
        ("POST", "/api/broadcasts/{id}/cancel"),
        ("POST", "/api/broadcasts/{id}/resend"),
        ("POST", "/api/approvals/{id}/approve"),
        ("POST", "/api/approvals/{id}/reject"),
        ("POST", "/api/schedules"),
        ("POST", "/api/devices/{id}/test-tone"),
        ("POST", "/api/devices/{id}/volume"),
        ("POST", "/api/templates"),
        ("POST", "/api/templates/preposition"),
        ("POST", "/api/groups"),
        ("POST", "/api/users"),
    }
)

PENDING, DONE, UNFINISHED = "pending", "done", "unfinished"


class IdempotencyRecord(SQLModel, table=True):
    """The first answer to a key (table created by migration 0003)."""

    __tablename__ = "idempotency_key"

    # sha256 of (user, key): bounded length whatever the client sends.
    id: str = Field(primary_key=True, max_length=64)
    user: str
    fingerprint: str  # sha256 of method, path and the canonical body
    method: str
    path: str
    state: str = PENDING  # pending | done | unfinished
    status: int | None = None
    content_type: str = ""
    location: str | None = None
    body: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))


@dataclass(frozen=True)
class Claim:
    """What the database says about a key: `owner` (this request runs), or the stored
    record of an earlier one."""

    owner: bool
    record: IdempotencyRecord | None = None


def record_id(user: str, key: str) -> str:
    return hashlib.sha256(f"{user}\0{key}".encode()).hexdigest()


def fingerprint(method: str, path_qs: str, raw: bytes) -> str:
    """The request, with a JSON body compared by content (key order and spacing do not
    make a retry a different request)."""
    try:
        body = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError):
        body = raw
    return hashlib.sha256(b"%s %s\n%s" % (method.encode(), path_qs.encode(), body)).hexdigest()


class IdempotencyStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._last_purge = 0.0

    async def claim(self, rid: str, user: str, fp: str, method: str, path: str) -> Claim:
        now = now_ms()
        if time.monotonic() - self._last_purge > PURGE_EVERY_S:
            self._last_purge = time.monotonic()
            await self._db.run(lambda s: _purge(s, now))

        def attempt(session: Session) -> Claim:
            row = session.get(IdempotencyRecord, rid)
            if row is not None and row.expires_ms <= now:
                session.delete(row)
                session.flush()
                row = None
            if row is not None:
                session.expunge(row)
                return Claim(owner=False, record=row)
            session.add(
                IdempotencyRecord(
                    id=rid,
                    user=user,
                    fingerprint=fp,
                    method=method,
                    path=path,
                    created_ms=now,
                    expires_ms=now + TTL_MS,
                )
            )
            session.flush()
            return Claim(owner=True)

        try:
            return await self._db.run(attempt)
        except IntegrityError:
            # Another replica inserted the same key between our read and our insert.
            return await self._db.run(attempt)

    async def finish(self, rid: str, response: web.Response) -> None:
        body = response.body
        assert isinstance(body, bytes | bytearray | None)

        def store(session: Session) -> None:
            row = session.get(IdempotencyRecord, rid)
            if row is None:
                return
            row.state = DONE
            row.status = response.status
            row.content_type = response.headers.get("Content-Type", "application/json")
            row.location = response.headers.get("Location")
            row.body = bytes(body or b"")

        await self._db.run(store)

    async def release(self, rid: str) -> None:
        await self._db.run(lambda s: _delete(s, rid))

    async def mark_unfinished(self, rid: str) -> None:
        def mark(session: Session) -> None:
            row = session.get(IdempotencyRecord, rid)
            if row is not None:
                row.state = UNFINISHED

        await self._db.run(mark)

    def running(self, rid: str) -> asyncio.Future[None] | None:
        return self._inflight.get(rid)

    def begin(self, rid: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[rid] = future
        return future

    def end(self, rid: str, future: asyncio.Future[None]) -> None:
        self._inflight.pop(rid, None)
        if not future.done():
            future.set_result(None)


def _delete(session: Session, rid: str) -> None:
    row = session.get(IdempotencyRecord, rid)
    if row is not None:
        session.delete(row)


def _purge(session: Session, now: int) -> None:
    session.exec(delete(IdempotencyRecord).where(col(IdempotencyRecord.expires_ms) <= now))  # type: ignore[call-overload]


def _replay(record: IdempotencyRecord) -> web.Response:
    headers = {
        REPLAYED_HEADER: "true",
        "Content-Type": record.content_type or "application/json",
    }
    if record.location:
        headers["Location"] = record.location
    return web.Response(body=record.body or b"", status=record.status or 200, headers=headers)


def _check_key(raw: str) -> str:
    if not 1 <= len(raw) <= MAX_KEY_CHARS or not all(33 <= ord(c) <= 126 for c in raw):
        raise ApiError(
            400,
            "invalid",
            f"{HEADER}: 1-{MAX_KEY_CHARS} visible ASCII characters (a UUID is ideal)",
            HEADER,
        )
    return raw


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"body: larger than {MAX_BODY_BYTES} bytes", "body")
    # Read once here; the handler's read_json gets the same bytes from aiohttp's cache.
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"body: larger than {MAX_BODY_BYTES} bytes", "body")
    return raw


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def idempotency_middleware(store: IdempotencyStore) -> Callable[..., Awaitable[Any]]:
    """Must run after authentication (the key belongs to the caller)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        raw_key = request.headers.get(HEADER)
        route = request.match_info.route
        path = route.resource.canonical if route.resource is not None else None
        principal = request.get(PRINCIPAL)
        if raw_key is None or principal is None or (request.method, path) not in IDEMPOTENT_ROUTES:
            return await handler(request)
        assert path is not None
        rid = record_id(principal.user, _check_key(raw_key))
        fp = fingerprint(request.method, request.path_qs, await _read_body(request))
        deadline = time.monotonic() + WAIT_S
        while True:
            running = store.running(rid)
            if running is not None:
                # A twin on this replica is claiming the key or running: wait for it to
                # end, then look again (its answer, or the key released by a refusal).
                # Checked before claiming: the database tells two local twins apart by
                # commit order, and the loser could otherwise resume first and find no
                # local twin to wait for (a CI run answered such a twin 409).
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _in_flight()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(running), remaining)
                continue
            mine = store.begin(rid)
            try:
                claim = await store.claim(rid, principal.user, fp, request.method, request.path)
            except BaseException:
                store.end(rid, mine)
                raise
            if claim.owner:
                return await _first(request, handler, store, rid, mine)
            store.end(rid, mine)
            record = claim.record
            assert record is not None
            if record.fingerprint != fp:
                raise ApiError(
                    422,
                    "idempotency_key_reused",
                    f"{HEADER}: already used for a different request "
                    f"({record.method} {record.path}); use a new key for a new request",
                    HEADER,
                )
            if record.state == DONE:
                log.info(
                    "idempotent replay of %s %s for %s", record.method, record.path, principal.user
                )
                return _replay(record)
            if record.state == UNFINISHED:
                raise ApiError(
                    409,
                    "idempotency_key_unfinished",
                    f"{HEADER}: the first request with this key stopped midway and may "
                    "have been carried out; check before sending again with a new key",
                    HEADER,
                )
            # Pending, and not on this replica: another replica runs it.
            raise _in_flight()

    return middleware


def _in_flight() -> ApiError:
    return ApiError(
        409,
        "idempotency_key_in_flight",
        f"{HEADER}: the first request with this key is still running; "
        "retry in a moment to get its answer",
        HEADER,
    )


async def _first(
    request: web.Request,
    handler: Handler,
    store: IdempotencyStore,
    rid: str,
    future: asyncio.Future[None],
) -> web.StreamResponse:
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            # A 2xx raised as an exception (the two-person rule's 202) is an answer.
            if exc.status < 400:
                await store.finish(rid, exc)
            else:
                await store.release(rid)
            raise
        except ValidationError:
            await store.release(rid)  # a 400: refused before anything was done
            raise
        except ApiError as exc:
            # Refused (4xx, or 503: try again later) before anything was done; any other
            # 5xx may come after the sending (an answer that failed to be written).
            if exc.status < 500 or exc.status == 503:
                await store.release(rid)
            else:
                await store.mark_unfinished(rid)
            raise
        except BaseException:
            await asyncio.shield(store.mark_unfinished(rid))
            raise
        if isinstance(response, web.Response) and response.status < 400:
            await store.finish(rid, response)
        elif response.status >= 400:
            await store.release(rid)
        else:
            await store.mark_unfinished(rid)  # a stream cannot be replayed
        return response
    finally:
        store.end(rid, future)
