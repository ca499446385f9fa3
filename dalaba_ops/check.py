"""`dalaba check`: is this deployment ready to run? One line per check, ok or FAIL with
what is wrong, read-only except for a probe file in the media directory.

By default the broker is only reached over TCP. Logging in as the controller is opt-in
(`--broker-login`): the broker binds client ids to usernames (use_username_as_clientid),
so any login with the controller's account *is* the controller's client and takes over
the running controller's connection for a moment. The login done here keeps the
controller's persistent session (no clean start, the controller's session expiry, no
message acknowledged), so nothing queued for it is lost; the controller reconnects.
"""

from __future__ import annotations

import importlib
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dalaba_ops.cli_support import (
    CliError,
    describe,
    first_line,
    open_database,
    safe_url,
    schema_problem,
)

if TYPE_CHECKING:
    from controller.db import Database
    from controller.settings import Settings

OK, FAIL, WARN = "ok", "FAIL", "warn"
# The controller's and the database server's clocks may differ by this much; terminals
# raise their `clock` fault at 2 s from the controller, which is the same order.
MAX_CLOCK_OFFSET_S = 2.0
BROKER_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Result:
    name: str
    status: str  # ok | FAIL | warn (a warning does not fail the check)
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<11}  {self.detail}"


@dataclass
class Context:
    settings: Settings
    config: Path | None
    settings_problem: str | None
    broker_login: bool
    db: Database | None = None


def run_checks(ctx: Context) -> Iterator[Result]:
    """Every check in turn; a check that raises is reported as FAIL, never a traceback."""
    checks: list[tuple[str, Callable[[Context], Result | list[Result]]]] = [
        ("settings", _settings),
        ("database", _database),
        ("schema", _schema),
        ("broker", _broker),
        ("signing key", _signing_key),
        ("media", _media),
        ("clock", _clock),
        ("neural voice", _neural_voice),
    ]
    try:
        for name, check in checks:
            try:
                outcome = check(ctx)
            except Exception as exc:  # every failure is one FAIL line
                outcome = Result(name, FAIL, describe(exc)[1])
            yield from outcome if isinstance(outcome, list) else [outcome]
    finally:
        if ctx.db is not None:
            ctx.db.stop()


def _settings(ctx: Context) -> Result:
    source = str(ctx.config) if ctx.config else "DALABA_* environment and defaults (no --config)"
    if ctx.settings_problem:
        return Result("settings", FAIL, ctx.settings_problem)
    return Result("settings", OK, source)


def _database(ctx: Context) -> Result:
    url = safe_url(ctx.settings.db_url)
    try:
        ctx.db = open_database(ctx.settings, check_schema=False)
    except CliError as exc:
        return Result("database", FAIL, exc.message)
    from sqlmodel import func, select

    from controller.models import Device

    count = ctx.db.run_sync(lambda s: s.exec(select(func.count()).select_from(Device)).one())
    return Result("database", OK, f"{url} ({count} terminals)")


def _schema(ctx: Context) -> Result:
    if ctx.db is None or ctx.db.engine is None:
        return Result("schema", FAIL, "not checked: no database")
    try:
        from controller import migrations
    except ImportError:  # a release without migrations: the tables must all be there
        from sqlalchemy import inspect
        from sqlmodel import SQLModel

        from controller.db import TABLE_MODULES

        for module in TABLE_MODULES:
            importlib.import_module(module)
        with ctx.db.engine.connect() as conn:
            have = set(inspect(conn).get_table_names())
        missing = sorted(set(SQLModel.metadata.tables) - have)
        if missing:
            return Result("schema", FAIL, f"tables missing: {', '.join(missing)}")
        return Result("schema", OK, "every table present (no migrations to compare with)")
    problem = schema_problem(ctx.db.engine)
    if problem:
        return Result("schema", FAIL, problem)
    return Result("schema", OK, f"at {migrations.head()}, the newest revision")


def _broker(ctx: Context) -> Result:
    from dalaba.mqtt import BrokerAddress

    settings = ctx.settings
    # With TLS settings where this release has them (the CA, a client certificate).
    address = (
        settings.broker_address()
        if hasattr(settings, "broker_address")
        else BrokerAddress.from_url(settings.broker_url)
    )
    where = f"{address.host}:{address.port}"
    try:
        with socket.create_connection((address.host, address.port), timeout=BROKER_TIMEOUT_S):
            pass
    except OSError as exc:
        return Result("broker", FAIL, f"{where}: not reachable ({exc.strerror or exc})")
    if not ctx.broker_login:
        return Result(
            "broker",
            OK,
            f"{where} reachable over TCP (login not tried: --broker-login, "
            "with the controller stopped)",
        )
    tls = getattr(address, "tls", None)
    refused = mqtt_login(
        address.host,
        address.port,
        ctx.settings.broker_username,
        ctx.settings.broker_password.get_secret_value(),
        tls_context=tls.context() if tls is not None else None,
    )
    if refused:
        return Result("broker", FAIL, f"{where}: {ctx.settings.broker_username}: {refused}")
    return Result("broker", OK, f"{where}: logged in as {ctx.settings.broker_username}")


