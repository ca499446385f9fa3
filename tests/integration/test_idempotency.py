"""`Idempotency-Key` against the running controller: a retried emergency plays once on
every terminal (counted from the simulated speakers' own plays.jsonl), concurrent twins
send once, a reused key with another request is a 422 naming the header, errors are not
remembered, and cancel, resend, approve and schedule creation replay their first answer.
The store's expiry is checked on a real SQLite database."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from controller.api import keys
from controller.auth import Role, create_user_and_token
from controller.db import Database
from controller.idempotency import (
    DONE,
    IdempotencyRecord,
    IdempotencyStore,
    fingerprint,
    record_id,
)
from dalaba.protocol import now_ms

EMERGENCY = {
    "text": "山洪预警：请立即转移。",
    "category": "flood",
    "priority": "emergency",
    "level": 3,
    "repeat": 1,  # short audio: the test waits for every terminal to finish playing
}


async def post(
    county: Any,
    path: str,
    body: Any = None,
    *,
    key: str | None = None,
    token: str | None = None,
) -> tuple[int, Any, Any]:
    headers = county.headers(token)
    if key is not None:
        headers["Idempotency-Key"] = key
    async with county.http.post(county.url + path, json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


def plays_of(county: Any, broadcast_ids: set[str]) -> dict[str, int]:
    """Plays per terminal of any of `broadcast_ids`, from the speakers' own record."""
    counts: dict[str, int] = {}
    for device_id in county.fleet.configs:
        n = sum(1 for e in county.plays(device_id) if e["broadcast_id"] in broadcast_ids)
        if n:
            counts[device_id] = n
    return counts


async def broadcasts_with_text(county: Any, text: str) -> set[str]:
    _, page = await county.api("GET", "/api/broadcasts?limit=500", expect=200)
    return {b["id"] for b in page["broadcasts"] if b["text"] == text}


@pytest.mark.broker
@pytest.mark.slow
async def test_a_retried_emergency_plays_once(make_county) -> None:
    county = await make_county(villages=4)
    _, villages = await county.api("GET", "/api/villages", expect=200)
    area = {"villages": [v["id"] for v in villages["villages"][:2]]}
    expected = county.terminals_in(area)
    body = {**EMERGENCY, "targets": area}
    key = str(uuid.uuid4())

    status, first, headers = await post(county, "/api/broadcasts", body, key=key)
    assert status == 201 and "Idempotent-Replayed" not in headers
    # The client's retry (its first answer was lost on the way): same key, same body.
    status, again, headers = await post(county, "/api/broadcasts", body, key=key)
    assert status == 201 and again == first
    assert headers["Idempotent-Replayed"] == "true"
    assert headers["Location"] == f"/api/broadcasts/{first['id']}"
    # Key order and spacing do not make it another request.
    reordered = dict(reversed(list(body.items())))
    status, third, _ = await post(county, "/api/broadcasts", reordered, key=key)
    assert status == 201 and third == first

    # Twins racing each other with another key: one send between them.
    text2 = "山洪预警：请马上转移。"
    body2 = {**body, "text": text2}
    key2 = str(uuid.uuid4())
    (s1, a1, h1), (s2, a2, h2) = await asyncio.gather(
        post(county, "/api/broadcasts", body2, key=key2),
        post(county, "/api/broadcasts", body2, key=key2),
    )
    assert (s1, s2) == (201, 201) and a1 == a2
    assert sorted([h1.get("Idempotent-Replayed"), h2.get("Idempotent-Replayed")], key=str) == [
        None,
        "true",
    ]

    assert await broadcasts_with_text(county, EMERGENCY["text"]) == {first["id"]}
    assert await broadcasts_with_text(county, text2) == {a1["id"]}
    county.targeted[first["id"]] = county.targeted[a1["id"]] = expected
    for bid in (first["id"], a1["id"]):
        await county.wait_states(bid, {"done"})
        assert plays_of(county, {bid}) == dict.fromkeys(expected, 1)
    _, audit = await county.api("GET", "/api/audit?action=broadcast.create", expect=200)
    assert sorted(e["target"] for e in audit["entries"]) == sorted([first["id"], a1["id"]])


