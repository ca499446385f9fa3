"""The `dalaba` command as an operator meets it: run as a real process, against a county
prepared by `dalaba_ops.demo.setup_county` and a real Mosquitto.

Every mistake is one line on stderr, no traceback, and the exit code the README
documents; tokens are listed and revoked; `provision` writes a device file an agent
connects with and merges its account into the broker's files; `check` says what is
wrong with a deployment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import select

import dalaba
from controller.auth import TokenAuthenticator
from controller.county import County
from controller.db import Database
from controller.models import AuditEntry, Device, User, Village
from controller.sessions import verify_password
from dalaba_ops.check import mqtt_login
from dalaba_ops.cli_support import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from dalaba_ops.demo import PreparedCounty, setup_county
from dalaba_ops.provisioning import read_password_file
from edge_agent.agent import EdgeAgent
from edge_agent.config import DeviceConfig
from firmware_sim.fleet import device_dir
from firmware_sim.hardware import SimHardware
from tests.procs import _child_env, dalaba_argv, write_env_file
from tests.support import DatabaseUrlFactory, DbBackend, throwaway_postgres_url

PASSWORD = "correct horse battery"


@dataclass(frozen=True)
class Deployment:
    prepared: PreparedCounty
    env: Path  # the controller's env file, as `--config` takes it

    @property
    def data_dir(self) -> Path:
        return self.prepared.data_dir

    def database(self) -> Database:
        db = Database(self.prepared.settings.db_url)
        db.start()
        return db


def prepare(where: Path, database_url: str | None = None) -> Deployment:
    prepared = setup_county(
        where / "county",
        villages=3,
        console_users=False,
        speech_backends=("espeak-ng",),
        database_url=database_url,
    )
    return Deployment(prepared, write_env_file(prepared.settings, where / "dalaba.env"))


@pytest.fixture(scope="module")
def county(tmp_path_factory: pytest.TempPathFactory, db_backend: DbBackend) -> Deployment:
    """One county for the tests that only read it or add to it."""
    return prepare(tmp_path_factory.mktemp("cli"), db_backend.new_url())


def dalaba_cmd(
    *args: str, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        dalaba_argv(*args),
        capture_output=True,
        text=True,
        input=stdin,
        env=_child_env(),
        cwd=cwd,
        timeout=120,
        check=False,
    )


def assert_mistake(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Exactly one line on stderr, naming what is wrong; no traceback; the exit code."""
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------ no deployment needed


def test_version_is_the_package_version() -> None:
    result = dalaba_cmd("--version")
    assert result.returncode == EXIT_OK
    assert result.stdout.strip() == f"dalaba {dalaba.__version__}"


def test_token_create_without_a_deployment_refuses_and_writes_nothing(tmp_path: Path) -> None:
    result = dalaba_cmd("token", "create", "--user", "x", "--role", "viewer", cwd=tmp_path)
    assert_mistake(result, EXIT_USAGE, "--config", "--data-dir", "--database-url")
    assert list(tmp_path.iterdir()) == []  # no ./data made wherever it was run


@pytest.mark.parametrize(
    "command",
    [
        ["token", "list"],
        ["user", "passwd", "--name", "x"],
        ["provision", "d-t01-v01-1"],
        ["county", "import", "county.json"],
    ],
)
def test_every_database_command_wants_a_deployment(tmp_path: Path, command: list[str]) -> None:
    assert_mistake(dalaba_cmd(*command, cwd=tmp_path), EXIT_USAGE, "--config")


