"""The same spine on PostgreSQL, the scale-out database. Uses the server on
127.0.0.1:5432 when one answers (a throwaway database per test); skips otherwise."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.broker]

PG_HOST, PG_PORT = "127.0.0.1", 5432


def _server_answers() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    if not _server_answers():
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432")
    psycopg = pytest.importorskip("psycopg")
    name = f"dalaba_test_{uuid.uuid4().hex[:12]}"
    admin = None
    for user in ("postgres", "root"):
        try:
            admin = psycopg.connect(
                host=PG_HOST, port=PG_PORT, user=user, dbname="postgres", autocommit=True
            )
            break
        except psycopg.OperationalError:
            continue
    if admin is None:
        pytest.skip("PostgreSQL answers but refuses the postgres and root roles")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        user = admin.info.user
        try:
            yield f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_broadcast_reaches_done_with_postgresql(pg_url, make_county):
    # pg_url first: fixtures tear down in reverse, so the county stops before the drop.
    county = await make_county(villages=8, database_url=pg_url)
    bid = await county.broadcast(
        text="森林防火，人人有责。", category="fire_prevention", targets={"townships": ["t01"]}
    )
    view = await county.wait_states(bid, {"done"}, timeout_s=40)
    assert view["summary"]["done"] == len(county.fleet.agents)
    status, err = await county.api(
        "POST",
        "/api/broadcasts",
        json_body={
            "text": "x",
            "category": "flood",
            "priority": "notice",
            "targets": {"villages": ["nope"]},
        },
    )
    assert status == 400 and err["error"]["field"] == "targets.villages[0]"
