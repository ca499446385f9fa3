"""The API's conventions against the running controller: the OpenAPI description covers
every route the app registers; real answers, successes and errors, match the schemas it
documents (with undocumented fields refused); JSON carries real Chinese characters; a 201
says where the new thing is (`Location`); lists page as documented; the reference page
works without a login and without a network."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from controller import openapi
from controller.api import keys
from controller.app import build_app
from controller.auth import Role, create_user_and_token
from controller.idempotency import IDEMPOTENT_ROUTES
from controller.settings import Settings

# \uXXXX escapes of CJK characters: JSON that a clerk cannot read in a log or a curl.
# (ensure_ascii=False still escapes control characters, \u0000-\u001f: those are fine.)
ESCAPED_NON_LATIN = re.compile(rb"\\u(?!00)[0-9a-fA-F]{4}")

# Handlers in modules that still call aiohttp's web.json_response (ASCII-escaped) instead
# of controller.errors.json_response: to be emptied as those modules switch.
STILL_ESCAPED: set[tuple[str, str]] = set()

# 201s from modules that do not yet pass `location=` to json_response.
NO_LOCATION_YET: set[tuple[str, str]] = set()

NOTICE = {
    "text": "村委会通知：明早九点在村部开会。",
    "category": "meeting",
    "priority": "notice",
}


def test_every_registered_route_is_described(tmp_path: Path) -> None:
    app = build_app(Settings(data_dir=tmp_path, demo=True))
    doc = openapi.build(app)
    routes = openapi.api_routes(app)
    assert len(routes) >= 70
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert described == {(m, p) for m, p, _ in routes}
    undescribed = [
        f"{m} {p}"
        for p, ops in doc["paths"].items()
        for m, op in ops.items()
        if "x-undescribed" in op
    ]
    assert not undescribed, f"routes without a description: {undescribed}"
    op_ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(op_ids) == len(set(op_ids))
    assert doc["openapi"] == "3.1.0"
    tags = {t["name"] for t in doc["tags"]}
    assert {op["tags"][0] for ops in doc["paths"].values() for op in ops.values()} <= tags

    # Every schema is valid JSON Schema 2020-12 and every reference resolves.
    schemas = doc["components"]["schemas"]
    for name, schema in schemas.items():
        Draft202012Validator.check_schema(schema)
        assert name
    text = json.dumps(doc)
    for ref in set(re.findall(r'"#/components/schemas/([^"]+)"', text)):
        assert ref in schemas, ref

    # Request bodies come from the models that validate them.
    body = doc["paths"]["/api/broadcasts"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/BroadcastIn"}
    assert "targets" in schemas["BroadcastIn"]["required"]
    assert schemas["BroadcastIn"]["additionalProperties"] is False
    # The idempotent POSTs exist and say so.
    for method, path in IDEMPOTENT_ROUTES:
        params = doc["paths"][path][method.lower()]["parameters"]
        assert {"name": "Idempotency-Key", "in": "header"}.items() <= params[-1].items(), path
    # Public: the documents themselves, health, login, media and the console's files.
    public = sorted(
        f"{m} {p}" for p, ops in doc["paths"].items() for m, op in ops.items() if "security" in op
    )
    assert "get /api/docs" in public and "get /api/openapi.json" in public
    assert "post /api/broadcasts" not in public


# --------------------------------------------------------------------------- live checks


def _strict(node: Any) -> Any:
    """The documented schemas with undocumented fields refused: production passes new
    fields through; the tests insist that they are documented first."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if "properties" in out and not out.get("x-open"):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