@pytest.mark.parametrize(
    "command",
    [
        ["controller"],
        ["check"],
        ["token", "list"],
        ["token", "create", "--user", "x", "--role", "viewer"],
        ["user", "create", "--name", "x", "--role", "viewer"],
        ["provision", "d-t01-v01-1"],
        ["sim"],
        ["agent"],
    ],
)
def test_a_missing_config_file_is_an_error(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "nowhere.env"
    result = dalaba_cmd(*command, "--config", str(missing))
    assert_mistake(result, EXIT_USAGE, str(missing), "no such file")


def test_a_missing_data_directory(tmp_path: Path) -> None:
    result = dalaba_cmd("token", "list", "--data-dir", str(tmp_path / "gone"))
    assert_mistake(result, EXIT_NOT_FOUND, "data directory", "not found")


def test_a_data_directory_without_a_database(tmp_path: Path) -> None:
    result = dalaba_cmd("token", "list", "--data-dir", str(tmp_path))
    assert_mistake(result, EXIT_NOT_FOUND, "dalaba.db", "not found")
    assert not (tmp_path / "dalaba.db").exists()  # and none was created


def test_a_database_file_that_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "dalaba.db").write_bytes(b"this is a text file, not SQLite\n" * 100)
    result = dalaba_cmd("token", "list", "--data-dir", str(tmp_path))
    assert_mistake(result, EXIT_UNREACHABLE, "cannot open")


def test_an_unreachable_database_server(tmp_path: Path) -> None:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    url = "postgresql+psycopg://dalaba@127.0.0.1:1/dalaba"
    result = dalaba_cmd("token", "list", "--database-url", url)
    assert_mistake(result, EXIT_UNREACHABLE, "127.0.0.1:1", "cannot open")


def test_a_bad_role_names_the_roles(tmp_path: Path) -> None:
    result = dalaba_cmd("token", "create", "--user", "x", "--role", "boss", "--data-dir", "x")
    assert_mistake(result, EXIT_USAGE, "--role boss", "duty_officer")


def test_an_unknown_option_is_one_line(tmp_path: Path) -> None:
    assert_mistake(dalaba_cmd("token", "list", "--bogus"), EXIT_USAGE, "--bogus")


def test_verbose_adds_the_traceback(tmp_path: Path) -> None:
    result = dalaba_cmd("-v", "token", "list", "--data-dir", str(tmp_path / "gone"))
    assert result.returncode == EXIT_NOT_FOUND
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("dalaba token list: error: data directory")


def test_an_agent_device_file_that_is_not_json(tmp_path: Path) -> None:
    bad = tmp_path / "device.json"
    bad.write_text("{not json")
    assert_mistake(dalaba_cmd("agent", "--config", str(bad)), EXIT_USAGE, "device file", "JSON")


# ------------------------------------------------------------------ against a county