@pytest.mark.broker
@pytest.mark.slow
async def test_key_reuse_errors_and_other_users(make_county) -> None:
    county = await make_county(villages=2)
    _, villages = await county.api("GET", "/api/villages", expect=200)
    area = {"villages": [villages["villages"][0]["id"]]}
    body = {**EMERGENCY, "targets": area, "drill": True}
    key = "retry-" + uuid.uuid4().hex

    # An error answer is not remembered: nothing was sent, the retry really tries.
    status, err, _ = await post(county, "/api/broadcasts", {**body, "level": 9}, key=key)
    assert status == 400 and err["error"]["field"] == "level"
    status, first, _ = await post(county, "/api/broadcasts", body, key=key)
    assert status == 201

    # The same key for a different request: refused, naming the header.
    status, err, _ = await post(county, "/api/broadcasts", {**body, "level": 4}, key=key)
    assert status == 422 and err["error"]["field"] == "Idempotency-Key"
    assert err["error"]["code"] == "idempotency_key_reused"
    status, err, _ = await post(county, f"/api/broadcasts/{first['id']}/cancel", key=key)
    assert status == 422  # another route is another request

    # Another user's key is theirs: the same string sends their own broadcast.
    db = county.controller.app[keys.DB]
    other = await db.run(lambda s: create_user_and_token(s, "duty-x", Role.DUTY_OFFICER, None))
    status, theirs, _ = await post(county, "/api/broadcasts", body, key=key, token=other)
    assert status == 201 and theirs["id"] != first["id"]

    for bad in ("", "x" * 256, "has space"):
        async with county.http.post(
            county.url + "/api/broadcasts",
            json=body,
            headers={**county.headers(), "Idempotency-Key": bad},
        ) as resp:
            err = await resp.json()
            assert resp.status == 400 and err["error"]["field"] == "Idempotency-Key", bad

    # Cancel: the retry gets the first answer, not "already cancelled".
    cancel_key = str(uuid.uuid4())
    path = f"/api/broadcasts/{first['id']}/cancel"
    status, cancelled, _ = await post(county, path, key=cancel_key)
    assert status == 200 and cancelled["status"] == "cancelled"
    status, again, headers = await post(county, path, key=cancel_key)
    assert status == 200 and again == cancelled and headers["Idempotent-Replayed"] == "true"
    status, err, _ = await post(county, path, key=str(uuid.uuid4()))
    assert status == 409 and err["error"]["code"] == "already_cancelled"
    _, audit = await county.api("GET", f"/api/audit?action=broadcast.cancel&target={first['id']}")
    assert len(audit["entries"]) == 1

    # Resend: refused (nothing to resend) is an error, so not remembered either.
    resend = f"/api/broadcasts/{theirs['id']}/resend"
    status, err, _ = await post(county, resend, key="resend-1", token=other)
    assert status == 409 and err["error"]["code"] == "nothing_to_resend"

    # A schedule created twice with one key exists once.
    schedule = {
        "text": "森林防火，人人有责。",
        "category": "forest_fire",
        "priority": "notice",
        "name": "防火提醒",
        "recurrence": {"kind": "daily", "times": ["07:00"], "start_date": "2026-01-01"},
        "targets": area,
    }
    sch_key = str(uuid.uuid4())
    status, sch, _ = await post(county, "/api/schedules", schedule, key=sch_key)
    assert status == 201, sch
    status, sch2, headers = await post(county, "/api/schedules", schedule, key=sch_key)
    assert status == 201 and sch2["id"] == sch["id"] and headers["Location"].endswith(sch["id"])
    _, listed = await county.api("GET", "/api/schedules", expect=200)
    assert [x["id"] for x in listed["schedules"] if x["name"] == "防火提醒"] == [sch["id"]]