class Api:
    """Calls the real controller and checks each answer against the description."""

    def __init__(self, county: Any, doc: dict[str, Any]) -> None:
        self.county = county
        self.doc = doc
        self.components = _strict(doc["components"])
        self.called: Counter[tuple[str, str]] = Counter()

    async def call(
        self,
        method: str,
        template: str,
        *,
        path: str | None = None,
        json_body: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        expect: int | None = None,
        anonymous: bool = False,
    ) -> tuple[int, Any, Any]:
        url = self.county.url + (path or template)
        sent = {} if anonymous else self.county.headers(token)
        sent.update(headers or {})
        async with self.county.http.request(method, url, json=json_body, headers=sent) as resp:
            raw = await resp.read()
            status, content_type = resp.status, resp.content_type
            got_headers = resp.headers
        template_key = template.split("?")[0]
        self.check(method, template_key, status, content_type, raw)
        if expect is not None:
            assert status == expect, (method, path or template, status, raw[:500])
        data = json.loads(raw) if content_type == "application/json" else raw
        if status == 201 and (method, template_key) not in NO_LOCATION_YET:
            assert got_headers.get("Location", "").startswith("/"), (method, template)
        return status, data, got_headers

    def check(self, method: str, template: str, status: int, content_type: str, raw: bytes) -> None:
        op = self.doc["paths"][template][method.lower()]
        self.called[(method, template)] += 1
        documented = op["responses"].get(str(status))
        answer = documented or op["responses"]["default"]
        assert documented or status >= 400, f"{method} {template}: undocumented {status}"
        content = answer.get("content", {})
        assert content_type in content, f"{method} {template} {status}: {content_type}"
        if content_type != "application/json":
            return
        if (method, template) not in STILL_ESCAPED:
            assert not ESCAPED_NON_LATIN.search(raw), f"{method} {template}: escaped {raw[:200]!r}"
        schema = {**content[content_type]["schema"], "components": self.components}
        errors = sorted(
            Draft202012Validator(schema).iter_errors(json.loads(raw)), key=lambda e: e.path
        )
        assert not errors, f"{method} {template} {status} does not match its schema: " + "; ".join(
            f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]
        )


