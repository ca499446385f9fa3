"""A county that signs with SM2/SM3 (Settings.signing_scheme = "sm2"), end to end: real
Mosquitto, real controller, real agents whose key files hold the SM2 key."""

from __future__ import annotations

import pytest

from dalaba import protocol as p
from dalaba.signing import SM2_SM3, Ed25519Signer, Sm2Signer, load_trusted

pytestmark = [pytest.mark.broker, pytest.mark.slow]


async def test_an_sm2_county_plays_and_refuses_what_its_key_did_not_sign(make_county):
    county = await make_county(villages=4, signing_scheme="sm2")
    settings = county.prepared.settings
    assert settings.signing_scheme == "sm2"
    controller_key = Sm2Signer.load_or_create(settings.signing_key_path)
    assert settings.signing_key_path.name == "controller-sm2.pem"
    # Provisioning wrote the SM2 key into every terminal's key file, and nothing else.
    for config in county.fleet.configs.values():
        trusted = [load_trusted(pem) for pem in config.controller_public_keys]
        assert [(t.alg, t.kid) for t in trusted] == [(SM2_SM3, controller_key.kid)]
    terminals = set(county.fleet.agents)

    captured: list[bytes] = []
    attacker = await county.attacker(
        subscribe=p.Topics.ALL_COMMANDS, on_message=lambda _t, payload: captured.append(payload)
    )
    genuine = await county.broadcast(
        text="紧急通知：水库泄洪，请下游村民立即转移。",
        priority="emergency",
        level=2,
        targets={"all": True},
    )
    view = await county.wait_states(genuine, {"done"}, timeout_s=60)
    assert view["summary"]["done"] == len(terminals)
    assert len(captured) == 1
    envelope = p.SignedEnvelope.model_validate_json(captured[0])
    assert (envelope.alg, envelope.kid) == ("SM2-SM3", controller_key.kid)

    genuine_body = county.open_unverified(captured[0]).body

    def attack(broadcast_id: str, *, valid_s: int) -> p.Command:
        now = p.now_ms()
        return p.Command(
            id=broadcast_id,
            issued_at=now - 120_000 if valid_s < 0 else now,
            expires_at=now + valid_s * 1000,
            target=p.Target(all=True),
            body=genuine_body.model_copy(update={"broadcast_id": broadcast_id, "start_at": now}),
        )

    # 1. forged with another SM2 key; 2. signed with Ed25519, the scheme the county left;
    # 3. the genuine SM2 command replayed; 4. signed by the controller's own SM2 key but
    # expired: each refused on every terminal and reported.
    forgeries = {
        "forged-sm2": p.seal(attack("forged-sm2", valid_s=60), Sm2Signer.generate()),
        "forged-ed": p.seal(attack("forged-ed", valid_s=60), Ed25519Signer.generate()),
        "expired": p.seal(attack("expired", valid_s=-60), controller_key),
    }
    for envelope_bytes in forgeries.values():
        await attacker.publish_confirmed(p.Topics.COMMAND_ALL, envelope_bytes)
    await attacker.publish_confirmed(p.Topics.COMMAND_ALL, captured[0])

    async def all_reported() -> bool:
        _, body = await county.api("GET", "/api/security-events")
        reasons = [e["reason"] for e in body["events"]]
        return (
            reasons.count("bad_signature") == 2 * len(terminals)
            and reasons.count("replayed") == len(terminals)
            and reasons.count("expired") == len(terminals)
        )

    await county.wait_for(all_reported, 30, "every terminal reporting every rejection")
    for device_id in terminals:
        played = [e["broadcast_id"] for e in county.plays(device_id)]
        assert played.count(genuine) == 1, device_id
        assert not set(played) & set(forgeries), device_id
    await attacker.stop()
