"""The same spine on PostgreSQL, the scale-out database. Uses the server on
127.0.0.1:5432 when one answers (a throwaway database per test); skips otherwise."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.broker]


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
