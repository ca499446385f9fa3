"""Console logins: argon2 password hashes, server-side sessions behind an HttpOnly
cookie, a per-session CSRF token, and lock-out after repeated failures.

The cookie holds 256 random bits; only their sha256 is stored, so a copy of the
database does not let anyone log in. The CSRF token is not a secret from the logged-in
browser (it reads it from /api/session); it proves a state-changing request came from
script running on the console's own origin, which a cross-site form cannot do.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import BigInteger, Column
from sqlmodel import Field, Session, SQLModel, col, delete, select

from controller.auth import Principal, Role
from controller.db import Database
from controller.errors import ApiError, bad_request
from controller.models import AuditEntry, User
from controller.settings import Settings
from dalaba.protocol import now_ms

log = logging.getLogger(__name__)

MIN_PASSWORD_CHARS = 8
MAX_NAME_CHARS = 64

_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs the same time
# as a wrong password and does not reveal which names exist.
_DUMMY_HASH = _hasher.hash("dalaba-no-such-user")


class ConsoleSession(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True, index=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    csrf_token: str
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    user_agent: str = ""


class LoginThrottle(SQLModel, table=True):
    """Consecutive failed logins per user name (existing or not)."""

    user_name: str = Field(primary_key=True)
    failures: int = 0
    last_failure_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    locked_until_ms: int | None = Field(default=None, sa_column=Column(BigInteger))


def hash_password(password: str) -> str:
    check_password(password)
    return _hasher.hash(password)


def check_password(password: str, field: str = "password") -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise bad_request(field, f"at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > 256:
        raise bad_request(field, "at most 256 characters")


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class LoggedIn:
    cookie: str  # shown to the browser once, in Set-Cookie
    csrf_token: str
    principal: Principal
    expires_ms: int


def _audit(session: Session, actor: str, role: str, action: str, **detail: object) -> None:
    session.add(
        AuditEntry(at_ms=now_ms(), actor=actor, role=role, action=action, detail=dict(detail))
    )


class SessionStore:
    CACHE_S = 5.0  # a disabled user's open sessions stop working within this long

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._settings = settings
        self._cache: dict[str, tuple[float, tuple[Principal, str] | None]] = {}

    # ------------------------------------------------------------------ login

    async def login(self, name: str, password: str, user_agent: str = "") -> LoggedIn:
        name = name.strip()
        if not name or len(name) > MAX_NAME_CHARS:
            raise bad_request("name", f"1 to {MAX_NAME_CHARS} characters")
        settings = self._settings

        def load(session: Session) -> tuple[User | None, int | None]:
            throttle = session.get(LoginThrottle, name)
            locked = throttle.locked_until_ms if throttle else None
            if locked is not None and locked > now_ms():
                _audit(session, name, "anonymous", "session.login_refused_locked")
                return None, locked
            user = session.exec(select(User).where(User.name == name)).first()
            return user, None

        user, locked_until = await self._db.run(load)
        if locked_until is not None:
            raise _locked(locked_until)
        # argon2 is deliberately slow and memory-hard: keep it off the event loop and
        # off the single database thread.
        ok = await asyncio.to_thread(
            verify_password, user.password_hash if user else None, password
        )
        if ok and user is not None and not user.disabled:
            return await self._db.run(lambda s: self._open(s, user, user_agent))

        def fail(session: Session) -> int | None:
            now = now_ms()
            throttle = session.get(LoginThrottle, name) or LoginThrottle(user_name=name)
            # Failures long ago do not count towards a lock-out now.
            if (
                throttle.last_failure_ms is not None
                and now - throttle.last_failure_ms > settings.login_lockout_s * 1000
            ):
                throttle.failures = 0
            throttle.failures += 1
            throttle.last_failure_ms = now
            reason = "disabled" if user is not None and user.disabled and ok else "bad_password"
            _audit(
                session,
                name,
                "anonymous",
                "session.login_failed",
                reason=reason,
                failures=throttle.failures,
            )
            locked = None
            if throttle.failures >= settings.login_max_failures:
                locked = now + settings.login_lockout_s * 1000
                throttle.locked_until_ms = locked
                throttle.failures = 0
                _audit(
                    session,
                    name,
                    "anonymous",
                    "session.locked_out",
                    minutes=settings.login_lockout_s // 60,
                )
            session.add(throttle)
            return locked

        locked = await self._db.run(fail)
        if locked is not None:
            raise _locked(locked)
        raise ApiError(401, "invalid_credentials", "name or password is wrong", "password")

    def _open(self, session: Session, user: User, user_agent: str) -> LoggedIn:
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
        throttle = session.get(LoginThrottle, user.name)
        if throttle is not None:
            session.delete(throttle)
        # Old sessions and stale failure counts (guessed names pile up) are swept here
        # rather than by a timer: logins are rare.
        session.exec(delete(ConsoleSession).where(col(ConsoleSession.expires_ms) < now))  # type: ignore[call-overload]
        stale = now - self._settings.login_lockout_s * 1000
        session.exec(
            delete(LoginThrottle)  # type: ignore[call-overload]
            .where(col(LoginThrottle.last_failure_ms) < stale)
            .where(
                col(LoginThrottle.locked_until_ms).is_(None)
                | (col(LoginThrottle.locked_until_ms) < now)
            )
        )
        principal = Principal(user.name, Role(user.role), user.township_id)
        _audit(session, user.name, user.role, "session.login")
        return LoggedIn(cookie, csrf, principal, expires)

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

    def forget_user_sessions(self, session: Session, user_id: int) -> None:
        """End a user's sessions (disabled, role or password changed), in the caller's
        transaction; the cache forgets them too."""
        session.exec(delete(ConsoleSession).where(col(ConsoleSession.user_id) == user_id))  # type: ignore[call-overload]
        self._cache.clear()


def _locked(until_ms: int) -> ApiError:
    minutes = max(1, -(-(until_ms - now_ms()) // 60_000))
    err = ApiError(
        429,
        "locked_out",
        f"too many failed logins: this name is locked for {minutes} more minute(s)",
        "name",
    )
    return err


def set_console_password(
    session: Session,
    name: str,
    role: Role,
    township_id: str | None,
    password: str,
    *,
    create_only: bool = False,
) -> User:
    """Create a console user (or set an existing one's password; its role must match)."""
    if role is Role.TOWNSHIP_STAFF and not township_id:
        raise ValueError("--township is required for township_staff")
    if role is not Role.TOWNSHIP_STAFF:
        township_id = None
    user = session.exec(select(User).where(User.name == name)).first()
    if user is None:
        user = User(name=name, role=role.value, township_id=township_id, created_ms=now_ms())
    elif create_only:
        raise ValueError(f"user {name} already exists")
    elif user.role != role.value or user.township_id != township_id:
        raise ValueError(f"user {name} exists with role {user.role}")
    user.password_hash = hash_password(password)
    session.add(user)
    session.flush()
    return user