@pytest.mark.broker
@pytest.mark.slow
async def test_an_approval_retried_sends_once(make_county) -> None:
    county = await make_county(villages=2, two_person_levels=(1, 2))
    db = county.controller.app[keys.DB]
    second = await db.run(lambda s: create_user_and_token(s, "duty-b", Role.DUTY_OFFICER, None))
    body = {**EMERGENCY, "level": 1, "targets": {"all": True}}
    request_key = str(uuid.uuid4())
    status, pending, _ = await post(county, "/api/broadcasts", body, key=request_key)
    assert status == 202 and pending["status"] == "pending_approval"
    # The 202 is an answer too: the retry does not file a second request.
    status, again, _ = await post(county, "/api/broadcasts", body, key=request_key)
    assert status == 202 and again["approval_id"] == pending["approval_id"]
    _, listed = await county.api("GET", "/api/approvals", expect=200)
    assert [a["id"] for a in listed["approvals"]] == [pending["approval_id"]]

    path = f"/api/approvals/{pending['approval_id']}/approve"
    key = str(uuid.uuid4())
    status, approved, _ = await post(county, path, {"reason": "已核实"}, key=key, token=second)
    assert status == 201
    status, replayed, headers = await post(
        county, path, {"reason": "已核实"}, key=key, token=second
    )
    assert status == 201 and replayed == approved and headers["Idempotent-Replayed"] == "true"
    status, err, _ = await post(county, path, {"reason": "已核实"}, token=second)
    assert status == 409, err  # without the key: already approved

    bid = approved["id"]
    assert await broadcasts_with_text(county, EMERGENCY["text"]) == {bid}
    expected = county.terminals_in({"all": True})
    county.targeted[bid] = expected
    await county.wait_states(bid, {"done"})
    assert plays_of(county, {bid}) == dict.fromkeys(expected, 1)


async def test_keys_expire_after_a_day_and_stay_per_user(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'idem.sqlite3'}")
    db.start()
    try:
        store = IdempotencyStore(db)  # the table comes from the migrations
        rid = record_id("duty1", "k1")
        assert rid != record_id("duty2", "k1")
        fp = fingerprint("POST", "/api/broadcasts", b'{"a": 1, "b": 2}')
        assert fp == fingerprint("POST", "/api/broadcasts", b'{"b":2,"a":1}')
        assert fp != fingerprint("POST", "/api/broadcasts?x=1", b'{"a": 1, "b": 2}')

        claim = await store.claim(rid, "duty1", fp, "POST", "/api/broadcasts")
        assert claim.owner
        again = await store.claim(rid, "duty1", fp, "POST", "/api/broadcasts")
        assert not again.owner and again.record is not None and again.record.state == "pending"

        def age(session: Any) -> None:
            row = session.get(IdempotencyRecord, rid)
            row.state = DONE
            row.expires_ms = now_ms() - 1

        await db.run(age)
        fresh = await store.claim(rid, "duty1", fp, "POST", "/api/broadcasts")
        assert fresh.owner  # expired: the key is free again
        row = await db.run(lambda s: s.get(IdempotencyRecord, rid))
        assert row is not None and row.expires_ms - row.created_ms == 24 * 3600 * 1000
    finally:
        db.stop()


@pytest.mark.postgres
async def test_racing_claims_on_postgresql_leave_one_owner(pg_url: str) -> None:
    """Replicas share the database: of many claims of one key at once, one wins."""
    db = Database(pg_url)
    db.start()
    try:
        stores = [IdempotencyStore(db) for _ in range(8)]
        rid = record_id("duty1", "race")
        fp = fingerprint("POST", "/api/broadcasts", b"{}")
        claims = await asyncio.gather(
            *(s.claim(rid, "duty1", fp, "POST", "/api/broadcasts") for s in stores)
        )
        assert sum(c.owner for c in claims) == 1
        assert all(c.record is not None for c in claims if not c.owner)
    finally:
        db.stop()
