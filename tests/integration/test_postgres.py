"""The PostgreSQL the tests run on (tests/support.py, `db_backend` in conftest.py).

Every integration test that builds a county runs on SQLite and on PostgreSQL; these
check the machinery that makes the PostgreSQL half possible and fast: a database per
county copied from a template already at this release's schema, dropped after the test,
and a private cluster started by the tests where no server listens."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from controller import migrations
from tests.support import (
    DbBackend,
    PrivateCluster,
    create_postgres_database,
    drop_postgres_database,
    postgres_binaries,
    require_postgres,
)

pytestmark = [pytest.mark.postgres]


def revision_of(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def database_names(backend: DbBackend) -> set[str]:
    assert backend.server is not None
    with backend.server.admin() as admin:
        return {r[0] for r in admin.execute("SELECT datname FROM pg_database").fetchall()}


def test_each_county_gets_a_database_at_the_schema_head_dropped_afterwards() -> None:
    backend = DbBackend("postgres", require_postgres())
    first, second = backend.new_url(), backend.new_url()
    assert first is not None and second is not None and first != second
    # Copied from the template: at head without this test running a migration.
    assert revision_of(first) == revision_of(second) == migrations.head()
    names = {first.rsplit("/", 1)[1], second.rsplit("/", 1)[1]}
    assert names <= database_names(backend)
    backend.drop(first)
    assert first.rsplit("/", 1)[1] not in database_names(backend)
    backend.drop_all()
    assert not names & database_names(backend)


def test_an_unmigrated_database_is_empty() -> None:
    server = require_postgres()
    name = create_postgres_database(server, migrated=False)
    try:
        engine = create_engine(server.url(name))
        try:
            with engine.connect() as conn:
                tables = conn.execute(
                    text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
                ).scalar()
        finally:
            engine.dispose()
        assert tables == 0
    finally:
        drop_postgres_database(server, name)


def test_a_private_cluster_starts_where_the_binaries_are() -> None:
    """What the tests do where nothing listens on 127.0.0.1:5432 (CI, a laptop): initdb
    and pg_ctl a cluster of their own; here started beside the running server."""
    bin_dir = postgres_binaries()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) installed")
    cluster = PrivateCluster(bin_dir)
    base = cluster.base
    try:
        server = cluster.start()
        assert not isinstance(server, str), server
        assert server.port == cluster.port != 5432
        name = create_postgres_database(server, migrated=False)
        with server.admin() as admin:
            found = admin.execute(
                "SELECT count(*) FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
        assert found == (1,)
    finally:
        cluster.stop()
    assert not Path(base).exists()