@pytest.mark.broker
@pytest.mark.slow
async def test_real_answers_match_their_schemas(make_county) -> None:
    county = await make_county(villages=4, two_person_levels=(1, 2))
    async with county.http.get(county.url + "/api/openapi.json") as resp:  # no token
        assert resp.status == 200
        doc = await resp.json()
    api = Api(county, doc)
    db = county.controller.app[keys.DB]
    second = await db.run(
        lambda s: create_user_and_token(s, "duty-b", Role.DUTY_OFFICER, None, label="test")
    )

    # The reference page and its renderer: no login, nothing from outside.
    _, page, _ = await api.call("GET", "/api/docs", anonymous=True, expect=200)
    scripts = re.findall(rb'src="([^"]+)"', page)
    assert scripts and all(s.startswith(b"/") for s in scripts), scripts
    assert b"//" not in b"".join(scripts) and b"http" not in page
    for src in scripts:
        async with county.http.get(county.url + src.decode()) as resp:
            assert resp.status == 200 and "javascript" in resp.content_type
            assert len(await resp.read()) > 100_000
    await api.call("GET", "/api/openapi.json", anonymous=True, expect=200)
    await api.call("GET", "/api/health", anonymous=True, expect=200)
    await api.call("GET", "/api/time", anonymous=True, expect=200)
    await api.call("GET", "/api/time", anonymous=True, expect=200)
    await api.call("GET", "/metrics", anonymous=True, expect=200)
    await api.call("GET", "/", anonymous=True, expect=200)
    await api.call("GET", "/static/{filename}", path="/static/vendor/redoc/LICENSE", anonymous=True)
    status, err, _ = await api.call("GET", "/api/devices", anonymous=True)
    assert status == 401 and err["error"]["code"] == "unauthenticated"

    # County, devices.
    _, towns, _ = await api.call("GET", "/api/townships", expect=200)
    township = towns["townships"][0]["id"]
    _, villages, _ = await api.call("GET", "/api/villages", expect=200)
    village = villages["villages"][0]["id"]
    _, devices, _ = await api.call("GET", "/api/devices", expect=200)
    device = devices["devices"][0]["id"]
    for sub in ("", "/telemetry", "/deliveries", "/local-schedule"):
        await api.call(
            "GET", f"/api/devices/{{id}}{sub}", path=f"/api/devices/{device}{sub}", expect=200
        )
    await api.call("GET", "/api/devices/{id}", path="/api/devices/nope", expect=404)

    # Broadcasts: create (201 + Location), read it where Location says, page, cancel.
    body = {**NOTICE, "targets": {"villages": [village]}}
    _, created, headers = await api.call("POST", "/api/broadcasts", json_body=body, expect=201)
    bid = created["id"]
    assert headers["Location"] == f"/api/broadcasts/{bid}"
    _, detail, _ = await api.call(
        "GET", "/api/broadcasts/{id}", path=headers["Location"], expect=200
    )
    assert detail["text"] == NOTICE["text"] and detail["deliveries"]
    _, counted, _ = await api.call(
        "GET", "/api/broadcasts/{id}", path=f"/api/broadcasts/{bid}?deliveries=0", expect=200
    )
    assert "deliveries" not in counted and counted["reach"]["targeted"] >= 1
    await county.wait_states(bid, {"done"})
    await api.call("GET", "/api/broadcasts/{id}", path=f"/api/broadcasts/{bid}", expect=200)
    _, page, _ = await api.call(
        "GET", "/api/broadcasts", path="/api/broadcasts?limit=5", expect=200
    )
    assert page["broadcasts"][0]["id"] == bid
    status, err, _ = await api.call(
        "POST", "/api/broadcasts", json_body={**body, "priority": "urgent"}, expect=400
    )
    assert err["error"]["field"] == "priority"
    await api.call("GET", "/api/broadcasts/{id}", path="/api/broadcasts/nope", expect=404)
    await api.call(
        "POST", "/api/broadcasts/{id}/resend", path=f"/api/broadcasts/{bid}/resend", expect=409
    )
    again = {**body, "text": None, "media_id": detail["media_id"]}
    _, later, _ = await api.call("POST", "/api/broadcasts", json_body=again, expect=201)
    await api.call(
        "POST",
        "/api/broadcasts/{id}/cancel",
        path=f"/api/broadcasts/{later['id']}/cancel",
        expect=200,
    )

    # Preview as JSON and as the audio itself.
    await api.call("POST", "/api/preview", json_body=NOTICE, expect=200)
    await api.call(
        "POST", "/api/preview", path="/api/preview?format=audio", json_body=NOTICE, expect=200
    )
    await api.call(
        "GET", "/media/{sha256}", path=f"/media/{detail['media_id']}", anonymous=True, expect=200
    )
    await api.call("GET", "/api/media", expect=200)
    await api.call("GET", "/api/media/{id}", path=f"/api/media/{detail['media_id']}", expect=200)

    # The two-person rule: 202, then a second officer approves; another is rejected.
    emergency = {
        "text": "山洪预警：请沿河村民立即转移到高处。",
        "category": "flood",
        "priority": "emergency",
        "level": 1,
        "drill": False,
        "targets": {"all": True},
    }
    _, pending, _ = await api.call("POST", "/api/broadcasts", json_body=emergency, expect=202)
    _, pending2, _ = await api.call("POST", "/api/broadcasts", json_body=emergency, expect=202)
    await api.call("GET", "/api/approvals", expect=200)
    await api.call(
        "GET", "/api/approvals/{id}", path=f"/api/approvals/{pending['approval_id']}", expect=200
    )
    _, approved, _ = await api.call(
        "POST",
        "/api/approvals/{id}/approve",
        path=f"/api/approvals/{pending['approval_id']}/approve",
        token=second,
        json_body={"reason": "确认"},
        expect=201,
    )
    assert approved["approval"]["status"] == "approved"
    await api.call(
        "POST",
        "/api/approvals/{id}/reject",
        path=f"/api/approvals/{pending2['approval_id']}/reject",
        token=second,
        expect=200,
    )

    # Templates.
    _, templates, _ = await api.call("GET", "/api/templates", expect=200)
    builtin = next(t["id"] for t in templates["templates"] if t["builtin"])
    await api.call("GET", "/api/templates/{id}", path=f"/api/templates/{builtin}", expect=200)
    new = {
        "id": "water_cut_notice",
        "name": "停水通知",
        "category": "other",
        "body": "停水通知：{time}全村停水，请提前储水。",
        "placeholders": [{"name": "time", "label": "时间"}],
        "priority": "notice",
    }
    _, _, headers = await api.call("POST", "/api/templates", json_body=new, expect=201)
    assert headers["Location"] == "/api/templates/water_cut_notice"
    tpl_path = headers["Location"]
    await api.call(
        "PATCH", "/api/templates/{id}", path=tpl_path, json_body={"repeat": 2}, expect=200
    )
    replace = {k: v for k, v in new.items() if k != "id"}
    await api.call("PUT", "/api/templates/{id}", path=tpl_path, json_body=replace, expect=200)
    await api.call("DELETE", "/api/templates/{id}", path=tpl_path, expect=200)
    await api.call(
        "POST", "/api/templates/{id}/reset", path=f"/api/templates/{builtin}/reset", expect=200
    )
    await api.call("GET", "/api/templates/preposition", expect=200)
    ready = next(
        t["id"]
        for t in templates["templates"]
        if t["priority"] == "emergency" and not t["needs_params"] and not t["disabled"]
    )
    await api.call(
        "POST",
        "/api/templates/preposition",
        json_body={"templates": [ready], "levels": [4], "targets": {"villages": [village]}},
        expect=201,
    )

    # Groups.
    group = {"name": "沿河村", "villages": [village]}
    _, made, headers = await api.call("POST", "/api/groups", json_body=group, expect=201)
    assert headers["Location"] == f"/api/groups/{made['id']}"
    await api.call("GET", "/api/groups", expect=200)
    await api.call(
        "PUT",
        "/api/groups/{id}",
        path=headers["Location"],
        json_body={**group, "description": "汛期"},
        expect=200,
    )
    await api.call("DELETE", "/api/groups/{id}", path=headers["Location"], expect=200)

    # Schedules, quiet hours, a township's day.
    schedule = {
        **NOTICE,
        "name": "防火提醒",
        "recurrence": {"kind": "daily", "times": ["07:00"], "start_date": date.today().isoformat()},
        "targets": {"villages": [village]},
    }
    _, sch, headers = await api.call("POST", "/api/schedules", json_body=schedule, expect=201)
    sch_path = headers["Location"]
    assert sch_path == f"/api/schedules/{sch['id']}"
    await api.call("GET", "/api/schedules", expect=200)
    await api.call("GET", "/api/schedules/{id}", path=sch_path, expect=200)
    await api.call(
        "PATCH", "/api/schedules/{id}", path=sch_path, json_body={"name": "森林防火"}, expect=200
    )
    for action in ("pause", "resume"):
        await api.call(
            "POST", f"/api/schedules/{{id}}/{action}", path=f"{sch_path}/{action}", expect=200
        )
    await api.call("GET", "/api/schedules/{id}/next", path=f"{sch_path}/next?count=3", expect=200)
    await api.call(
        "GET", "/api/schedules/{id}/occurrences", path=f"{sch_path}/occurrences", expect=200
    )
    await api.call("DELETE", "/api/schedules/{id}", path=sch_path, expect=200)
    quiet = f"/api/townships/{township}/quiet-hours"
    await api.call(
        "PUT",
        "/api/townships/{id}/quiet-hours",
        path=quiet,
        json_body={"start": "22:00", "end": "06:00"},
        expect=200,
    )
    await api.call("GET", "/api/townships/{id}/quiet-hours", path=quiet, expect=200)
    await api.call(
        "GET",
        "/api/townships/{id}/timeline",
        path=f"/api/townships/{township}/timeline",
        expect=200,
    )

    # Terminal control.
    await api.call(
        "POST",
        "/api/devices/{id}/volume",
        path=f"/api/devices/{device}/volume",
        json_body={"normal_volume": 70},
        expect=202,
    )
    await api.call(
        "POST",
        "/api/devices/{id}/diagnostics",
        path=f"/api/devices/{device}/diagnostics",
        expect=202,
    )
    _, tone, headers = await api.call(
        "POST", "/api/devices/{id}/test-tone", path=f"/api/devices/{device}/test-tone", expect=201
    )
    assert headers["Location"] == f"/api/broadcasts/{tone['id']}"

    # Speech settings.
    await api.call("GET", "/api/pronunciations", expect=200)
    await api.call(
        "PUT", "/api/pronunciations", json_body={"entries": {"大喇叭": "大拉叭"}}, expect=200
    )
    languages = f"/api/township-languages/{township}"
    await api.call("GET", "/api/township-languages", expect=200)
    await api.call(
        "PUT",
        "/api/township-languages/{township_id}",
        path=languages,
        json_body={"languages": ["cmn"]},
        expect=200,
    )
    await api.call("DELETE", "/api/township-languages/{township_id}", path=languages, expect=200)

    # Records, audit, security.
    await api.call("GET", "/api/records/broadcasts", expect=200)
    await api.call("GET", "/api/records/broadcasts.csv", expect=200)
    await api.call("GET", "/api/audit", path="/api/audit?limit=5", expect=200)
    await api.call("GET", "/api/audit.csv", expect=200)
    await api.call("GET", "/api/security-events", expect=200)
    # Statistics and the year-end report (its PDF and XLSX are checked in test_stats.py).
    await api.call("GET", "/api/stats/summary", path="/api/stats/summary?period=year", expect=200)
    await api.call(
        "GET", "/api/stats/online", path="/api/stats/online?period=month&bucket=day", expect=200
    )
    await api.call("GET", "/api/stats/report", path="/api/stats/report?year=2026", expect=200)
    # Work orders: success answers are schema-checked in test_workorders.py (they need a
    # lasting fault); here every route is called once.
    await api.call("GET", "/api/workorders", path="/api/workorders?status=all", expect=200)
    for action, body in (("assign", {"user": "tech1"}), ("notes", {"text": "x"}), ("close", {})):
        await api.call(
            "POST",
            f"/api/workorders/{{id}}/{action}",
            path=f"/api/workorders/999/{action}",
            json_body=body,
            expect=404,
        )
    await api.call("GET", "/api/metrics", expect=200)

    # The upper-level platform's link (controller/upstream): a package that is no tar is
    # answered with a signed receipt (result code 2); no platform URL set, no report up.
    source = await db.run(
        lambda s: create_user_and_token(s, "platform-openapi", Role.UPSTREAM, None)
    )
    status, _, got = await api.call("POST", "/api/ebd", token=source, expect=400)
    assert got["X-EBD-Result-Code"] == "2"
    await api.call("POST", "/api/upstream/reports", json_body={}, expect=409)
    await api.call("GET", "/api/upstream/reports", expect=200)

    # Warning sources and CAP (tests/integration/test_upstream_cap.py plays them).
    _, cap_source, _ = await api.call(
        "POST", "/api/upstream/sources", json_body={"id": "qxj-openapi"}, expect=201
    )
    await api.call("GET", "/api/upstream/sources", expect=200)
    await api.call(
        "PATCH",
        "/api/upstream/sources/{id}",
        path="/api/upstream/sources/qxj-openapi",
        json_body={"mode": "automatic", "hold_levels": [1]},
        expect=200,
    )
    cap_headers = {"Content-Type": "application/cap+xml"}
    _, err, _ = await api.call(
        "POST", "/api/cap", token=cap_source["token"], headers=cap_headers, expect=400
    )
    assert err["error"]["code"] == "cap_malformed"
    await api.call("POST", "/api/cap", headers=cap_headers, expect=403)  # not a source
    _, inbox, _ = await api.call("GET", "/api/upstream/messages", expect=200)
    assert inbox["messages"] == []  # nothing stored from a refusal
    await api.call(
        "GET", "/api/upstream/messages/{id}", path="/api/upstream/messages/nope", expect=404
    )
    amber = (Path(__file__).parents[1] / "cap_fixtures" / "oasis_amber.xml").read_bytes()
    async with county.http.post(
        county.url + "/api/cap",
        data=amber,
        headers={**county.headers(cap_source["token"]), **cap_headers},
    ) as resp:
        raw = await resp.read()
        api.check("POST", "/api/cap", resp.status, resp.content_type, raw)
        assert resp.status == 200 and json.loads(raw)["outcome"] == "no_area"
    _, inbox, _ = await api.call("GET", "/api/upstream/messages", expect=200)
    await api.call(
        "GET",
        "/api/upstream/messages/{id}",
        path=f"/api/upstream/messages/{inbox['messages'][0]['id']}",
        expect=200,
    )

    # Users and the console session (bearer tokens reach these too).
    await api.call("GET", "/api/users", expect=200)
    _, user, _ = await api.call(
        "POST",
        "/api/users",
        json_body={"name": "clerk9", "role": "viewer", "password": "a-long-passphrase-9"},
        expect=201,
    )
    await api.call(
        "PATCH",
        "/api/users/{id}",
        path=f"/api/users/{user['id']}",
        json_body={"disabled": True},
        expect=200,
    )
    await api.call("POST", "/api/users/{name}/unlock", path="/api/users/clerk9/unlock")
    name = "duty1"
    password = county.prepared.console_users[name][2]
    await api.call(
        "POST",
        "/api/session/login",
        anonymous=True,
        json_body={"name": name, "password": password},
        expect=200,
    )
    await api.call("GET", "/api/session")
    await api.call("POST", "/api/session/password", json_body={"current": "x", "new": "y"})
    await api.call("POST", "/api/session/logout")

    # Agent updates (issue 13; the real wheel goes out in tests/integration/test_updates.py).
    await api.call("GET", "/api/updates/releases", expect=200)
    await api.call("POST", "/api/updates/releases?version=1.0&min_version=1.0", expect=400)
    await api.call("GET", "/api/updates/rollouts", expect=200)
    rollout = {"release_id": "nope", "targets": {"all": True}}
    await api.call("POST", "/api/updates/rollouts", json_body=rollout, expect=400)
    for action in ("", "/halt", "/resume"):
        await api.call(
            "GET" if not action else "POST",
            f"/api/updates/rollouts/{{id}}{action}",
            path=f"/api/updates/rollouts/nope{action}",
            expect=404,
        )

    # Enrolment (issue 13; codes, enrolling and revoking against a real broker are in
    # tests/integration/test_enrolment.py): this controller manages no broker accounts.
    dev = next(iter(county.fleet.configs))
    for action in ("enrolment-code", "revoke"):
        await api.call(
            "POST", f"/api/devices/{{id}}/{action}", path=f"/api/devices/{dev}/{action}", expect=409
        )
    await api.call("POST", "/api/enrol", anonymous=True, json_body={"code": "AB-CD"}, expect=409)

    # The live stream: its first frame, then hang up.
    async with county.http.get(county.url + "/api/live", headers=county.headers()) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
        assert b"hello" in first
        api.check("GET", "/api/live", resp.status, resp.content_type, b"")

    # Live paging: start, the audio socket (opened and closed), stop.
    _, session, _ = await api.call(
        "POST", "/api/live-paging", json_body={"targets": {"villages": ["t01-v01"]}}, expect=201
    )
    audio = f"/api/live-paging/{session['id']}/audio"
    ws = await county.http.ws_connect(county.url + audio, headers=county.headers())
    await ws.close()
    api.check("GET", "/api/live-paging/{id}/audio", 101, "application/octet-stream", b"")
    await api.call(
        "POST",
        "/api/live-paging/{id}/stop",
        path=f"/api/live-paging/{session['id']}/stop",
        expect=200,
    )

    # Phone-call broadcast: a whitelist saved, the lists, the calls.
    await api.call(
        "PUT",
        "/api/phone/whitelists/{scope}/{scope_id}",
        path="/api/phone/whitelists/village/t01-v01",
        json_body={"numbers": ["138 0013 8000"], "pin": "2468"},
        expect=200,
    )
    await api.call("GET", "/api/phone/whitelists", expect=200)
    await api.call("GET", "/api/calls", path="/api/calls?limit=10", expect=200)
    # A terminal's clip: asked for, then looked at; the upload answers a wrong token.
    _, clip, _ = await api.call(
        "POST",
        "/api/devices/{id}/clip",
        path="/api/devices/d-t01-v01-1/clip",
        json_body={"seconds": 2},
        expect=202,
    )
    await api.call(
        "GET",
        "/api/devices/{id}/clip/{request_id}",
        path=f"/api/devices/d-t01-v01-1/clip/{clip['request_id']}",
        expect=200,
    )
    await api.call(
        "PUT",
        "/device-clips/{request_id}",
        path="/device-clips/not-a-request",
        headers={"X-Dalaba-Clip-Token": "x" * 43},
        anonymous=True,
        expect=403,
    )

    # Every documented operation was called, except the upload (tests/integration/
    # test_content_uploads.py sends real audio files).
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    missed = documented - set(api.called) - {("POST", "/api/media")}
    assert not missed, f"operations never checked against their schema: {sorted(missed)}"


