"""The spine end to end: real Mosquitto, real controller (SQLite, espeak-ng, ffmpeg),
real agents on simulated hardware."""

from __future__ import annotations

import wave

import pytest

from dalaba import protocol as p
from dalaba.signing import Ed25519Signer
from firmware_sim.audio import SAMPLE_RATE

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SHORT_TEXT = "紧急通知：河水上涨，请沿河村民立即转移。"


async def test_county_wide_emergency_reaches_done_on_every_terminal(make_county):
    county = await make_county(villages=164)
    assert len(county.prepared.county.townships) == 12
    terminals = set(county.fleet.agents)
    assert len(terminals) > 164  # some villages have two terminals

    bid = await county.broadcast(
        text=SHORT_TEXT, priority="emergency", level=1, repeat=1, targets={"all": True}
    )
    view = await county.wait_states(bid, {"done"}, timeout_s=60)
    assert view["summary"]["done"] == len(terminals)
    assert {d["device_id"] for d in view["deliveries"]} == terminals
    for d in view["deliveries"]:
        states = [t["state"] for t in d["transitions"]]
        assert states == ["sent", "received", "fetched", "playing", "done"], (
            d["device_id"],
            states,
        )

    reference = county.media_pcm(view["media_id"])
    assert len(reference) > SAMPLE_RATE  # more than half a second of audio
    plays = county.all_plays(bid)
    assert set(plays) == terminals
    for device_id, entries in plays.items():
        assert len(entries) == 1 and entries[0]["completed"], device_id
        assert entries[0]["media_sha256"] == view["media_id"]
        wav_path = county.fleet.hardware[device_id].speaker.record_dir / entries[0]["wav"]
        with wave.open(str(wav_path)) as w:
            assert (w.getframerate(), w.getnchannels()) == (SAMPLE_RATE, 1)
            assert w.readframes(w.getnframes()) == reference, device_id
        # Emergencies force the emergency volume.
        assert entries[0]["volume"] == 100


async def test_offline_terminal_plays_on_reconnect_only_within_expiry(make_county):
    county = await make_county(villages=6)
    back_in_time, too_late = "d-t01-v01-1", "d-t01-v02-1"
    for device_id in (back_in_time, too_late):
        county.fleet.network_down(device_id)

    async def both_offline() -> bool:
        _, body = await county.api("GET", "/api/devices")
        by_id = {d["id"]: d for d in body["devices"]}
        return not by_id[back_in_time]["online"] and not by_id[too_late]["online"]

    await county.wait_for(both_offline, 15, "the two terminals shown offline")

    bid = await county.broadcast(
        text="请注意，今晚有暴雨。",
        priority="emergency",
        level=3,
        repeat=1,
        targets={"villages": ["t01-v01", "t01-v02", "t01-v03"]},
        # Long enough for the first terminals to finish and the first one to reconnect
        # on a loaded machine (10 s once ran out before it was back: "expired before it
        # could play"), short enough to see the second one given up on.
        expires_in_s=20,
    )
    reached_at_once = county.targeted[bid] - {back_in_time, too_late}
    await county.wait_states(bid, dict.fromkeys(reached_at_once, "done"), timeout_s=30)
    view = await county.get_broadcast(bid)
    states = {d["device_id"]: d["state"] for d in view["deliveries"]}
    # Published to terminals the controller knows are offline: waiting on them, not "sent".
    assert states[back_in_time] == "offline" and states[too_late] == "offline", states

    county.fleet.network_up(back_in_time)
    await county.wait_states(bid, {back_in_time: "done"}, timeout_s=30)

    # Past the expiry the other one is given up on; then it comes back: it must not play.
    view = await county.wait_states(bid, {too_late: "expired"}, timeout_s=45)
    late = next(d for d in view["deliveries"] if d["device_id"] == too_late)
    assert "never reached" in late["reason"], late
    county.fleet.network_up(too_late)
    await county.fleet.wait_connected(20)
    # A fresh command reaches it after anything the broker still held for it, and would
    # wait behind an emergency it had accepted: once this one is done, that would have
    # started.
    marker = await county.broadcast(text="测试", targets={"devices": [too_late]})
    await county.wait_states(marker, {"done"}, timeout_s=30)
    assert county.all_plays(bid).keys() == reached_at_once | {back_in_time}
    assert too_late not in county.all_started(bid)
    view = await county.get_broadcast(bid)
    late = next(d for d in view["deliveries"] if d["device_id"] == too_late)
    assert late["state"] == "expired", late


