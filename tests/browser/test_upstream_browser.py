"""Warnings from upstream in real Chromium against a real county: a 暴雨橙色预警 from a
source in review mode waits in the approvals queue with its area on the county map and
the CAP text as received; the duty officer listens, narrows it to 河口镇 and releases
it; the inbox lists it with its outcome and the broadcast, and opens it verbatim; the
admin sees the source in review mode on the sources page. Screenshots are artifacts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.broker, pytest.mark.slow]

FIXTURE = Path(__file__).resolve().parents[1] / "cap_fixtures" / "cn_rainstorm.xml"
BEIJING = timezone(timedelta(hours=8))


def rainstorm(identifier: str) -> bytes:
    now = datetime.now(BEIJING)
    text = FIXTURE.read_text()
    for key, value in {
        "identifier": identifier,
        "sent": now.isoformat(timespec="seconds"),
        "expires": (now + timedelta(hours=2)).isoformat(timespec="seconds"),
        "status": "Actual",
    }.items():
        text = text.replace("{" + key + "}", value)
    return text.encode()


async def test_a_held_warning_is_reviewed_on_the_map_and_released_narrower(
    make_county: Any, open_console: Any
) -> None:
    county = await make_county(villages=31)  # 城关镇 t01 (16 villages), 河口镇 t02 (15)
    _, source = await county.api(
        "POST",
        "/api/upstream/sources",
        json_body={"id": "qxj", "name": "示范县气象台", "mode": "review"},
        expect=201,
    )
    headers = {"Authorization": f"Bearer {source['token']}", "Content-Type": "application/cap+xml"}
    raw = rainstorm("43013141600000_20261130150000_1")
    async with county.http.post(county.url + "/api/cap", data=raw, headers=headers) as resp:
        assert resp.status == 202
        held = await resp.json()

    duty = await open_console(county, "duty1")
    page = duty.page
    card = f"[data-approval='{held['approval_id']}']"
    await duty.go(f"approvals/{held['approval_id']}", f"{card} .upstream-held")
    assert "示范县气象台" in await duty.text(f"{card} .upstream-held")
    assert await page.locator(f"{card} circle[data-area='1']").count() == 31
    assert "暴雨橙色预警" in (await page.text_content(f"{card} .raw-xml") or "")
    await duty.shot("upstream-01-review")

    # Release to 河口镇 only: untick 城关镇, listen, approve.
    await page.uncheck(f"{card} input[data-township='t01']")
    await page.locator(f"{card} audio").evaluate("a => a.play()")
    await page.wait_for_function(
        "s => !document.querySelector(s).disabled", arg=f"{card} [data-action=approve]"
    )
    await page.click(f"{card} [data-action=approve]")
    await page.click("dialog [data-ok]")
    await page.wait_for_url("**/#/board/*")
    broadcast_id = page.url.rsplit("/", 1)[1]
    view = await county.get_broadcast(broadcast_id)
    assert view["target"]["townships"] == ["t02"] and not view["target"]["villages"]

    await duty.go("inbox", "#inbox tr[data-message]")
    row = page.locator("#inbox tr[data-message]").first
    assert await row.get_attribute("data-outcome") == "review"
    assert await row.locator(f"a[href='#/board/{broadcast_id}']").count() == 1
    await duty.shot("upstream-02-inbox")
    await row.locator("a[href^='#/inbox/']").click()
    await page.wait_for_selector("#upstream-message")
    assert (await page.text_content("#raw-xml") or "").strip() == raw.decode().strip()

    # The officer's own broadcast may be targeted by code too.
    await duty.go("emergency", "[data-area=codes]")
    await page.click("[data-area=codes]")
    await page.fill("input[name=areas]", "430131102 430131101203 4309")
    await page.press("input[name=areas]", "Tab")
    await page.wait_for_selector("#em-codes li[data-code='430131102']")
    counts = {
        code: await page.get_attribute(f"#em-codes li[data-code='{code}']", "data-villages")
        for code in ("430131102", "430131101203", "4309")
    }
    assert counts == {"430131102": "15", "430131101203": "1", "4309": "0"}
    await duty.shot("upstream-04-codes")

    admin = await open_console(county, "demo-admin")
    await admin.go("sources", "#sources tr[data-source='qxj']")
    assert await admin.page.get_attribute("#sources tr[data-source='qxj']", "data-mode") == "review"
    await admin.shot("upstream-03-sources")