@pytest.mark.broker
@pytest.mark.slow
async def test_lists_page_as_documented(make_county) -> None:
    county = await make_county(villages=2)
    _, villages = await county.api("GET", "/api/villages", expect=200)
    village = villages["villages"][0]["id"]
    first = await county.broadcast(**NOTICE, targets={"villages": [village]})
    _, view = await county.api("GET", f"/api/broadcasts/{first}?deliveries=0", expect=200)
    made = [first]
    for i in range(4):  # the same audio: no rendering, five broadcasts in a row
        body = {"media_id": view["media_id"], "title": f"第{i}条", "category": "meeting"}
        made.append(
            await county.broadcast(**body, priority="notice", targets={"villages": [village]})
        )

    seen: list[str] = []
    path = "/api/broadcasts?limit=2"
    pages = 0
    while True:
        _, page = await county.api("GET", path, expect=200)
        pages += 1
        assert len(page["broadcasts"]) <= 2 and page["limit"] == 2
        seen += [b["id"] for b in page["broadcasts"]]
        if page["next_before"] is None:
            break
        path = f"/api/broadcasts?limit=2&before={page['next_before']}"
    assert seen == list(reversed(made)) and pages == 3

    for bad, field in (("limit=0", "limit"), ("limit=x", "limit"), ("before=nope", "before")):
        status, err = await county.api("GET", f"/api/broadcasts?{bad}")
        assert status == 400 and err["error"]["field"] == field, (bad, err)

    # limit/offset lists: the pages add up to the total, newest first.
    _, whole = await county.api("GET", "/api/records/broadcasts?limit=500", expect=200)
    _, one = await county.api("GET", "/api/records/broadcasts?limit=2&offset=2", expect=200)
    assert whole["total"] == one["total"] == 5
    assert [b["id"] for b in one["broadcasts"]] == [b["id"] for b in whole["broadcasts"][2:4]]
    _, audit = await county.api("GET", "/api/audit?limit=3&offset=1", expect=200)
    _, audit_all = await county.api("GET", "/api/audit?limit=500", expect=200)
    assert [e["id"] for e in audit["entries"]] == [e["id"] for e in audit_all["entries"][1:4]]
    assert audit["limit"] == 3 and audit["offset"] == 1
    _, devices = await county.api("GET", "/api/devices", expect=200)
    one_device = devices["devices"][0]["id"]
    _, last = await county.api("GET", f"/api/devices/{one_device}/deliveries?limit=2", expect=200)
    assert len(last["deliveries"]) == 2

    # The answer is written with real characters.
    async with county.http.get(
        county.url + f"/api/broadcasts/{first}", headers=county.headers()
    ) as resp:
        raw = await resp.read()
    assert "村委会".encode() in raw and b"\\u" not in raw


def test_strict_schema_refuses_undocumented_fields() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "additionalProperties": True,
    }
    strict = _strict(copy.deepcopy(schema))
    assert not list(Draft202012Validator(schema).iter_errors({"a": 1, "b": 2}))
    assert list(Draft202012Validator(strict).iter_errors({"a": 1, "b": 2}))
    assert not list(Draft202012Validator(strict).iter_errors({"a": 1}))
