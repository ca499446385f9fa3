"""Console logins: argon2 password hashes, a password policy, server-side sessions behind
an HttpOnly cookie, a per-session CSRF token, and a log-in defence that an attacker
cannot turn against the officers.

The cookie holds 256 random bits; only their sha256 is stored, so a copy of the
database does not let anyone log in. The CSRF token is not a secret from the logged-in
browser (it reads it from /api/session); it proves a state-changing request came from
script running on the console's own origin, which a cross-site form cannot do.

Failed logins are counted per (user name, client address), never per name alone: after
`login_free_failures` in a row, that address waits before its next try for that name,
1 s doubling up to `login_backoff_max_s`, while the duty room's address logs in as usual.
(A plain per-name lock let anyone lock out the second officer during a flood.) An admin
clears it (`POST /api/users/{name}/unlock`). What is typed into the name box is sometimes
a password, so a name that is no user is kept only as a keyed hash, in the audit log and
in the failure counts alike.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import BigInteger, Column
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, delete, select

from controller.auth import Principal, Role
from controller.db import Database
from controller.errors import ApiError, bad_request, json_response
from controller.models import AuditEntry, Township, User
from controller.settings import Settings
from dalaba.protocol import now_ms

log = logging.getLogger(__name__)

MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 256
MAX_NAME_CHARS = 64
# Shipped with the code, read once, never fetched: the 20,000 most common passwords
# (see the file's header for where they come from).
COMMON_PASSWORDS_FILE = Path(__file__).resolve().parent / "data" / "common-passwords.txt"
# "password2024!", "!!qwerty12": a common password with a few digits or signs around it.
_DECORATED = re.compile(r"^[\W\d_]{0,6}(?P<core>.*?)[\W\d_]{0,6}$")

_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs the same time
# as a wrong password and does not reveal which names exist.
_DUMMY_HASH = _hasher.hash("dalaba-no-such-user")
_NAME_KEY_SECRET = "login-names"


class ConsoleSession(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True, index=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    csrf_token: str
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    user_agent: str = ""


class LoginFailure(SQLModel, table=True):
    """Failed logins in a row for one user name from one client address (an IPv6
    client by its /64: one host has a whole /64 to hop around in)."""

    name_key: str = Field(primary_key=True)  # `SessionStore.name_key(name)`, never the name
    client: str = Field(primary_key=True)
    failures: int = 0
    last_failure_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    blocked_until_ms: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    refused: int = 0  # tries turned away unchecked while blocked


class ServerSecret(SQLModel, table=True):
    """Random keys the controller makes for itself, in the database so that every
    replica uses the same."""

    name: str = Field(primary_key=True)
    value: str


# --------------------------------------------------------------------------- passwords


@functools.cache
def common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(
        line.strip().casefold() for line in lines if line.strip() and not line.startswith("#")
    )


def _is_common(lowered: str) -> bool:
    common = common_passwords()
    if lowered in common:
        return True
    match = _DECORATED.match(lowered)
    core = match.group("core") if match else ""
    return len(core) >= 4 and core in common


def check_password(password: str, field: str = "password", user_name: str | None = None) -> None:
    """The password policy; a 400 naming `field` and the reason (its own error code, so
    the console can say it in the user's language)."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise bad_request(field, f"at least {MIN_PASSWORD_CHARS} characters", "password_too_short")
    if len(password) > MAX_PASSWORD_CHARS:
        raise bad_request(field, f"at most {MAX_PASSWORD_CHARS} characters", "password_too_long")
    lowered = password.casefold()
    name = (user_name or "").strip().casefold()
    # A one- or two-letter name would forbid half the dictionary and protect nothing.
    if len(name) >= 3 and name in lowered:
        raise bad_request(field, "must not contain the user name", "password_contains_name")
    if _is_common(lowered):
        raise bad_request(
            field,
            "is one of the most common passwords (attackers try these first)",
            "password_common",
        )
    if len(set(lowered)) < 4:
        raise bad_request(field, "uses fewer than 4 different characters", "password_too_simple")


def hash_password(password: str, user_name: str | None = None, field: str = "password") -> str:
    check_password(password, field, user_name)
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --------------------------------------------------------------------------- clients


def client_key(address: str | None) -> str:
    """The address failures are counted against: IPv4 as it is, IPv6 by its /64."""
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def backoff_s(settings: Settings, failures: int) -> float:
    """How long an address waits after `failures` wrong passwords in a row."""
    beyond = failures - settings.login_free_failures
    if beyond < 0:
        return 0.0
    return min(settings.login_backoff_base_s * 2 ** min(beyond, 40), settings.login_backoff_max_s)


class LoginRefused(ApiError):
    """A refused or failed login; says when the next try from this address will be
    checked (`retry_after_s`, and `Retry-After` on a 429)."""

    def __init__(
        self, status: int, code: str, message: str, field: str, retry_after_s: int | None
    ) -> None:
        super().__init__(status, code, message, field)
        self.retry_after_s = retry_after_s

    def response(self) -> web.Response:
        body = json.loads(super().response().text or "{}")
        headers = {}
        if self.retry_after_s:
            body["error"]["retry_after_s"] = self.retry_after_s
            if self.status == 429:
                headers["Retry-After"] = str(self.retry_after_s)
        return json_response(body, status=self.status, headers=headers)


def _wait_s(until_ms: int) -> int:
    return max(1, -(-(until_ms - now_ms()) // 1000))


def _backoff(until_ms: int) -> LoginRefused:
    wait = _wait_s(until_ms)
    return LoginRefused(
        429,
        "login_backoff",
        f"name: too many failed logins for this name from your address; try again in {wait} s "
        "(other addresses are not affected; an admin can clear it)",
        "name",
        wait,
    )


def _wrong(until_ms: int) -> LoginRefused:
    wait = _wait_s(until_ms) if until_ms > now_ms() else None
    return LoginRefused(401, "invalid_credentials", "name or password is wrong", "password", wait)


# --------------------------------------------------------------------------- audit

# Detail keys only an admin reads: where a login came from, what browser.
_PRIVATE_DETAIL = frozenset({"client", "clients", "user_agent"})


def redact_audit_entry(entry: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """An audit entry (`{"actor", "role", "detail", ...}`) as `principal` may read it:
    an admin in full; anyone else without client addresses, and without the name
    typed at a login that nobody is logged in as (written already hashed if it is no
    user's, see `SessionStore.login`)."""
    if principal.role is Role.ADMIN:
        return entry
    detail = entry.get("detail")
    redacted = dict(entry)
    if isinstance(detail, dict):
        redacted["detail"] = {k: v for k, v in detail.items() if k not in _PRIVATE_DETAIL}
    if entry.get("role") == "anonymous":
        redacted["actor"] = "—"
    return redacted


@dataclass(frozen=True)
class Backoff:
    """One address slowed down for one user name."""

    client: str
    failures: int  # in a row
    refused: int  # tries turned away unchecked while it waited
    last_failure_ms: int
    blocked_until_ms: int | None  # None: the wait is over, the count is not


@dataclass(frozen=True)
class LoggedIn:
    cookie: str  # shown to the browser once, in Set-Cookie
    csrf_token: str
    principal: Principal
    expires_ms: int


def _audit(
    session: Session, actor: str, role: str, action: str, target: str = "", **detail: object
) -> None:
    session.add(
        AuditEntry(
            at_ms=now_ms(),
            actor=actor,
            role=role,
            action=action,
            target=target,
            detail=dict(detail),
        )
    )


class SessionStore:
    CACHE_S = 5.0  # a disabled user's open sessions stop working within this long

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._settings = settings
        self._cache: dict[str, tuple[float, tuple[Principal, str] | None]] = {}
        self._name_secret: bytes | None = None

    # ------------------------------------------------------------------ names

    async def name_key(self, name: str) -> str:
        """A keyed hash of a user name: the same on every replica, and useless for
        guessing what was typed without the key (kept in the database, not the log)."""
        if self._name_secret is None:
            try:
                self._name_secret = await self._db.run(_load_or_make_secret)
            except IntegrityError:  # another replica made it at the same moment
                self._name_secret = await self._db.run(_load_or_make_secret)
        return hmac.new(self._name_secret, name.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def audit_name(name: str, key: str, user: User | None) -> str:
        """A failed login's name as the audit log keeps it: a user's name as it is,
        anything else (perhaps a password typed in the wrong box) only as a hash."""
        return name if user is not None else f"unknown#{key[:12]}"

    # ------------------------------------------------------------------ login

    async def login(
        self, name: str, password: str, user_agent: str = "", client: str | None = None
    ) -> LoggedIn:
        name = name.strip()
        if not name or len(name) > MAX_NAME_CHARS:
            raise bad_request("name", f"1 to {MAX_NAME_CHARS} characters")
        where = client_key(client)
        key = await self.name_key(name)

        def load(session: Session) -> tuple[User | None, int | None]:
            row = session.get(LoginFailure, (key, where))
            if row is not None and row.blocked_until_ms > now_ms():
                # Counted, not audited one by one: a script hammering away would fill
                # the log; the failure that set the wait is audited.
                row.refused += 1
                session.add(row)
                return None, row.blocked_until_ms
            return session.exec(select(User).where(User.name == name)).first(), None

        user, blocked_until = await self._db.run(load)
        if blocked_until is not None:
            raise _backoff(blocked_until)
        # argon2 is deliberately slow and memory-hard: keep it off the event loop and
        # off the single database thread.
        ok = await asyncio.to_thread(
            verify_password, user.password_hash if user else None, password
        )
        if ok and user is not None and not user.disabled:
            return await self._db.run(lambda s: self._open(s, user, user_agent, key, where))
        reason = "disabled" if user is not None and user.disabled and ok else "bad_password"
        until = await self._count_failure(key, where, self.audit_name(name, key, user), reason)
        raise _wrong(until)

    async def blocked_until(self, key: str, where: str) -> int | None:
        """Until when `where` waits after failures counted under `key` (None: it may
        try now); a try turned away is counted. Shared with enrolment codes."""

        def load(session: Session) -> int | None:
            row = session.get(LoginFailure, (key, where))
            if row is None or row.blocked_until_ms <= now_ms():
                return None
            row.refused += 1
            session.add(row)
            return row.blocked_until_ms

        return await self._db.run(load)

    async def count_failure(self, key: str, where: str, actor: str, reason: str) -> int:
        """A failure under `key` from `where`; returns until when it now waits."""
        return await self._count_failure(key, where, actor, reason)

    async def _count_failure(self, key: str, where: str, actor: str, reason: str) -> int:
        try:
            return await self._db.run(lambda s: self._fail(s, key, where, actor, reason))
        except IntegrityError:
            # Two failures from one address at the same instant both made its first row
            # (PostgreSQL runs them side by side): count this one on the row that won.
            return await self._db.run(lambda s: self._fail(s, key, where, actor, reason))

    def _fail(self, session: Session, key: str, where: str, actor: str, reason: str) -> int:
        """Count a failure from `where`; returns until when that address now waits."""
        settings = self._settings
        now = now_ms()
        row = session.get(LoginFailure, (key, where))
        if row is None:
            row = LoginFailure(name_key=key, client=where, last_failure_ms=now)
        elif now - row.last_failure_ms > settings.login_forget_s * 1000:
            row.failures = 0
        row.failures += 1
        row.last_failure_ms = now
        wait = backoff_s(settings, row.failures)
        row.blocked_until_ms = now + round(wait * 1000) if wait else 0
        session.add(row)
        detail: dict[str, object] = {"reason": reason, "failures": row.failures, "client": where}
        if wait:
            detail["backoff_s"] = wait
        session.add(
            AuditEntry(
                at_ms=now,
                actor=actor,
                role="anonymous",
                action="session.login_failed",
                detail=detail,
            )
        )
        return row.blocked_until_ms

    def _open(
        self, session: Session, user: User, user_agent: str, key: str, where: str
    ) -> LoggedIn:
        now = now_ms()
        assert user.id is not None
        cookie = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        expires = now + self._settings.session_ttl_s * 1000
        session.add(
            ConsoleSession(
                token_hash=_digest(cookie),
                user_id=user.id,
                csrf_token=csrf,
                created_ms=now,
                expires_ms=expires,
                user_agent=user_agent[:200],
            )
        )
        # Only this address's count starts again: another address still guessing at
        # this name stays slowed down.
        session.exec(
            delete(LoginFailure)  # type: ignore[call-overload]
            .where(col(LoginFailure.name_key) == key)
            .where(col(LoginFailure.client) == where)
        )
        # Old sessions and stale failure counts (guessed names pile up) are swept here
        # rather than by a timer: logins are rare.
        session.exec(delete(ConsoleSession).where(col(ConsoleSession.expires_ms) < now))  # type: ignore[call-overload]
        session.exec(
            delete(LoginFailure)  # type: ignore[call-overload]
            .where(col(LoginFailure.last_failure_ms) < now - self._settings.login_forget_s * 1000)
            .where(col(LoginFailure.blocked_until_ms) < now)
        )
        principal = Principal(user.name, Role(user.role), user.township_id)
        _audit(session, user.name, user.role, "session.login", client=where)
        return LoggedIn(cookie, csrf, principal, expires)

    # ------------------------------------------------------------------ admin

    async def blocked(self, names: list[str]) -> dict[str, list[Backoff]]:
        """For each of `names` with an address in back-off: the addresses, newest
        failure first."""
        keys = {await self.name_key(n): n for n in names}
        free = self._settings.login_free_failures

        def load(session: Session) -> dict[str, list[Backoff]]:
            found: dict[str, list[Backoff]] = {}
            rows = session.exec(
                select(LoginFailure)
                .where(col(LoginFailure.name_key).in_(list(keys)))
                .where(col(LoginFailure.failures) >= free)
                .order_by(col(LoginFailure.last_failure_ms).desc())
            )
            for row in rows:
                found.setdefault(keys[row.name_key], []).append(
                    Backoff(
                        client=row.client,
                        failures=row.failures,
                        refused=row.refused,
                        last_failure_ms=row.last_failure_ms,
                        blocked_until_ms=row.blocked_until_ms or None,
                    )
                )
            return found

        return await self._db.run(load)

    async def unlock(self, name: str, by: Principal) -> list[str]:
        """Forget every address's failures for `name`; returns those addresses."""
        key = await self.name_key(name)

        def clear(session: Session) -> list[str]:
            rows = list(session.exec(select(LoginFailure).where(LoginFailure.name_key == key)))
            for row in rows:
                session.delete(row)
            clients = sorted(r.client for r in rows)
            _audit(
                session,
                by.user,
                by.role.value,
                "user.unlock",
                target=name,
                clients=clients,
            )
            return clients

        return await self._db.run(clear)

    # ------------------------------------------------------------------ password

    async def change_password(
        self,
        principal: Principal,
        current: str,
        new: str,
        *,
        client: str | None = None,
        keep_cookie: str | None = None,
    ) -> None:
        """A user sets their own password: the current one is checked (with the same
        back-off as a login), the new one must pass the policy, and every other session
        of theirs ends: whoever else knew the old password is logged out."""
        check_password(new, "new", principal.user)
        where = client_key(client)
        key = await self.name_key(principal.user)

        def load(session: Session) -> tuple[User | None, int | None]:
            row = session.get(LoginFailure, (key, where))
            if row is not None and row.blocked_until_ms > now_ms():
                row.refused += 1
                session.add(row)
                return None, row.blocked_until_ms
            return session.exec(select(User).where(User.name == principal.user)).first(), None

        user, blocked_until = await self._db.run(load)
        if blocked_until is not None:
            raise _backoff(blocked_until)
        ok = await asyncio.to_thread(verify_password, user.password_hash if user else None, current)
        if not ok or user is None:
            await self._count_failure(key, where, principal.user, "bad_current_password")
            raise ApiError(403, "invalid_credentials", "current: wrong password", "current")
        new_hash = await asyncio.to_thread(_hasher.hash, new)
        user_id = user.id
        assert user_id is not None

        def save(session: Session) -> None:
            row = session.get(User, user_id)
            assert row is not None
            row.password_hash = new_hash
            session.add(row)
            ended = self.forget_user_sessions(session, user_id, keep_cookie=keep_cookie)
            _audit(
                session,
                principal.user,
                principal.role.value,
                "user.password_changed",
                target=principal.user,
                sessions_ended=ended,
                client=where,
            )

        await self._db.run(save)

    # ------------------------------------------------------------------ lookup

    async def lookup(self, cookie: str) -> tuple[Principal, str] | None:
        """The principal and CSRF token of a live session, or None."""
        digest = _digest(cookie)
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]

        def load(session: Session) -> tuple[Principal, str] | None:
            row = session.exec(
                select(ConsoleSession, User)
                .where(ConsoleSession.token_hash == digest)
                .where(ConsoleSession.user_id == User.id)
            ).first()
            if row is None:
                return None
            console_session, user = row
            if console_session.expires_ms <= now_ms() or user.disabled:
                return None
            principal = Principal(user.name, Role(user.role), user.township_id)
            return principal, console_session.csrf_token

        found = await self._db.run(load)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + self.CACHE_S, found)
        return found

    async def logout(self, cookie: str, principal: Principal) -> None:
        digest = _digest(cookie)
        self._cache.pop(digest, None)

        def drop(session: Session) -> None:
            session.exec(delete(ConsoleSession).where(col(ConsoleSession.token_hash) == digest))  # type: ignore[call-overload]
            _audit(session, principal.user, principal.role.value, "session.logout")

        await self._db.run(drop)

    def forget_user_sessions(
        self, session: Session, user_id: int, *, keep_cookie: str | None = None
    ) -> int:
        """End a user's sessions (disabled, role or password changed), but the one whose
        cookie is `keep_cookie`, in the caller's transaction; the cache forgets them
        too. Returns how many ended."""
        query = delete(ConsoleSession).where(col(ConsoleSession.user_id) == user_id)
        if keep_cookie is not None:
            query = query.where(col(ConsoleSession.token_hash) != _digest(keep_cookie))
        result = session.exec(query)  # type: ignore[call-overload]
        self._cache.clear()
        return int(result.rowcount or 0)


def _load_or_make_secret(session: Session) -> bytes:
    row = session.get(ServerSecret, _NAME_KEY_SECRET)
    if row is None:
        row = ServerSecret(name=_NAME_KEY_SECRET, value=secrets.token_hex(32))
        session.add(row)
        session.flush()
    return bytes.fromhex(row.value)


def set_console_password(
    session: Session,
    name: str,
    role: Role | None,
    township_id: str | None,
    password: str,
    *,
    create_only: bool = False,
    must_exist: bool = False,
) -> User:
    """Create a console user, or set an existing one's password.

    `create_only`: refuse a user that exists. `must_exist` (`dalaba user passwd`):
    refuse one that does not (LookupError), never create it; `role` None then means
    whatever role it has. A role given must match the user's. Setting the password of an
    existing user ends the sessions it had open, which may be someone who knew the old
    one."""
    if role is None and not must_exist:
        raise ValueError("--role is required to create a user")
    if role is Role.TOWNSHIP_STAFF and not township_id:
        raise ValueError("--township is required for township_staff")
    if role is not None and role is not Role.TOWNSHIP_STAFF:
        township_id = None
    user = session.exec(select(User).where(User.name == name)).first()
    if user is None:
        if must_exist:
            raise LookupError(f"user {name}: no such console user (create it with `user create`)")
        assert role is not None
        if township_id is not None and session.get(Township, township_id) is None:
            raise LookupError(f"township {township_id}: not in the database")
        user = User(name=name, role=role.value, township_id=township_id, created_ms=now_ms())
    elif create_only:
        raise ValueError(f"user {name} already exists")
    elif (role is not None and (user.role != role.value or user.township_id != township_id)) or (
        role is None and township_id is not None and user.township_id != township_id
    ):
        where = f" of {user.township_id}" if user.township_id else ""
        raise ValueError(f"user {name} exists with role {user.role}{where}")
    new_hash = hash_password(password, user_name=name)
    if user.id is not None:
        session.exec(delete(ConsoleSession).where(col(ConsoleSession.user_id) == user.id))  # type: ignore[call-overload]
    user.password_hash = new_hash
    session.add(user)
    session.flush()
    return user