def mqtt_login(
    host: str, port: int, username: str, password: str, tls_context: ssl.SSLContext | None = None
) -> str | None:
    """Log in as `username` and leave at once, keeping its persistent session as the
    controller left it. None when the broker accepted, else why not."""
    import paho.mqtt.client as paho
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from dalaba.protocol import CONTROLLER_SESSION_EXPIRY_S

    outcome: list[str | None] = []
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=username,
        protocol=paho.MQTTv5,
        # Messages queued for the controller may arrive: never acknowledged, they stay
        # in its session and are sent to it again when it reconnects.
        manual_ack=True,
    )
    client.username_pw_set(username, password or None)
    if tls_context is not None:
        client.tls_set_context(tls_context)

    def on_connect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        outcome.append(str(reason) if reason.is_failure else None)

    client.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = CONTROLLER_SESSION_EXPIRY_S
    try:
        client.connect(host, port, keepalive=10, clean_start=False, properties=props)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot connect ({getattr(exc, 'strerror', None) or exc})"
    deadline = time.monotonic() + BROKER_TIMEOUT_S
    while not outcome and time.monotonic() < deadline:
        if client.loop(timeout=0.2) != paho.MQTT_ERR_SUCCESS and not outcome:
            outcome.append("the broker closed the connection (login refused?)")
    if not outcome:
        outcome.append(f"no answer to the login within {BROKER_TIMEOUT_S:.0f} s")
    if outcome[0] is None:
        client.disconnect()
        client.loop(timeout=0.2)
    else:
        client.disconnect()
    return outcome[0]


def _signing_key(ctx: Context) -> Result:
    from dalaba_ops.provisioning import controller_trust_pem

    path = ctx.settings.signing_key_path
    scheme = getattr(ctx.settings, "signing_scheme", "ed25519")
    if not path.exists():
        return Result(
            "signing key",
            FAIL,
            f"{path}: missing (restore it from the backup; a new key would need every "
            "terminal re-provisioned)",
        )
    try:
        path.read_bytes()
    except OSError as exc:
        return Result("signing key", FAIL, f"{path}: not readable ({exc.strerror or exc})")
    try:
        controller_trust_pem(scheme, path)  # loads it as the controller will
    except (ValueError, TypeError) as exc:
        return Result("signing key", FAIL, f"{path}: not a {scheme} key ({first_line(exc)})")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return Result(
            "signing key", FAIL, f"{path}: readable by others (mode {mode:o}): chmod 600 it"
        )
    return Result("signing key", OK, f"{path} ({scheme})")


def _media(ctx: Context) -> Result:
    """Writable as the controller writes it: a file created in the directory (or in the
    nearest existing parent the controller would create it under), then removed."""
    media = ctx.settings.media_dir
    data_dir = ctx.settings.data_dir
    if not data_dir.is_dir():
        return Result("media", FAIL, f"data directory {data_dir}: not found")
    # The controller makes media/ under the data directory: probe the nearest that exists.
    probe_dir = media
    while not probe_dir.exists() and probe_dir not in (data_dir, probe_dir.parent):
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        return Result("media", FAIL, f"{probe_dir}: not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".dalaba-check-"):
            pass
    except OSError as exc:
        return Result("media", FAIL, f"{probe_dir}: not writable ({exc.strerror or exc})")
    free = shutil.disk_usage(probe_dir).free
    detail = f"{media} writable, {free / 1e9:.1f} GB free"
    if probe_dir != media:
        detail = f"{media} not there yet; {probe_dir} writable, {free / 1e9:.1f} GB free"
    return Result("media", OK, detail)


def _neural_voice(ctx: Context) -> list[Result]:
    """Only where DALABA_SPEECH_BACKENDS names it (it is opt-in): the extra and the model
    files the controller would refuse to start without."""
    if "neural" not in ctx.settings.speech_backends:
        return []
    from controller.speech.neural import NeuralVoiceUnavailable, check_installed

    try:
        check_installed(ctx.settings.data_dir)
    except NeuralVoiceUnavailable as exc:
        return [Result("neural voice", FAIL, str(exc))]
    return [Result("neural voice", OK, "extra and model files installed, hashes as pinned")]


def _clock(ctx: Context) -> list[Result]:
    results = []
    db = ctx.db
    if db is not None and db.engine is not None and db.engine.dialect.name == "postgresql":
        from sqlalchemy import text

        with db.engine.connect() as conn:
            before = time.time()
            now = conn.execute(text("SELECT extract(epoch FROM clock_timestamp())"))
            server = float(now.scalar_one())
            after = time.time()
        offset = server - (before + after) / 2
        status = OK if abs(offset) <= MAX_CLOCK_OFFSET_S else FAIL
        results.append(
            Result(
                "clock",
                status,
                f"database server's clock is {offset * 1000:+.0f} ms from this machine's "
                f"(at most {MAX_CLOCK_OFFSET_S:.0f} s)",
            )
        )
    results.append(_ntp_status())
    return results


def _ntp_status() -> Result:
    exe = shutil.which("timedatectl")
    if exe is None:
        return Result("clock", WARN, "NTP sync unknown: no timedatectl on this machine")
    try:
        done = subprocess.run(
            [exe, "show", "--property=NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Result("clock", WARN, f"NTP sync unknown: timedatectl: {first_line(exc)}")
    value = done.stdout.strip()
    if done.returncode != 0 or value not in ("yes", "no"):
        why = first_line(done.stderr) or f"exit {done.returncode}"
        return Result("clock", WARN, f"NTP sync unknown: timedatectl: {why}")
    if value == "no":
        return Result(
            "clock",
            FAIL,
            "not synchronised (timedatectl NTPSynchronized=no): terminals refuse commands "
            "issued more than 30 s in their future and start out of step",
        )
    return Result("clock", OK, "synchronised (timedatectl NTPSynchronized=yes)")