async def test_emergency_preempts_a_playing_notice_which_then_replays(make_county):
    county = await make_county(villages=3)
    device = "d-t01-v01-1"
    notice = await county.broadcast(
        text="各位村民请注意，本周六上午九点在村委会召开村民大会，请各户派代表准时参加。",
        category="meeting",
        priority="notice",
        targets={"villages": ["t01-v01"]},
    )
    await county.wait_states(notice, {device: "playing"}, timeout_s=30)
    emergency = await county.broadcast(
        text=SHORT_TEXT, priority="emergency", level=2, repeat=1, targets={"villages": ["t01-v01"]}
    )
    await county.wait_states(emergency, {device: "done"}, timeout_s=40)
    await county.wait_states(notice, {device: "done"}, timeout_s=60)

    view = await county.get_broadcast(notice)
    states = [t["state"] for t in view["deliveries"][0]["transitions"]]
    assert states == ["sent", "received", "fetched", "playing", "preempted", "playing", "done"]
    plays = [(e["broadcast_id"], e["completed"]) for e in county.plays(device)]
    assert plays == [(notice, False), (emergency, True), (notice, True)]


async def test_forged_replayed_and_expired_commands_are_refused_and_reported(make_county):
    county = await make_county(villages=4)
    terminals = set(county.fleet.agents)
    captured: list[bytes] = []
    # The attacker listens on the command topics to capture a genuine command.
    attacker = await county.attacker(
        subscribe=p.Topics.ALL_COMMANDS, on_message=lambda _t, payload: captured.append(payload)
    )  # returns once its subscription is in force

    genuine = await county.broadcast(
        text="防火提醒：请勿野外用火。", category="fire_prevention", targets={"all": True}
    )
    await county.wait_states(genuine, {"done"}, timeout_s=40)
    assert len(captured) == 1

    # 1. forged: well-formed, signed with a key the terminals do not trust.
    forger = Ed25519Signer.generate()
    genuine_cmd = county.open_unverified(captured[0])
    forged_body = genuine_cmd.body.model_copy(
        update={"broadcast_id": "forged0001", "start_at": p.now_ms()}
    )
    forged = p.Command.new(forged_body, p.Target(all=True), p.now_ms() + 60_000)
    await attacker.publish_confirmed(p.Topics.COMMAND_ALL, p.seal(forged, forger))
    # 2. replayed: the captured genuine command, published again while still valid.
    await attacker.publish_confirmed(p.Topics.COMMAND_ALL, captured[0])
    # 3. expired: correctly signed by the controller's key, but past its validity.
    controller_key = Ed25519Signer.load_or_create(county.prepared.settings.signing_key_path)
    old = p.Command(
        id="expired0001",
        issued_at=p.now_ms() - 120_000,
        expires_at=p.now_ms() - 60_000,
        target=p.Target(all=True),
        body=forged_body.model_copy(update={"broadcast_id": "expired0001"}),
    )
    await attacker.publish_confirmed(p.Topics.COMMAND_ALL, p.seal(old, controller_key))
    # 4. a genuine command re-published onto a topic it was not addressed to.
    village_only = await county.broadcast(
        text="测试", category="other", targets={"villages": ["t01-v01"]}
    )
    await county.wait_states(village_only, {"done"}, timeout_s=40)
    village_envelope = captured[-1]
    await attacker.publish_confirmed(p.Topics.command_village("t01-v02"), village_envelope)

    async def all_reported() -> bool:
        _, body = await county.api("GET", "/api/security-events")
        reasons = [e["reason"] for e in body["events"]]
        return (
            reasons.count("bad_signature") == len(terminals)
            and reasons.count("replayed") == len(terminals)
            and reasons.count("expired") == len(terminals)
            and reasons.count("not_addressed") >= 1
        )

    await county.wait_for(all_reported, 20, "every terminal reporting every rejection")
    _, body = await county.api("GET", "/api/security-events")
    forged_events = [e for e in body["events"] if e["reason"] == "bad_signature"]
    assert all(not e["known_command"] for e in forged_events)
    replay_events = [e for e in body["events"] if e["reason"] == "replayed"]
    assert all(e["known_command"] and e["broadcast_id"] == genuine for e in replay_events)

    for device_id in terminals:
        played = [e["broadcast_id"] for e in county.plays(device_id)]
        assert "forged0001" not in played and "expired0001" not in played
        assert played.count(genuine) == 1, device_id
    # The genuine broadcast's deliveries were not disturbed by the replay.
    view = await county.get_broadcast(genuine)
    assert view["summary"]["done"] == len(terminals)
    await attacker.stop()


