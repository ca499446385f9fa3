"""GET /api/broadcasts/{id} at county scale (issue 15): the counts come from the
per-broadcast count table, the deliveries a page at a time by device id, and every page
together is exactly the broadcast's deliveries, each with its history."""

from __future__ import annotations

import pytest

NOTICE = {"text": "村委会通知：明早九点在村部开会。", "category": "meeting", "priority": "notice"}


@pytest.mark.broker
async def test_deliveries_come_a_page_at_a_time_and_the_counts_match_them(make_county) -> None:
    county = await make_county(villages=3)
    bid = await county.broadcast(**NOTICE, targets={"all": True})
    await county.wait_states(bid, {"done"})
    _, whole = await county.api("GET", f"/api/broadcasts/{bid}", expect=200)
    everyone = [d["device_id"] for d in whole["deliveries"]]
    assert len(everyone) >= 3 and whole["deliveries_next"] is None
    assert whole["summary"]["done"] == len(everyone) == whole["reach"]["targeted"]
    assert whole["reach"]["reached"] == len(everyone)
    assert all(
        [t["state"] for t in d["transitions"]][:1] == ["sent"]
        and [t["state"] for t in d["transitions"]][-1] == "done"
        for d in whole["deliveries"]
    ), whole["deliveries"]

    seen: list[str] = []
    path = f"/api/broadcasts/{bid}?limit=2"
    while True:
        _, page = await county.api("GET", path, expect=200)
        assert len(page["deliveries"]) <= 2
        seen += [d["device_id"] for d in page["deliveries"]]
        if page["deliveries_next"] is None:
            break
        path = f"/api/broadcasts/{bid}?limit=2&after={page['deliveries_next']}"
    assert seen == everyone

    _, only = await county.api("GET", f"/api/broadcasts/{bid}?state=sent", expect=200)
    assert only["deliveries"] == [] and only["summary"]["done"] == len(everyone)
    for query, field in (("limit=0", "limit"), ("state=nonsense", "state")):
        _, err = await county.api("GET", f"/api/broadcasts/{bid}?{query}", expect=400)
        assert err["error"]["field"] == field, err
