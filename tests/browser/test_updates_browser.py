"""The updates page in real Chromium against a real county: an admin uploads a release
(a minimal bundle of the agent's packages) and rolls it out to the county; the simulated
terminals are not run by `dalaba agent-launcher`, so each refuses and says why, the
first wave fails and the rollout halts by itself, in Chinese. A technician follows it
without buttons. A screenshot is kept as an artifact."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.broker, pytest.mark.slow]

VERSION = "9.1.0"


def bundle(path: Path) -> Path:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("dalaba/__init__.py", f'__version__ = "{VERSION}"\n')
        zf.writestr("edge_agent/agent.py", "")
    path.write_bytes(out.getvalue())
    return path


async def test_an_admin_rolls_out_a_release_and_sees_it_halt_with_the_reasons(
    make_county: Any, open_console: Any, tmp_path: Path
) -> None:
    county = await make_county(villages=4)
    admin = await open_console(county, "demo-admin")
    page = admin.page
    assert await admin.text("#nav [data-nav=updates]") == "终端升级"
    await admin.go("updates", "#upd-upload [data-action=upload]")
    await page.set_input_files("#upd-upload input[name=file]", str(bundle(tmp_path / "r.whl")))
    await page.fill("#upd-upload input[name=version]", VERSION)
    await page.fill("#upd-upload input[name=min_version]", "0.1")
    await page.click("#upd-upload [data-action=upload]")
    release = f"#upd-releases [data-version='{VERSION}']"
    await page.wait_for_selector(release)
    assert "最低可升级版本" in await admin.text(release)

    await page.fill(f"{release} input[name=first_wave_percent]", "50")
    await page.click(f"{release} [data-action=rollout]")
    rollout = "#upd-rollouts [data-rollout][data-state=halted]"
    await page.wait_for_selector(rollout, timeout=60_000)
    text = await admin.text(rollout)
    assert "已暂停" in text and "失败" in text and "等待批次" in text
    assert "已自动暂停：第一批 2 台中 2 台失败" in text
    await page.click(f"{rollout} [data-action=terminals]")
    await page.wait_for_selector(f"{rollout} tr[data-state=failed]")
    reasons = await admin.text(f"{rollout} tr[data-state=failed]")
    assert "agent-launcher" in reasons
    assert await page.locator(f"{rollout} [data-action=resume]").count() == 1
    assert "null" not in await admin.text("#main")
    await admin.shot("updates-halted-zh")

    _, body = await county.api("GET", "/api/updates/rollouts")
    [saved] = body["rollouts"]
    assert saved["state"] == "halted" and saved["counts"].get("failed")

    tech = await open_console(county, "tech1")
    await tech.go("updates", "#upd-rollouts [data-rollout]")
    assert await tech.page.locator("#upd-readonly").count() == 1
    assert await tech.page.locator("[data-action=upload], [data-action=resume]").count() == 0
