"""Log-in defence against a real controller, over real sockets from two client addresses
(127.0.0.1, the duty room, and 127.0.0.2, someone guessing): the guesser is slowed down
per (user name, address) while the duty officer logs in; an admin sees it and clears it;
X-Forwarded-For is believed only from a trusted proxy; the password policy answers with
the field and the reason; changing a password ends the user's other sessions; and a
failed login's name reaches the audit log only hashed, which only admins read in full."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from sqlmodel import select

from controller.db import Database
from controller.sessions import LoginFailure
from dalaba.protocol import now_ms

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DUTY_ROOM = "127.0.0.1"
GUESSER = "127.0.0.2"  # the whole of 127/8 is loopback on Linux: a second real address


class Browser:
    """A console client bound to one source address: cookie, CSRF token, JSON."""

    def __init__(self, county: Any, source: str = DUTY_ROOM) -> None:
        self.county = county
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=aiohttp.TCPConnector(local_addr=(source, 0)),
        )
        self.csrf: str | None = None

    async def login(
        self, name: str, password: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, Any]:
        if password is None:
            password = self.county.prepared.console_users[name][2]
        async with self.http.post(
            self.county.url + "/api/session/login",
            json={"name": name, "password": password},
            headers=headers or {},
        ) as resp:
            body = await resp.json()
            if resp.status == 200:
                self.csrf = body["csrf_token"]
            return resp.status, body, resp.headers

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"X-CSRF-Token": self.csrf} if self.csrf else {}
        async with self.http.request(
            method, self.county.url + path, json=body, headers=headers
        ) as resp:
            return resp.status, await resp.json()

    async def close(self) -> None:
        await self.http.close()


@pytest.fixture
async def browsers() -> Any:
    opened: list[Browser] = []

    def make(county: Any, source: str = DUTY_ROOM) -> Browser:
        opened.append(Browser(county, source))
        return opened[-1]

    yield make
    for browser in opened:
        await browser.close()


def failures_by_client(county: Any) -> dict[str, int]:
    db = Database(county.prepared.settings.db_url)
    db.start()
    try:
        return db.run_sync(lambda s: {r.client: r.failures for r in s.exec(select(LoginFailure))})
    finally:
        db.stop()


def let_waits_pass(county: Any) -> None:
    """As if every back-off's wait had run out (instead of sleeping through it)."""
    db = Database(county.prepared.settings.db_url)
    db.start()

    def move(session: Any) -> None:
        for row in session.exec(select(LoginFailure)):
            row.blocked_until_ms = now_ms() - 1

    try:
        db.run_sync(move)
    finally:
        db.stop()


async def test_a_guesser_is_slowed_per_address_while_the_duty_officer_logs_in(
    make_county: Any, browsers: Any
) -> None:
    county = await make_county(villages=2)
    guesser = browsers(county, GUESSER)
    statuses = []
    for _ in range(3):
        status, body, _ = await guesser.login("duty2", "not-the-password")
        statuses.append((status, body["error"]["code"], body["error"].get("retry_after_s")))
    assert statuses == [
        (401, "invalid_credentials", None),
        (401, "invalid_credentials", None),
        (401, "invalid_credentials", 1),
    ]
    # Refused unchecked, even with the right password, and told when to come back.
    status, body, headers = await guesser.login("duty2")
    assert status == 429 and body["error"]["code"] == "login_backoff"
    assert body["error"]["field"] == "name" and headers["Retry-After"] == "1"

    # The second officer, from the duty room, is not locked out: the flood goes on.
    officer = browsers(county, DUTY_ROOM)
    status, me, _ = await officer.login("duty2")
    assert status == 200 and me["user"] == "duty2"
    assert failures_by_client(county) == {GUESSER: 3}

    # Each further failure doubles the guesser's wait.
    waits = []
    for _ in range(2):
        let_waits_pass(county)
        _, body, _ = await guesser.login("duty2", "still-not-it")
        waits.append(body["error"]["retry_after_s"])
    assert waits == [2, 4]

    # The admin sees which address, and clears it, in the API (and the console).
    admin = browsers(county)
    await admin.login("demo-admin")
    _, users = await admin.api("GET", "/api/users")
    by_name = {u["name"]: u for u in users["users"]}
    [entry] = by_name["duty2"]["login_backoff"]
    assert (entry["client"], entry["failures"]) == (GUESSER, 5)
    assert entry["refused"] == 1 and entry["blocked_until"] is not None
    assert by_name["duty1"]["login_backoff"] == []

    status, _ = await officer.api("POST", "/api/users/duty2/unlock")
    assert status == 403  # a duty officer cannot clear it
    status, _ = await admin.api("POST", "/api/users/nobody/unlock")
    assert status == 404
    status, cleared = await admin.api("POST", "/api/users/duty2/unlock")
    assert status == 200 and cleared == {"name": "duty2", "cleared": [GUESSER]}
    assert failures_by_client(county) == {}
    status, _, _ = await guesser.login("duty2")  # checked again at once
    assert status == 200

    _, audit = await admin.api("GET", "/api/audit?action=user.unlock")
    [unlocked] = audit["entries"]
    assert unlocked["actor"] == "demo-admin" and unlocked["target"] == "duty2"
    assert unlocked["detail"]["clients"] == [GUESSER]


