"""`dalaba`: the one command. Subcommands: controller, agent, sim, demo, token, user."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from dalaba_ops import db_cli


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A fleet logs every rejected or dropped message; keep the library chatter down.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # APScheduler logs every run of every job at INFO (a heartbeat every 2 s); the
    # schedule service records what matters (fired, missed) itself.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def cmd_controller(args: argparse.Namespace) -> int:
    from controller.app import serve_forever
    from controller.settings import Settings

    settings = Settings(_env_file=args.config) if args.config else Settings()  # type: ignore[call-arg]
    asyncio.run(serve_forever(settings))
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    """Run one agent. On a real board the hardware is the board's own; only the
    simulated hardware ships in this repository."""
    from edge_agent.agent import EdgeAgent
    from edge_agent.config import DeviceConfig
    from firmware_sim.hardware import SimHardware

    config = DeviceConfig.load(Path(args.config))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        hw = SimHardware.create(config.state_dir.parent)
        agent = EdgeAgent(config, hw)
        await agent.start()
        try:
            await stop.wait()
        finally:
            await agent.stop()

    asyncio.run(run())
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from firmware_sim.fleet import Fleet, find_device_configs, run_fleet

    data_dir = Path(args.data_dir)
    if not find_device_configs(data_dir):
        print(
            f"no terminals under {data_dir}/sim; run `dalaba demo` or set one up first",
            file=sys.stderr,
        )
        return 2
    share = None
    if args.share:
        index, total = (int(x) for x in args.share.split("/"))
        share = (index, total)
    fleet = Fleet.from_data_dir(data_dir, args.villages, share=share, record_wav=not args.no_wav)
    asyncio.run(run_fleet(fleet))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dalaba_ops.demo import run_demo

    processes = args.processes or max(1, min(os.cpu_count() or 1, (args.villages + 999) // 1000))
    asyncio.run(run_demo(Path(args.data_dir), args.villages, args.port, processes))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from controller.auth import Role, create_user_and_token
    from controller.db import Database
    from controller.settings import Settings

    settings = (
        Settings(data_dir=Path(args.data_dir), demo=True) if args.data_dir else Settings(demo=True)
    )
    db = Database(args.database_url or settings.db_url)
    db.start()
    try:
        token = db.run_sync(
            lambda s: create_user_and_token(
                s, args.user, Role(args.role), args.township, label=args.label
            )
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        db.stop()
    # The only time the token is ever shown; only its hash is stored.
    print(token)
    return 0


def _read_password() -> str:
    """From the terminal (asked twice) or the first line of stdin; never from argv,
    which other users of the machine can read in the process list."""
    import getpass

    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise ValueError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_user(args: argparse.Namespace) -> int:
    from controller.auth import Role
    from controller.db import Database
    from controller.errors import ApiError
    from controller.sessions import set_console_password
    from controller.settings import Settings

    settings = (
        Settings(data_dir=Path(args.data_dir), demo=True) if args.data_dir else Settings(demo=True)
    )
    db = Database(args.database_url or settings.db_url)
    db.start()
    try:
        password = _read_password()
        db.run_sync(
            lambda s: set_console_password(
                s,
                args.name,
                Role(args.role),
                args.township,
                password,
                create_only=args.user_command == "create",
            )
        )
    except (ValueError, ApiError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    finally:
        db.stop()
    print(f"console user {args.name} ({args.role}) is ready")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dalaba", description="Dalaba (大喇叭) broadcast control")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("controller", help="run the county controller (API, console, dispatch)")
    p.add_argument("--config", help="a DALABA_* env file (see config/dalaba.example.env)")
    p.set_defaults(func=cmd_controller)

    p = sub.add_parser("agent", help="run one terminal agent from its device.json")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("sim", help="run simulated terminals (real agents) from DATA_DIR/sim")
    p.add_argument("--data-dir", default="demo-data")
    p.add_argument("--villages", type=int, default=None, help="at most this many terminals")
    p.add_argument("--share", default=None, help="i/n: run every n-th terminal from the i-th")
    p.add_argument("--no-wav", action="store_true", help="log plays but do not write WAV files")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("demo", help="broker + controller + a simulated county, until Ctrl-C")
    p.add_argument("--villages", type=int, default=164)
    p.add_argument("--port", type=int, default=8080, help="HTTP port of the console/API")
    p.add_argument("--data-dir", default="demo-data")
    p.add_argument("--processes", type=int, default=None, help="simulator processes")
    p.set_defaults(func=cmd_demo)

    db_cli.register(sub)

    p = sub.add_parser("token", help="API tokens")
    tsub = p.add_subparsers(dest="token_command", required=True)
    c = tsub.add_parser("create", help="create a user's API token (printed once)")
    c.add_argument("--user", required=True)
    c.add_argument(
        "--role", required=True, choices=["admin", "duty_officer", "township_staff", "viewer"]
    )
    c.add_argument("--township", default=None)
    c.add_argument("--label", default="")
    c.add_argument("--data-dir", default=None)
    c.add_argument("--database-url", default=None)
    c.set_defaults(func=cmd_token)

    p = sub.add_parser("user", help="console users (password from stdin or prompted)")
    usub = p.add_subparsers(dest="user_command", required=True)
    for name, text in (
        ("create", "create a console user with a password"),
        ("passwd", "set an existing console user's password"),
    ):
        c = usub.add_parser(name, help=text)
        c.add_argument("--name", required=True)
        c.add_argument(
            "--role", required=True, choices=["admin", "duty_officer", "township_staff", "viewer"]
        )
        c.add_argument("--township", default=None, help="required for township_staff")
        c.add_argument("--data-dir", default=None)
        c.add_argument("--database-url", default=None)
        c.set_defaults(func=cmd_user)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