async def test_garbage_on_command_topics_does_not_stop_the_next_broadcast(make_county):
    county = await make_county(villages=4)
    attacker = await county.attacker()
    garbage = [
        b"",
        b"not json at all \xff\xfe",
        b"[1, 2, 3]",
        b'{"v": 1, "alg": "ed25519", "kid": "x", "payload": "!!!", "sig": "???"}',
        b'{"v": 99, "alg": "ed25519", "kid": "x", "payload": "", "sig": ""}',
        b"{" * 200_000,  # oversized
        p.Command.new(
            p.CancelBody(broadcast_id="x"), p.Target(all=True), p.now_ms() + 1000
        ).to_bytes(),
    ]
    for payload in garbage:
        for topic in (
            p.Topics.COMMAND_ALL,
            p.Topics.command_township("t01"),
            p.Topics.command_device("d-t01-v01-1"),
        ):
            await attacker.publish_confirmed(topic, payload)
    # Garbage on the device report topics, too: the controller counts and drops it.
    for payload in garbage[:5]:
        await attacker.publish_confirmed(p.Topics.device_ack("d-t01-v01-1"), payload)

    bid = await county.broadcast(
        text="天气晴好，注意防火。", category="fire_prevention", targets={"all": True}
    )
    await county.wait_states(bid, {"done"}, timeout_s=40)
    # This terminal listens on all three topics: every garbage payload was dropped there.
    assert county.fleet.agents["d-t01-v01-1"].counters["dropped"] == 3 * len(garbage)
    _, metrics = await county.api("GET", "/api/metrics")
    assert metrics["ingest"]["dropped"] >= 5
    await attacker.stop()


async def test_cancel_cuts_short_every_targeted_play(make_county):
    county = await make_county(villages=3)
    bid = await county.broadcast(
        text="各位村民请注意，" + "近期电信诈骗案件多发，请提高警惕。" * 4,
        category="anti_fraud",
        targets={"townships": ["t01"]},
    )
    targeted = county.targeted[bid]
    await county.wait_states(bid, {"playing"}, timeout_s=30)
    # Every targeted speaker has really started (its own record, not the agent's report).
    await county.wait_started(bid, targeted, timeout_s=10)
    status, view = await county.api("POST", f"/api/broadcasts/{bid}/cancel")
    assert status == 200 and view["status"] == "cancelled"
    view = await county.wait_states(bid, {"cancelled"}, timeout_s=10)

    async def every_play_ended() -> bool:
        return county.all_plays(bid).keys() == targeted

    await county.wait_for(every_play_ended, 10, "every targeted speaker's play ending")
    audio_ms = county.media_ms(view["media_id"])
    started, ended = county.all_started(bid), county.all_plays(bid)
    assert started.keys() == ended.keys() == targeted
    for device_id in targeted:
        (start,) = started[device_id]
        (end,) = ended[device_id]
        assert start["media_sha256"] == end["media_sha256"] == view["media_id"], device_id
        assert not end["completed"], (device_id, end)
        assert end["duration_ms"] < audio_ms, (device_id, end["duration_ms"], audio_ms)
    media = view["media_id"]
    assert media
    status, _ = await county.api("POST", f"/api/broadcasts/{bid}/cancel")
    assert status == 409
    # The counts alone, for live views of a large county.
    _, counts = await county.api("GET", f"/api/broadcasts/{bid}?deliveries=0", expect=200)
    assert "deliveries" not in counts
    assert counts["summary"]["cancelled"] == counts["device_count"] == len(view["deliveries"])
    status, err = await county.api("GET", f"/api/broadcasts/{bid}?deliveries=maybe")
    assert status == 400 and err["error"]["field"] == "deliveries"