def test_an_unknown_township(county: Deployment) -> None:
    env = str(county.env)
    result = dalaba_cmd(
        "token", "create", "--config", env, "--user", "c", "--role", "township_staff",
        "--township", "t99",
    )  # fmt: skip
    assert_mistake(result, EXIT_NOT_FOUND, "township t99")
    result = dalaba_cmd(
        "user", "create", "--config", env, "--name", "c", "--role", "township_staff",
        "--township", "t99", stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert_mistake(result, EXIT_NOT_FOUND, "township t99")


def test_user_passwd_never_creates(county: Deployment) -> None:
    result = dalaba_cmd(
        "user", "passwd", "--config", str(county.env), "--name", "ghost", stdin=PASSWORD + "\n"
    )
    assert_mistake(result, EXIT_NOT_FOUND, "user ghost")
    db = county.database()
    try:
        found = db.run_sync(lambda s: s.exec(select(User).where(User.name == "ghost")).first())
    finally:
        db.stop()
    assert found is None


def test_user_create_then_passwd(county: Deployment) -> None:
    env = str(county.env)
    created = dalaba_cmd(
        "user", "create", "--config", env, "--name", "wang.duty", "--role", "duty_officer",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert created.returncode == EXIT_OK, created.stderr
    again = dalaba_cmd(
        "user", "create", "--config", env, "--name", "wang.duty", "--role", "duty_officer",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert_mistake(again, EXIT_USAGE, "already exists")
    wrong_role = dalaba_cmd(
        "user", "passwd", "--config", env, "--name", "wang.duty", "--role", "viewer",
        stdin="another password 2\n",
    )  # fmt: skip
    assert_mistake(wrong_role, EXIT_USAGE, "role duty_officer")
    changed = dalaba_cmd(
        "user", "passwd", "--config", env, "--name", "wang.duty", stdin="another password 2\n"
    )
    assert changed.returncode == EXIT_OK, changed.stderr
    db = county.database()
    try:
        user = db.run_sync(lambda s: s.exec(select(User).where(User.name == "wang.duty")).one())
    finally:
        db.stop()
    assert verify_password(user.password_hash, "another password 2")
    assert not verify_password(user.password_hash, PASSWORD)


async def test_token_list_and_revoke_round_trip(county: Deployment) -> None:
    env = str(county.env)
    created = dalaba_cmd(
        "token", "create", "--config", env, "--user", "monitor", "--role", "viewer",
        "--label", "prometheus",
    )  # fmt: skip
    assert created.returncode == EXIT_OK, created.stderr
    token = created.stdout.strip()
    prefix = token[:10]

    db = county.database()
    try:
        assert (await TokenAuthenticator(db).principal_for(token)) is not None
        listed = dalaba_cmd("token", "list", "--config", env)
        assert listed.returncode == EXIT_OK, listed.stderr
        assert token not in listed.stdout  # never the token itself
        row = next(line for line in listed.stdout.splitlines() if prefix in line)
        assert "monitor" in row and "prometheus" in row and "live" in row
        assert "never" not in row  # the lookup above counted as a use

        assert_mistake(
            dalaba_cmd("token", "revoke", "--config", env, "dlb_nosuch"), EXIT_NOT_FOUND, "token"
        )
        revoked = dalaba_cmd("token", "revoke", "--config", env, prefix)
        assert revoked.returncode == EXIT_OK, revoked.stderr
        assert "revoked" in revoked.stdout and token not in revoked.stdout

        # A fresh authenticator (the running controller's forgets within CACHE_S).
        assert (await TokenAuthenticator(db).principal_for(token)) is None
        assert prefix not in dalaba_cmd("token", "list", "--config", env).stdout
        everything = dalaba_cmd("token", "list", "--config", env, "--all").stdout
        assert "revoked" in next(line for line in everything.splitlines() if prefix in line)
        again = dalaba_cmd("token", "revoke", "--config", env, prefix)
        assert again.returncode == EXIT_OK and "already revoked" in again.stdout
        audit = db.run_sync(
            lambda s: s.exec(select(AuditEntry).where(AuditEntry.action == "token.revoke")).all()
        )
        assert [a.detail["prefix"] for a in audit] == [prefix]
    finally:
        db.stop()


def test_provision_unknown_terminal_or_village(county: Deployment, tmp_path: Path) -> None:
    env = str(county.env)
    out = ["--out", str(tmp_path / "out"), "--broker-dir", str(tmp_path / "broker")]
    assert_mistake(
        dalaba_cmd("provision", "--config", env, "d-nowhere-1", *out), EXIT_NOT_FOUND, "d-nowhere-1"
    )
    assert_mistake(
        dalaba_cmd("provision", "--config", env, "--village", "v-nowhere", *out),
        EXIT_NOT_FOUND,
        "village v-nowhere",
    )
    assert_mistake(dalaba_cmd("provision", "--config", env, *out), EXIT_USAGE, "--village")
    assert not (tmp_path / "out").exists()


def test_unreachable_broker_stops_the_controller_with_one_line(county: Deployment) -> None:
    # The county's broker is not started: its port refuses. The controller waits for its
    # first CONNACK (15 s) and then says so.
    result = dalaba_cmd("controller", "--config", str(county.env))
    line = assert_mistake(result, EXIT_UNREACHABLE, "broker", str(county.prepared.broker_port))
    assert "not reachable" in line


# ------------------------------------------------------------------ provision


@pytest.fixture
def fresh(tmp_path: Path, new_database_url: DatabaseUrlFactory) -> Iterator[Deployment]:
    deployment = prepare(tmp_path, new_database_url())
    try:
        yield deployment
    finally:
        deployment.prepared.broker.stop()


@pytest.mark.broker
async def test_provision_rotates_a_terminal_that_then_connects(
    fresh: Deployment, tmp_path: Path
) -> None:
    prepared = fresh.prepared
    broker_dir = prepared.data_dir / "broker"  # the broker's live files: merged, not rewritten
    device_id = prepared.county.villages[0].device_ids()[0]
    old = DeviceConfig.load(device_dir(prepared.data_dir, device_id) / "device.json")
    before = read_password_file(broker_dir / "passwd")
    acl_before = (broker_dir / "acl").read_text()
    out = tmp_path / "out"
    args = ["provision", "--config", str(fresh.env), device_id, "--out", str(out)]
    args += ["--broker-dir", str(broker_dir), "--state-dir", str(tmp_path / "flash")]

    # The broker knows this terminal, but its device file is not in --out.
    assert_mistake(dalaba_cmd(*args), EXIT_USAGE, "--rotate")

    result = dalaba_cmd(*args, "--rotate")
    assert result.returncode == EXIT_OK, result.stderr
    device_file = out / device_id / "device.json"
    assert str(device_file) in result.stdout and "new password" in result.stdout
    assert device_file.stat().st_mode & 0o777 == 0o600
    config = DeviceConfig.load(device_file)
    assert config.mqtt_username == device_id
    assert config.mqtt_password.get_secret_value() != old.mqtt_password.get_secret_value()
    assert config.fsync_flash_writes  # a real board
    assert config.controller_public_keys == old.controller_public_keys

    after = read_password_file(broker_dir / "passwd")
    assert list(after) == list(before)  # every account kept, in its place
    assert after[device_id] != before[device_id]
    assert {u: h for u, h in after.items() if u != device_id} == {
        u: h for u, h in before.items() if u != device_id
    }
    assert (broker_dir / "acl").read_text() == acl_before  # same rights as before
    assert (broker_dir / "passwd").stat().st_mode & 0o777 == 0o600

    # Run again without --rotate: the password in the device file is kept.
    kept = dalaba_cmd(*args)
    assert kept.returncode == EXIT_OK and "password kept" in kept.stdout
    assert DeviceConfig.load(device_file).mqtt_password == config.mqtt_password

    await prepared.broker.start_async()
    host, port = "127.0.0.1", prepared.broker_port
    # The old password no longer logs in; the controller's account still does.
    assert mqtt_login(host, port, device_id, old.mqtt_password.get_secret_value()) is not None
    assert mqtt_login(host, port, "dalaba-controller", prepared.controller_password) is None

    agent = EdgeAgent(config, SimHardware.create(tmp_path / "board"))
    try:
        await agent.start(connect_timeout_s=10)
        assert agent.mqtt.connected
    finally:
        await agent.stop()


def test_provision_starts_broker_files_for_a_village(county: Deployment, tmp_path: Path) -> None:
    village = county.prepared.county.villages[1]
    broker_dir = tmp_path / "broker"
    next_key = tmp_path / "next.pub"  # a key rotation's next key, trusted beside the current
    next_key.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    result = dalaba_cmd(
        "provision", "--config", str(county.env), "--village", village.id,
        "--out", str(tmp_path / "out"), "--broker-dir", str(broker_dir),
        "--broker-url", "mqtt://10.20.0.1:1883", "--also-trust", str(next_key),
    )  # fmt: skip
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stderr == ""  # not the loopback warning: the URL is the boards'
    accounts = read_password_file(broker_dir / "passwd")
    assert set(accounts) == {"dalaba-controller", *village.device_ids()}
    acl = (broker_dir / "acl").read_text()
    for device_id in village.device_ids():
        assert f"user {device_id}\n" in acl
        config = DeviceConfig.load(tmp_path / "out" / device_id / "device.json")
        assert config.broker_url == "mqtt://10.20.0.1:1883"
        assert config.controller_public_keys[1] == next_key.read_text()
        assert len(config.controller_public_keys) == 2
    assert f"topic read dalaba/v1/cmd/village/{village.id}" in acl


def test_county_import_adds_what_is_missing(fresh: Deployment, tmp_path: Path) -> None:
    env = str(fresh.env)
    county_file = Path(__file__).resolve().parents[2] / "controller" / "data" / "county.json"
    first = dalaba_cmd("county", "import", "--config", env, str(county_file))
    assert first.returncode == EXIT_OK, first.stderr
    db = fresh.database()
    try:
        rows = db.run_sync(lambda s: s.exec(select(Device)).all())
        village = db.run_sync(lambda s: s.get(Village, "t01-v03"))
    finally:
        db.stop()
    total = sum(v.terminals for v in County.load(county_file).villages)
    assert len(rows) == total
    # Every terminal, the prepared ones too, has its 18-digit resource code.
    assert all(d.resource_code and len(d.resource_code) == 18 for d in rows)
    assert village is not None and village.code == "430131101203"
    assert f"{total - 3} new terminals" in first.stdout  # the prepared county had 3
    again = dalaba_cmd("county", "import", "--config", env, str(county_file))
    assert again.returncode == EXIT_OK and " 0 new terminals" in again.stdout
    broken = tmp_path / "county.json"
    broken.write_text('{"county": {"name": "x"}}')
    assert_mistake(
        dalaba_cmd("county", "import", "--config", env, str(broken)), EXIT_USAGE, "county file"
    )
    wrong = json.loads(county_file.read_text())
    wrong["townships"][0]["villages"][0]["code"] = "43013110120"
    broken.write_text(json.dumps(wrong, ensure_ascii=False))
    assert_mistake(
        dalaba_cmd("county", "import", "--config", env, str(broken)), EXIT_USAGE, "43013110120"
    )


# ------------------------------------------------------------------ check


def check_lines(result: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    lines: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        status, _, rest = line.partition("  ")
        name = rest.strip().split("  ")[0]
        lines.setdefault(name, []).append(status.strip())
    return lines


@pytest.mark.broker
async def test_check_passes_on_a_prepared_county(fresh: Deployment) -> None:
    await fresh.prepared.broker.start_async()
    result = dalaba_cmd("check", "--config", str(fresh.env), "--broker-login")
    assert "Traceback" not in result.stderr
    found = check_lines(result)
    assert set(found) >= {"settings", "database", "schema", "broker", "signing key", "media"}
    assert all(status in ("ok", "warn") for statuses in found.values() for status in statuses), (
        result.stdout
    )
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert "logged in as dalaba-controller" in result.stdout


@pytest.mark.broker
async def test_check_reports_what_is_wrong(fresh: Deployment) -> None:
    settings = fresh.prepared.settings
    settings.signing_key_path.unlink()
    shutil.rmtree(settings.media_dir, ignore_errors=True)
    # Root writes through any mode bits: a file where the directory should be is a
    # failure for every user.
    settings.media_dir.write_text("not a directory")
    result = dalaba_cmd("check", "--config", str(fresh.env))
    found = check_lines(result)
    assert found["signing key"] == ["FAIL"]
    assert found["media"] == ["FAIL"]
    assert found["broker"] == ["FAIL"]  # not started: nothing listens on its port
    assert found["database"] == ["ok"]
    assert "missing" in result.stdout and "not a directory" in result.stdout
    assert result.returncode == EXIT_FAILED
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any mode bits")
def test_check_finds_an_unwritable_media_directory(fresh: Deployment) -> None:
    media = fresh.prepared.settings.media_dir
    media.mkdir(exist_ok=True)
    media.chmod(0o500)
    try:
        result = dalaba_cmd("check", "--config", str(fresh.env))
    finally:
        media.chmod(0o700)
    assert check_lines(result)["media"] == ["FAIL"]
    assert "not writable" in result.stdout


@pytest.mark.postgres
def test_check_compares_the_clock_with_postgresql(tmp_path: Path) -> None:
    urls = throwaway_postgres_url()
    url = next(urls)
    try:
        deployment = prepare(tmp_path, database_url=url)
        result = dalaba_cmd("check", "--config", str(deployment.env))
        clock = [line for line in result.stdout.splitlines() if "database server's clock" in line]
        assert clock and clock[0].startswith("ok"), result.stdout
        assert check_lines(result)["database"] == ["ok"]
    finally:
        urls.close()
