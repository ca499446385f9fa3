"""Schema migrations on real SQLite and PostgreSQL: a database made by the previous
release (0.1.0) is upgraded by the real `dalaba db upgrade` with its data intact, the
controller's start upgrades or refuses as `auto_migrate` says, `dalaba db copy` moves a
county from SQLite to PostgreSQL, and the newest revision describes exactly the models
(a model changed without a revision fails here)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.engine import Connection
from sqlmodel import Session
from sqlmodel import select as select_models

import controller
from controller import migrations
from controller.db import TABLE_MODULES, Database, SchemaError, table_metadata
from controller.models import Broadcast, Delivery, Device, User
from tests.support import throwaway_postgres_url

pytestmark = pytest.mark.timeout(180)

T0 = 1_767_000_000_000  # epoch ms; any fixed instant


# ------------------------------------------------------------------ databases


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dalaba.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from throwaway_postgres_url()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


def run_revisions(url: str, target: str) -> None:
    """Build the schema by running the revisions themselves (not create_all)."""
    engine = migrations.migration_engine(url)
    try:
        with migrations.locked(engine) as conn:
            command.upgrade(migrations.alembic_config(conn, table_metadata()), target)
    finally:
        engine.dispose()


def _json(conn: Connection, name: str) -> str:
    return f"CAST(:{name} AS JSON)" if conn.dialect.name == "postgresql" else f":{name}"


def make_release_0_1_0(url: str) -> None:
    """A database as Dalaba 0.1.0 left it: its tables (revision 0001, which was generated
    from 0.1.0's models), no alembic_version, and a small county written with plain SQL
    in 0.1.0's columns."""
    run_revisions(url, migrations.BASELINE)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        j = lambda name: _json(conn, name)  # noqa: E731
        conn.execute(
            text(
                "INSERT INTO township (id, name, name_en, lat, lon, quiet_start, quiet_end) "
                "VALUES ('t1', '城关镇', 'Chengguan', 30.1, 104.2, '22:00', '06:30')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO village (id, township_id, name, lat, lon) "
                "VALUES ('v1', 't1', '东风村', 30.11, 104.21)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO device (id, village_id, township_id, name, online, last_seen_ms, "
                "status_changed_ms, firmware, volume, playing_broadcast_id, telemetry, faults, "
                f"telemetry_history_ms) VALUES ('d1', 'v1', 't1', '东风村 1号', :online, :seen, "
                f"NULL, '1.0.0', 80, NULL, {j('telemetry')}, {j('faults')}, NULL)"
            ),
            {
                "online": True,
                "seen": T0,
                "telemetry": json.dumps({"signal_dbm": -71}),
                "faults": json.dumps({"speaker_line": T0 - 5000}),
            },
        )
        # A second terminal with no telemetry yet: SQL NULL, which must stay NULL.
        conn.execute(
            text(
                "INSERT INTO device (id, village_id, township_id, name, online, telemetry, "
                f"faults) VALUES ('d2', 'v1', 't1', '东风村 2号', :online, NULL, {j('faults')})"
            ),
            {"online": False, "faults": "{}"},
        )
        conn.execute(
            text(
                "INSERT INTO media (sha256, mime, size, duration_ms, source, voices, text, "
                "created_ms) VALUES (:sha, 'audio/ogg', 12345, 4200, 'speech', 'espeak-ng', "
                "'防汛通知', :t)"
            ),
            {"sha": "a" * 64, "t": T0},
        )
        conn.execute(
            text(
                "INSERT INTO broadcast (id, created_ms, created_by, title, text, media_sha256, "
                "category, priority, level, drill, targets, target, start_at_ms, expires_at_ms, "
                "status, swept, dispatch, command_id, voices, device_count, cancelled_ms, "
                "cancelled_by) VALUES ('b1', :t, 'duty1', '防汛', '请注意防汛', :sha, 'flood', "
                f"'emergency', 2, :drill, {j('targets')}, {j('target')}, :t, :exp, 'finished', "
                ":swept, 'published', 'c1', 'espeak-ng', 2, NULL, NULL)"
            ),
            {
                "t": T0,
                "exp": T0 + 3_600_000,
                "sha": "a" * 64,
                "drill": False,
                "swept": True,
                "targets": json.dumps({"villages": ["v1"]}),
                "target": json.dumps({"devices": ["d1", "d2"]}),
            },
        )
        for device, state in (("d1", "done"), ("d2", "expired")):
            conn.execute(
                text(
                    "INSERT INTO delivery (broadcast_id, device_id, state, reason, updated_ms, "
                    "last_seq, state_source, transitions) VALUES ('b1', :device, :state, NULL, "
                    f":t, 7, 'device', {j('transitions')})"
                ),
                {
                    "device": device,
                    "state": state,
                    "t": T0 + 2000,
                    "transitions": json.dumps([{"state": state, "at": T0 + 2000}]),
                },
            )
        conn.execute(
            text(
                'INSERT INTO "user" (name, role, township_id, password_hash, disabled, created_ms) '
                "VALUES ('duty1', 'duty_officer', NULL, NULL, :disabled, :t)"
            ),
            {"disabled": False, "t": T0},
        )
        conn.execute(
            text(
                "INSERT INTO apitoken (user_id, token_hash, prefix, label, created_ms, "
                "last_used_ms, revoked) VALUES ((SELECT id FROM \"user\" WHERE name = 'duty1'), "
                ":hash, 'dlb_abcd', 'ops', :t, NULL, :revoked)"
            ),
            {"hash": "f" * 64, "t": T0, "revoked": False},
        )
        conn.execute(
            text(
                "INSERT INTO schedule (id, name, status, version, created_ms, created_by, "
                "updated_ms, updated_by, township_ids, request, recurrence, text, media_sha256, "
                "voices, template_id, params, title, category, priority, level, drill, languages, "
                "repeat, targets, target, expires_in_s, misfire_grace_s) VALUES ('s1', '每日防火', "
                f"'active', 1, :t, 'clerk', :t, 'clerk', {j('tids')}, {j('empty')}, {j('rec')}, "
                f"'注意防火', :sha, 'espeak-ng', NULL, {j('empty')}, '防火', 'fire', 'notice', "
                f"NULL, :drill, {j('langs')}, NULL, {j('targets')}, {j('targets')}, 1800, 60)"
            ),
            {
                "t": T0,
                "sha": "a" * 64,
                "drill": False,
                "tids": json.dumps(["t1"]),
                "empty": "{}",
                "rec": json.dumps({"kind": "daily", "times": ["07:30"]}),
                "langs": json.dumps(["cmn"]),
                "targets": json.dumps({"townships": ["t1"]}),
            },
        )
    engine.dispose()


def revision_of(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def dalaba(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real `dalaba` command of the interpreter running the tests (the project's
    venv), with no DALABA_* variable of the test runner's leaking in."""
    script = Path(sys.executable).with_name("dalaba")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "dalaba_ops.cli"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DALABA_")}
    return subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
        check=False,
    )


def check_county_intact(url: str) -> None:
    """Every row of the 0.1.0 county as it was written, the new columns at the values a
    new row gets, and the models reading and writing the upgraded tables."""
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, name, quiet_start, lat FROM township")).all()
        assert [tuple(r) for r in rows] == [("t1", "城关镇", "22:00", 30.1)]
        assert conn.execute(text("SELECT name FROM village WHERE id = 'v1'")).scalar() == "东风村"
        assert conn.execute(text("SELECT COUNT(*) FROM delivery")).scalar() == 2
        # 0009: each delivery's JSON list is rows of delivery_transition, and the counts
        # per state (and of terminals that answered) are built.
        moved = conn.execute(
            text("SELECT device_id, state, at_ms FROM delivery_transition ORDER BY device_id")
        ).all()
        assert [tuple(r) for r in moved] == [
            ("d1", "done", T0 + 2000),
            ("d2", "expired", T0 + 2000),
        ]
        counts = conn.execute(text("SELECT state, n FROM broadcast_count ORDER BY state")).all()
        assert [tuple(r) for r in counts] == [("done", 1), ("expired", 1), ("~reached", 2)]
        assert conn.execute(text('SELECT role FROM "user"')).scalar() == "duty_officer"
        assert conn.execute(text("SELECT prefix FROM apitoken")).scalar() == "dlb_abcd"
        assert conn.execute(text("SELECT name FROM schedule")).scalar() == "每日防火"
        assert conn.execute(text("SELECT size FROM media")).scalar() == 12345
        columns = {c["name"] for c in inspect(conn).get_columns("broadcast")}
        assert {"attempt", "resends"} <= columns
        assert "telemetry_interval_s" in {c["name"] for c in inspect(conn).get_columns("device")}
        assert conn.execute(text("SELECT telemetry IS NULL FROM device WHERE id = 'd2'")).scalar()
    engine.dispose()

    db = Database(url, auto_migrate=False)  # at head now: nothing left to do
    db.start()
    try:
        with db.session() as s:
            b = s.get(Broadcast, "b1")
            assert b is not None
            assert (b.attempt, b.resends, b.target) == (0, [], {"devices": ["d1", "d2"]})
            assert b.drill is False and b.swept is True and b.level == 2
            deliveries = s.exec(select_models(Delivery).order_by(Delivery.device_id)).all()
            assert [(d.device_id, d.state, d.attempt, d.last_seq) for d in deliveries] == [
                ("d1", "done", 0, 7),
                ("d2", "expired", 0, 7),
            ]
            d1 = s.get(Device, "d1")
            assert d1 is not None
            assert (d1.telemetry, d1.faults, d1.telemetry_interval_s, d1.online) == (
                {"signal_dbm": -71},
                {"speaker_line": T0 - 5000},
                None,
                True,
            )
            # The new columns take writes too.
            b.attempt, b.resends = 1, [{"attempt": 1, "by": "duty1", "devices": ["d2"]}]
            d1.telemetry_interval_s = 60.0
            s.add_all([b, d1])
            s.commit()
        with db.session() as s:
            assert s.get(Broadcast, "b1").resends[0]["devices"] == ["d2"]  # type: ignore[union-attr]
            assert s.get(Device, "d1").telemetry_interval_s == 60.0  # type: ignore[union-attr]
    finally:
        db.stop()


# ------------------------------------------------------------------ upgrade


def test_db_upgrade_keeps_a_0_1_0_database_and_adds_the_new_columns(any_url: str) -> None:
    make_release_0_1_0(any_url)
    assert revision_of(any_url) is None

    before = dalaba("db", "current", "--database-url", any_url)
    assert before.returncode == 1, before.stderr
    assert "made by Dalaba 0.1.0" in before.stdout

    done = dalaba("db", "upgrade", "--database-url", any_url)
    assert done.returncode == 0, done.stderr
    assert f"from {migrations.BASELINE} (Dalaba 0.1.0, " in done.stdout
    assert done.stdout.rstrip().endswith(f" to {migrations.head()}")
    assert revision_of(any_url) == migrations.head()
    check_county_intact(any_url)

    again = dalaba("db", "upgrade", "--database-url", any_url)
    assert again.returncode == 0, again.stderr
    assert "newest revision" in again.stdout
    after = dalaba("db", "current", "--database-url", any_url)
    assert (after.returncode, after.stdout.strip().endswith(f"{migrations.head()} (head)")) == (
        0,
        True,
    )


def test_db_upgrade_reads_the_database_from_the_config_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_release_0_1_0(f"sqlite:///{data / 'dalaba.db'}")
    env_file = tmp_path / "dalaba.env"
    env_file.write_text(f"DALABA_DATA_DIR={data}\n")
    done = dalaba("db", "upgrade", "--config", str(env_file))
    assert done.returncode == 0, done.stderr
    assert revision_of(f"sqlite:///{data / 'dalaba.db'}") == migrations.head()


def test_controller_start_upgrades_a_0_1_0_database(sqlite_url: str) -> None:
    make_release_0_1_0(sqlite_url)
    db = Database(sqlite_url)  # auto_migrate defaults to true
    db.start()
    db.stop()
    assert revision_of(sqlite_url) == migrations.head()
    check_county_intact(sqlite_url)


def test_without_auto_migrate_a_behind_database_is_refused_and_left_alone(
    sqlite_url: str,
) -> None:
    make_release_0_1_0(sqlite_url)
    with pytest.raises(SchemaError, match=r"run `dalaba db upgrade`"):
        Database(sqlite_url, auto_migrate=False).start()
    assert revision_of(sqlite_url) is None
    engine = create_engine(sqlite_url)
    with engine.connect() as conn:
        assert "attempt" not in {c["name"] for c in inspect(conn).get_columns("delivery")}
    engine.dispose()


def test_the_controller_command_refuses_with_one_line(tmp_path: Path, sqlite_url: str) -> None:
    make_release_0_1_0(sqlite_url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env_file = tmp_path / "dalaba.env"
    env_file.write_text(
        f"DALABA_DATA_DIR={tmp_path / 'data'}\n"
        f"DALABA_DATABASE_URL={sqlite_url}\n"
        "DALABA_AUTO_MIGRATE=false\n"
        f"DALABA_HTTP_PORT={port}\n"
        "DALABA_BROKER_URL=mqtt://127.0.0.1:9\n"
        "DALABA_BROKER_PASSWORD=not-a-placeholder-0123456789\n"
    )
    result = dalaba("controller", "--config", str(env_file))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "run `dalaba db upgrade`" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert revision_of(sqlite_url) is None


def test_a_development_builds_database_is_recognised_by_its_columns(sqlite_url: str) -> None:
    """Between releases, a build made its tables with create_all and kept no revision:
    its tables are those of one revision exactly, which is where the upgrade starts."""
    run_revisions(sqlite_url, "0002")
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    engine.dispose()
    done = dalaba("db", "upgrade", "--database-url", sqlite_url)
    assert done.returncode == 0, done.stderr
    assert "from 0002 (a development build, no revision kept)" in done.stdout
    assert revision_of(sqlite_url) == migrations.head()
    assert_models_match(sqlite_url)


def test_a_database_from_a_newer_release_is_refused(sqlite_url: str) -> None:
    Database(sqlite_url).start()
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    engine.dispose()
    with pytest.raises(SchemaError, match="newer release"):
        Database(sqlite_url).start()
    result = dalaba("db", "upgrade", "--database-url", sqlite_url)
    assert result.returncode != 0 and "newer release" in result.stderr
    assert revision_of(sqlite_url) == "f00d"


def test_another_programs_database_is_not_taken_over(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE invoices (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(SchemaError, match="not Dalaba's"):
        Database(sqlite_url).start()
    assert revision_of(sqlite_url) is None


def test_a_new_database_is_created_at_head(any_url: str) -> None:
    db = Database(any_url)
    db.start()
    db.stop()
    assert revision_of(any_url) == migrations.head()
    assert_models_match(any_url)


# ------------------------------------------------------------------ models and revisions


def assert_models_match(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            differences = compare_metadata(ctx, table_metadata())
    finally:
        engine.dispose()
    assert differences == [], (
        "the models and the newest revision differ: add a revision "
        "(python -m controller.migrations revision -m '...'):\n" + "\n".join(map(str, differences))
    )


def test_the_revisions_build_exactly_the_models(any_url: str) -> None:
    """Every revision run in order, from nothing, gives the tables the models describe:
    a model changed without a revision fails here."""
    run_revisions(any_url, "head")
    assert_models_match(any_url)


def test_every_module_with_tables_is_listed() -> None:
    """A table in a module missing from TABLE_MODULES would be in no revision check (and
    in the database only when something else happened to import it first)."""
    root = Path(controller.__file__).parent
    with_tables = {
        ".".join(path.relative_to(root.parent).with_suffix("").parts)
        for path in root.rglob("*.py")
        if "table=True" in path.read_text() and "migrations" not in path.parts
    }
    assert with_tables <= set(TABLE_MODULES)


def test_one_line_of_history() -> None:
    """Revisions form one line from the baseline: two heads would mean two releases'
    changes were never put in order."""
    scripts = migrations.scripts()
    assert len(scripts.get_heads()) == 1
    chain = [s.revision for s in scripts.walk_revisions()]
    assert chain[-1] == migrations.BASELINE


# ------------------------------------------------------------------ copy


@pytest.mark.postgres
def test_db_copy_moves_a_county_from_sqlite_to_postgresql(
    sqlite_url: str, postgres_url: str
) -> None:
    make_release_0_1_0(sqlite_url)
    assert dalaba("db", "upgrade", "--database-url", sqlite_url).returncode == 0

    done = dalaba("db", "copy", "--from", sqlite_url, "--to", postgres_url, "--batch-rows", "1")
    assert done.returncode == 0, done.stderr
    assert "counts checked" in done.stdout
    assert revision_of(postgres_url) == migrations.head()

    source, target = create_engine(sqlite_url), create_engine(postgres_url)
    try:
        with source.connect() as s, target.connect() as t:
            for table in table_metadata().sorted_tables:
                count = select(func.count()).select_from(table)
                assert s.execute(count).scalar() == t.execute(count).scalar(), table.name
            assert t.execute(text("SELECT telemetry IS NULL FROM device WHERE id = 'd2'")).scalar()
            assert t.execute(text("SELECT drill, swept FROM broadcast")).one() == (False, True)
            assert t.execute(text("SELECT target::text FROM broadcast")).scalar() == (
                '{"devices": ["d1", "d2"]}'
            )
        # The id sequences continue after the copied ids instead of colliding with them.
        with Session(target) as session:
            user = User(name="clerk2", role="viewer", created_ms=T0)
            session.add(user)
            session.commit()
            copied_max = session.exec(
                select_models(func.max(User.id)).where(User.name != "clerk2")
            ).one()
            assert copied_max is not None and user.id == copied_max + 1
    finally:
        source.dispose()
        target.dispose()
    check_county_intact(postgres_url)

    again = dalaba("db", "copy", "--from", sqlite_url, "--to", postgres_url)
    assert again.returncode != 0
    assert "already has rows" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_db_copy_refuses_a_source_behind_this_release(sqlite_url: str, tmp_path: Path) -> None:
    make_release_0_1_0(sqlite_url)
    target = f"sqlite:///{tmp_path / 'target.db'}"
    result = dalaba("db", "copy", "--from", sqlite_url, "--to", target)
    assert result.returncode != 0
    assert "run `dalaba db upgrade` on it first" in result.stderr
    assert revision_of(sqlite_url) is None