async def test_roles_and_authentication(make_county):
    county = await make_county(villages=20)  # townships t01 and t02
    from controller.auth import Role, create_user_and_token
    from controller.db import Database

    db = Database(county.prepared.settings.db_url)
    db.start()
    staff = db.run_sync(lambda s: create_user_and_token(s, "clerk", Role.TOWNSHIP_STAFF, "t01"))
    viewer = db.run_sync(lambda s: create_user_and_token(s, "watcher", Role.VIEWER, None))
    db.stop()

    async with county.http.post(county.url + "/api/broadcasts", json={}) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthenticated"
    async with county.http.get(
        county.url + "/api/devices", headers={"Authorization": "Bearer dlb_wrong"}
    ) as resp:
        assert resp.status == 401

    body = {"text": "通知", "category": "meeting", "priority": "notice"}
    status, err = await county.api(
        "POST",
        "/api/broadcasts",
        token=staff,
        json_body={**body, "targets": {"townships": ["t02"]}},
    )
    assert status == 403 and "t02" in err["error"]["message"]
    status, _ = await county.api(
        "POST",
        "/api/broadcasts",
        token=staff,
        json_body={**body, "targets": {"villages": ["t02-v01"]}},
    )
    assert status == 403
    status, _ = await county.api(
        "POST", "/api/broadcasts", token=staff, json_body={**body, "targets": {"all": True}}
    )
    assert status == 403
    status, created = await county.api(
        "POST",
        "/api/broadcasts",
        token=staff,
        json_body={**body, "targets": {"villages": ["t01-v01"]}},
    )
    assert status == 201
    status, _ = await county.api(
        "POST",
        "/api/broadcasts",
        token=viewer,
        json_body={**body, "targets": {"villages": ["t01-v01"]}},
    )
    assert status == 403

    _, devices = await county.api("GET", "/api/devices", token=staff)
    assert devices["total"] > 0 and {d["township_id"] for d in devices["devices"]} == {"t01"}
    _, villages = await county.api("GET", "/api/villages", token=staff)
    assert {v["township_id"] for v in villages["villages"]} == {"t01"}
    other = await county.broadcast(text="县城通知", targets={"townships": ["t02"]})
    status, _ = await county.api("GET", f"/api/broadcasts/{other}", token=staff)
    assert status == 403
    status, _ = await county.api("POST", f"/api/broadcasts/{other}/cancel", token=staff)
    assert status == 403
    status, _ = await county.api("GET", f"/api/broadcasts/{created['id']}", token=staff)
    assert status == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"category": "flood", "priority": "notice", "targets": {"all": True}}, "body"),
        ({"text": "", "category": "flood", "priority": "notice", "targets": {"all": True}}, "text"),
        (
            {
                "text": "x" * 2001,
                "category": "flood",
                "priority": "notice",
                "targets": {"all": True},
            },
            "text",
        ),
        (
            {"text": "a", "category": "volcano", "priority": "notice", "targets": {"all": True}},
            "category",
        ),
        (
            {"text": "a", "category": "flood", "priority": "urgent", "targets": {"all": True}},
            "priority",
        ),
        (
            {"text": "a", "category": "flood", "priority": "emergency", "targets": {"all": True}},
            "body",
        ),
        (
            {
                "text": "a",
                "category": "flood",
                "priority": "emergency",
                "level": 5,
                "targets": {"all": True},
            },
            "level",
        ),
        ({"text": "a", "category": "flood", "priority": "notice", "targets": {}}, "targets"),
        (
            {
                "text": "a",
                "category": "flood",
                "priority": "notice",
                "targets": {"townships": ["t01", "t99"]},
            },
            "targets.townships[1]",
        ),
        (
            {
                "text": "a",
                "category": "flood",
                "priority": "notice",
                "targets": {"villages": ["nope"]},
            },
            "targets.villages[0]",
        ),
        (
            {
                "text": "a",
                "category": "flood",
                "priority": "notice",
                "targets": {"all": True},
                "start_at": "2020-01-01T00:00:00Z",
            },
            "start_at",
        ),
        (
            {
                "text": "a",
                "category": "flood",
                "priority": "notice",
                "targets": {"all": True},
                "start_at": "tomorrow",
            },
            "start_at",
        ),
        (
            {
                "text": "a",
                "category": "flood",
                "priority": "notice",
                "targets": {"all": True},
                "expires_in_s": 1,
            },
            "expires_in_s",
        ),
        (
            {
                "text": "a",
                "category": "flood",
                "priority": "notice",
                "targets": {"all": True},
                "colour": "red",
            },
            "colour",
        ),
    ],
)
async def test_bad_broadcast_requests_get_400_naming_the_field(make_county, body, field):
    county = await make_county(villages=2)
    status, err = await county.api("POST", "/api/broadcasts", json_body=body)
    assert status == 400, err
    assert err["error"]["field"] == field, err
    assert field.split("[")[0].split(".")[0] in err["error"]["message"] or field == "body"
    _, listing = await county.api("GET", "/api/broadcasts")
    assert listing["broadcasts"] == []  # nothing was created


async def test_malformed_json_body_is_refused(make_county):
    county = await make_county(villages=2)
    async with county.http.post(
        county.url + "/api/broadcasts", data=b"{not json", headers=county.headers()
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["field"] == "body"
