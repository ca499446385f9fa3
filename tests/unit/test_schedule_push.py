"""The push debounce: no terminal's update is lost when requests arrive mid-push."""

from __future__ import annotations

import asyncio
from typing import Any

from controller.schedules.push import TerminalPusher
from controller.settings import Settings


async def test_a_request_during_a_push_is_pushed_too(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, demo=True, schedule_push_debounce_ms=10)
    pusher = TerminalPusher(None, None, settings)  # type: ignore[arg-type]
    pushed: list[set[str]] = []
    in_push = asyncio.Event()

    async def record(devices: Any, **_kw: Any) -> None:
        # Stands in for the database read and the publish: only the batching is tested.
        pushed.append(set(devices))
        in_push.set()
        await asyncio.sleep(0.05)

    pusher.push = record  # type: ignore[method-assign]
    pusher.request(["d1"])
    await in_push.wait()
    pusher.request(["d2"])  # arrives while the first push is still under way
    await asyncio.sleep(0.3)
    assert pushed == [{"d1"}, {"d2"}]
    await pusher.stop()
