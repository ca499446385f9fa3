"""Helpers shared by tests in several folders (fixtures live in conftest.py)."""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dalaba.protocol import Command, MediaRef, PlayBody, Priority, Target

PG_HOST, PG_PORT = "127.0.0.1", 5432
# Databases this module makes are named after the process that made them, so a later
# run can drop what a killed run left behind (and never what a live one still uses).
_OWNED = re.compile(r"^dalaba_p(\d+)_")


@dataclass(frozen=True)
class PostgresServer:
    """A PostgreSQL server the tests may create and drop databases on (trust auth)."""

    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def admin(self) -> Any:
        import psycopg

        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        )


# The server for this process: found or started once, or the reason there is none.
_server: PostgresServer | str | None = None
# One template per server (the tests may start a private one beside the usual one).
_templates: dict[PostgresServer, str] = {}


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _connectable(host: str, port: int) -> PostgresServer | str:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    for user in ("postgres", "root"):
        try:
            psycopg.connect(host=host, port=port, user=user, dbname="postgres").close()
        except psycopg.OperationalError:
            continue
        return PostgresServer(host, port, user)
    return f"PostgreSQL on {host}:{port} refuses the postgres and root roles"


class PrivateCluster:
    """A PostgreSQL cluster of the tests' own: initdb into a temporary directory, pg_ctl
    on a free port of 127.0.0.1, trust auth, no fsync (a test database need not survive
    a power cut)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix="dalaba-pg-"))
        self.data = self.base / "data"
        self.port = 0
        self.as_user: list[str] = []

    def start(self) -> PostgresServer | str:
        """The running server, or why it could not start."""
        from dalaba_ops.broker import free_port

        if os.geteuid() == 0:
            # initdb refuses to run as root: the cluster belongs to the postgres account.
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                self.stop()
                return "initdb refuses root and there is no postgres account to run it as"
            os.chown(self.base, account.pw_uid, account.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        options = f"-h 127.0.0.1 -p {self.port} -k {self.base} -c fsync=off"
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                      "--no-sync", "-E", "UTF8", "--locale=C")  # fmt: skip
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "log"), "-w",
                      "-o", options, "start")  # fmt: skip
        except (OSError, subprocess.CalledProcessError) as exc:
            self.stop()
            detail = getattr(exc, "stderr", None) or exc
            return f"could not start a private PostgreSQL from {self.bin_dir}: {detail}"
        return _connectable("127.0.0.1", self.port)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(OSError, subprocess.CalledProcessError):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin_dir / tool), *args],
            check=True,
            capture_output=True,
            text=True,
            cwd=self.base,
        )


def postgres_binaries() -> Path | None:
    """The folder of an installed PostgreSQL's initdb and pg_ctl, newest first."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    return None


def postgres_server() -> PostgresServer | str:
    """The local PostgreSQL on 127.0.0.1:5432 where one listens; else a private cluster
    started from the installed binaries (initdb + pg_ctl on a free port) for this
    process; else the reason there is none (a test skips with it)."""
    global _server
    if _server is None:
        if _listening(PG_HOST, PG_PORT):
            _server = _connectable(PG_HOST, PG_PORT)
        elif (bin_dir := postgres_binaries()) is not None:
            cluster = PrivateCluster(bin_dir)
            atexit.register(cluster.stop)
            _server = cluster.start()
        else:
            _server = f"no PostgreSQL on {PG_HOST}:{PG_PORT}, nor its binaries to start one"
    return _server


def require_postgres() -> PostgresServer:
    server = postgres_server()
    if isinstance(server, str):
        pytest.skip(server)
    return server


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _drop_leftovers(server: PostgresServer) -> None:
    """Drop the databases of test processes that died without dropping their own."""
    with server.admin() as admin:
        names = [r[0] for r in admin.execute("SELECT datname FROM pg_database").fetchall()]
        for name in names:
            match = _OWNED.match(name)
            if match and not _alive(int(match.group(1))):
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _template_database(server: PostgresServer) -> str:
    """A database at this release's schema (the migrations run once per test process),
    for `CREATE DATABASE ... TEMPLATE` per test: a fresh database in a few tens of ms."""
    if server not in _templates:
        from controller.db import Database

        _drop_leftovers(server)
        name = f"dalaba_p{os.getpid()}_template"
        with server.admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
        db = Database(server.url(name))
        db.start()  # migrates the empty database to head
        db.stop()  # and closes every connection: a template must have none

        def drop() -> None:
            with contextlib.suppress(Exception), server.admin() as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        atexit.register(drop)
        _templates[server] = name
    return _templates[server]


def create_postgres_database(server: PostgresServer, *, migrated: bool = True) -> str:
    """A new database (its name); `migrated`: copied from the template at this
    release's schema, else empty."""
    name = f"dalaba_p{os.getpid()}_{uuid.uuid4().hex[:12]}"
    template = f' TEMPLATE "{_template_database(server)}"' if migrated else ""
    with server.admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"{template}')
    return name


def drop_postgres_database(server: PostgresServer, name: str) -> None:
    with server.admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def throwaway_postgres_url(*, migrated: bool = False) -> Iterator[str]:
    """A throwaway database for one test, dropped afterwards; skips the test where there
    is no PostgreSQL (see `postgres_server`). Empty unless `migrated`."""
    server = require_postgres()
    name = create_postgres_database(server, migrated=migrated)
    try:
        yield server.url(name)
    finally:
        drop_postgres_database(server, name)


class DbBackend:
    """The database under test for one module: `new_url()` gives each county its own
    database (None on SQLite: the county's file in its data directory; on PostgreSQL a
    fresh database copied from a template already at this release's schema)."""

    def __init__(self, name: str, server: PostgresServer | None = None) -> None:
        self.name = name
        self.server = server
        self._made: list[str] = []

    def new_url(self) -> str | None:
        if self.server is None:
            return None
        database = create_postgres_database(self.server)
        self._made.append(database)
        return self.server.url(database)

    def drop(self, url: str | None) -> None:
        if self.server is None or url is None:
            return
        database = url.rsplit("/", 1)[1]
        drop_postgres_database(self.server, database)
        self._made.remove(database)

    def drop_all(self) -> None:
        while self._made:
            self.drop(self.server.url(self._made[-1]) if self.server else None)


# `new_database_url()` (conftest.py): the `database_url` for one more county of a test.
DatabaseUrlFactory = Callable[[], str | None]


# ------------------------------------------------------------------ wire-protocol builders

NOW = 1_760_000_000_000  # a fixed "terminal clock" instant, epoch ms
SHA = "ab" * 32


def play_body(**overrides: Any) -> PlayBody:
    fields: dict[str, Any] = {
        "broadcast_id": "b-flood-1",
        "priority": Priority.EMERGENCY,
        "level": 2,
        "category": "flood",
        "title": "山洪预警",
        "media": MediaRef(sha256=SHA, url="media/x.ogg", size=1234, duration_ms=5000),
        "start_at": NOW + 2_000,
    }
    fields.update(overrides)
    return PlayBody(**fields)


def command(
    *, issued_at: int = NOW, expires_at: int = NOW + 600_000, body: PlayBody | None = None
) -> Command:
    return Command(
        id="c0ffee",
        issued_at=issued_at,
        expires_at=expires_at,
        target=Target(villages=("v-001",)),
        body=body or play_body(),
    )