async def test_forwarded_for_counts_only_behind_a_trusted_proxy(
    make_county: Any, browsers: Any
) -> None:
    county = await make_county(villages=2)
    settings = county.controller.settings
    forged = {"X-Forwarded-For": "198.51.100.23"}
    # No trusted proxy: the header is the client's own claim and is ignored.
    await browsers(county, GUESSER).login("duty1", "wrong-password-1", headers=forged)
    assert failures_by_client(county) == {GUESSER: 1}

    settings.trusted_proxies = (DUTY_ROOM,)  # nginx on this machine
    proxy = browsers(county, DUTY_ROOM)
    # The nearest address the proxy did not write itself is the client.
    chain = {"X-Forwarded-For": f"203.0.113.50, 198.51.100.23, {DUTY_ROOM}"}
    await proxy.login("duty1", "wrong-password-2", headers=chain)
    # From an address that is not the proxy, the same header is still ignored.
    await browsers(county, GUESSER).login("duty1", "wrong-password-3", headers=forged)
    assert failures_by_client(county) == {GUESSER: 2, "198.51.100.23": 1}


async def test_password_policy_and_a_change_ends_the_other_sessions(
    make_county: Any, browsers: Any
) -> None:
    county = await make_county(villages=2)
    admin = browsers(county)
    await admin.login("demo-admin")
    for password, code in (
        ("password", "password_too_short"),
        ("12345678", "password_too_short"),
        ("duty1234", "password_too_short"),
        ("1q2w3e4r5t", "password_common"),
        ("wang.duty-2025", "password_contains_name"),
    ):
        status, err = await admin.api(
            "POST",
            "/api/users",
            {"name": "wang.duty", "role": "duty_officer", "password": password},
        )
        assert status == 400, (password, err)
        assert (err["error"]["field"], err["error"]["code"]) == ("password", code)
    status, created = await admin.api(
        "POST",
        "/api/users",
        {"name": "wang.duty", "role": "duty_officer", "password": "levee-patrol-north"},
    )
    assert status == 201
    # An admin's reset goes through the same policy.
    status, err = await admin.api(
        "PATCH", f"/api/users/{created['id']}", {"password": "WANG.DUTY.2026"}
    )
    assert status == 400 and err["error"]["code"] == "password_contains_name"

    # The same officer on the duty-room PC and on a phone.
    desk, phone = browsers(county), browsers(county)
    assert (await desk.login("wang.duty", "levee-patrol-north"))[0] == 200
    assert (await phone.login("wang.duty", "levee-patrol-north"))[0] == 200

    change = {"current": "levee-patrol-north"}
    status, err = await desk.api("POST", "/api/session/password", {**change, "new": "qwerty"})
    assert status == 400 and err["error"]["field"] == "new"
    assert err["error"]["code"] == "password_too_short"
    status, err = await desk.api(
        "POST", "/api/session/password", {"current": "wrong-guess-1", "new": "tide-table-77x"}
    )
    assert status == 403 and err["error"]["field"] == "current"
    status, _ = await phone.api("GET", "/api/session")
    assert status == 200  # failures changed nothing

    status, body = await desk.api(
        "POST", "/api/session/password", {**change, "new": "tide-table-77x"}
    )
    assert status == 200 and body == {"changed": True}
    status, _ = await phone.api("GET", "/api/session")
    assert status == 401  # whoever else had it open is out
    status, _ = await desk.api("GET", "/api/session")
    assert status == 200  # the one that proved the old password stays
    assert (await browsers(county).login("wang.duty", "levee-patrol-north"))[0] == 401
    assert (await browsers(county).login("wang.duty", "tide-table-77x"))[0] == 200

    _, audit = await admin.api("GET", "/api/audit?action=user.password_changed")
    [entry] = audit["entries"]
    assert entry["actor"] == "wang.duty" and entry["detail"]["sessions_ended"] == 1


async def test_failed_login_names_are_hashed_and_only_admins_read_them_in_full(
    make_county: Any, browsers: Any
) -> None:
    county = await make_county(villages=2)
    typed = "Reservoir-Sluice-2207"  # someone's password, typed into the name box
    await browsers(county, GUESSER).login(typed, "whatever-else")
    await browsers(county, GUESSER).login("duty1", "not-the-password")

    admin, duty = browsers(county), browsers(county)
    await admin.login("demo-admin")
    await duty.login("duty1")
    _, full = await admin.api("GET", "/api/audit?action=session.login_failed")
    assert typed not in repr(full) and typed.lower() not in repr(full)
    actors = [e["actor"] for e in full["entries"]]
    assert actors[0] == "duty1" and actors[1].startswith("unknown#")
    assert {e["detail"]["client"] for e in full["entries"]} == {GUESSER}
    async with admin.http.get(county.url + "/api/audit.csv?action=session.") as resp:
        assert typed not in await resp.text()

    # Anyone else reads them redacted: no typed names (hashed or not), no addresses.
    _, seen = await duty.api("GET", "/api/audit?action=session.login_failed")
    assert [e["actor"] for e in seen["entries"]] == ["—", "—"]
    assert all("client" not in e["detail"] for e in seen["entries"])
    async with duty.http.get(county.url + "/api/audit.csv?action=session.") as resp:
        text = await resp.text()
    assert GUESSER not in text and "unknown#" not in text
