"""Enrolling a terminal with a one-time code, and revoking a lost one.

A technician asks the console (or `dalaba provision`) for a code for one terminal: ten
characters from an alphabet without look-alikes (about 50 bits), valid for
`ENROL_CODE_TTL_S`. Only its SHA-256 is stored: the code is shown once. The board
presents it once (`dalaba agent-enrol`, POST /api/enrol over HTTPS): the code is marked
used in the same transaction that finds it, so two presentations cannot both win, and a
used or expired code is refused like a wrong one. Wrong codes are counted per client
address with the login's own backoff (controller/sessions.py), so guessing is as slow
as guessing a password.

The answer carries what the board needs and nothing more: its device id and place, a
new broker password (set on the broker at once; any earlier one stops working), the
controller's public keys and the URLs. Revoking disables the broker account at once
(the broker drops the session: see `BrokerAccounts`) and voids the terminal's unused
codes; the terminal can come back only through a new code.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import BigInteger, Column
from sqlmodel import Field, Session, SQLModel, select

from controller.db import Database
from controller.errors import ApiError
from controller.models import AuditEntry, Device
from controller.sessions import SessionStore, client_key
from dalaba.protocol import now_ms

ENROL_CODE_TTL_S = 24 * 3600
CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: read off a phone
CODE_LENGTH = 10


class EnrolmentCode(SQLModel, table=True):
    code_sha256: str = Field(primary_key=True)
    device_id: str = Field(foreign_key="device.id", index=True)
    created_by: str
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    used_ms: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    used_from: str | None = None  # the client address that presented it


class TerminalRevocation(SQLModel, table=True):
    """A terminal whose broker account was disabled (a lost or stolen board)."""

    device_id: str = Field(foreign_key="device.id", primary_key=True)
    revoked_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    revoked_by: str


class BrokerAccounts(Protocol):
    """Who may log in to the broker, changed while it runs (dalaba_ops/broker_accounts.py
    writes Mosquitto's password and ACL files and makes it reload them)."""

    async def set_password(
        self, device_id: str, village_id: str, township_id: str, password: str
    ) -> None: ...

    async def disable(self, device_id: str) -> None:
        """Remove the account and drop its session now."""
        ...


@dataclass(frozen=True)
class IssuedCode:
    code: str
    device_id: str
    expires_ms: int


@dataclass(frozen=True)
class Enrolled:
    device_id: str
    village_id: str
    township_id: str
    mqtt_password: str


def normalise_code(text: str) -> str:
    """What was typed, as stored: dashes and spaces dropped, upper case."""
    return "".join(ch for ch in text.upper() if ch not in "- ")


def code_digest(code: str) -> str:
    return hashlib.sha256(normalise_code(code).encode()).hexdigest()


def _new_code() -> str:
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return f"{raw[:5]}-{raw[5:]}"


def _wrong_code() -> ApiError:
    # One answer for unknown, used and expired: a guesser learns nothing from it.
    return ApiError(403, "enrol_code_invalid", "code: unknown, used or expired", "code")


class EnrolmentService:
    def __init__(
        self, db: Database, sessions: SessionStore, accounts: BrokerAccounts | None
    ) -> None:
        self._db = db
        self._sessions = sessions
        self._accounts = accounts

    @property
    def available(self) -> bool:
        return self._accounts is not None

    def _require_accounts(self) -> BrokerAccounts:
        if self._accounts is None:
            raise ApiError(
                409,
                "enrol_unavailable",
                "this controller does not manage the broker's accounts (see "
                "docs/operations.md, enrolment): provision terminals with `dalaba provision`",
            )
        return self._accounts

    async def issue_code(
        self, device_id: str, by: str, ttl_s: int = ENROL_CODE_TTL_S
    ) -> IssuedCode:
        self._require_accounts()
        return await self._db.run(lambda s: store_new_code(s, device_id, by, ttl_s))

    async def enrol(self, code: str, client: str | None) -> Enrolled:
        accounts = self._require_accounts()
        where = client_key(client)
        key = "enrol:" + await self._sessions.name_key("\x00enrol")
        now = now_ms()
        digest = code_digest(code)

        def claim(session: Session) -> Enrolled | None:
            row = session.get(EnrolmentCode, digest)
            if row is None or row.used_ms is not None or row.expires_ms <= now:
                return None
            row.used_ms, row.used_from = now, where
            session.add(row)
            device = session.get(Device, row.device_id)
            assert device is not None
            revoked = session.get(TerminalRevocation, device.id)
            if revoked is not None:
                session.delete(revoked)  # an admin issued a new code: it may come back
            session.add(
                _audit(
                    now, f"terminal:{device.id}", "terminal.enrolled", device.id, {"client": where}
                )
            )
            return Enrolled(device.id, device.village_id, device.township_id, "")

        blocked_until = await self._sessions.blocked_until(key, where)
        if blocked_until is not None:
            wait = max(1, -(-(blocked_until - now) // 1000))
            raise ApiError(
                429,
                "enrol_backoff",
                f"code: too many wrong codes from your address; try again in {wait} s",
                "code",
            )
        claimed = await self._db.run(claim)
        if claimed is None:
            await self._sessions.count_failure(key, where, "anonymous", "enrol_code_invalid")
            raise _wrong_code()
        password = secrets.token_urlsafe(18)
        await accounts.set_password(
            claimed.device_id, claimed.village_id, claimed.township_id, password
        )
        return Enrolled(claimed.device_id, claimed.village_id, claimed.township_id, password)

    async def revoke(self, device_id: str, by: str) -> int:
        accounts = self._require_accounts()
        now = now_ms()

        def mark(session: Session) -> None:
            _void_unused_codes(session, device_id)
            if session.get(TerminalRevocation, device_id) is None:
                session.add(TerminalRevocation(device_id=device_id, revoked_ms=now, revoked_by=by))
            session.add(_audit(now, by, "terminal.revoked", device_id, {}))

        await self._db.run(mark)
        await accounts.disable(device_id)
        return now


def store_new_code(
    session: Session, device_id: str, by: str, ttl_s: int = ENROL_CODE_TTL_S
) -> IssuedCode:
    """A new code for `device_id`, voiding its unused ones (the console's path, and
    `dalaba provision --enrol-codes` on the controller's machine)."""
    _void_unused_codes(session, device_id)  # one live code per terminal
    code, now = _new_code(), now_ms()
    session.add(
        EnrolmentCode(
            code_sha256=code_digest(code),
            device_id=device_id,
            created_by=by,
            created_ms=now,
            expires_ms=now + ttl_s * 1000,
        )
    )
    session.add(_audit(now, by, "terminal.enrol_code", device_id, {"ttl_s": ttl_s}))
    return IssuedCode(code, device_id, now + ttl_s * 1000)


def _void_unused_codes(session: Session, device_id: str) -> None:
    """Delete the terminal's codes not yet presented (404 if there is no such terminal)."""
    if session.get(Device, device_id) is None:
        raise ApiError(404, "not_found", f"device_id: no terminal {device_id}", "device_id")
    unused = select(EnrolmentCode).where(
        EnrolmentCode.device_id == device_id,
        EnrolmentCode.used_ms == None,  # noqa: E711
    )
    for code in session.exec(unused):
        session.delete(code)


def _audit(
    now: int, actor: str, action: str, device_id: str, detail: dict[str, object]
) -> AuditEntry:
    return AuditEntry(
        at_ms=now,
        actor=actor,
        role="system",
        action=action,
        detail={"device_id": device_id, **detail},
    )
