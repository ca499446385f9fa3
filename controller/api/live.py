"""/api/live: server-sent events for the console's live views.

Events: `delivery` (a terminal's progress on a broadcast), `device` (online/offline),
`event` (faults raised/cleared, config applied ...), `broadcast` (created, cancelled),
`approval` (a request waiting for, or decided by, a second officer), and `resync` when a
stream fell so far behind that the client should reload what it shows. The browser's
EventSource sends the session cookie; machines may use a bearer token.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from controller.api import keys
from controller.auth import principal_of
from controller.openapi import Content, describe

routes = web.RouteTableDef()

HEARTBEAT_S = 15.0  # also how soon a vanished client is noticed


def _frame(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


@routes.get("/api/live")
@describe(
    "Server-sent events for live views: delivery, device, event, broadcast, approval, "
    "resync (reload what you show)",
    tag="live",
    responses={200: Content("text/event-stream", {"type": "string"})},
)
async def live(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    hub = request.app[keys.LIVE]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a proxy in front must not buffer the stream
        }
    )
    await response.prepare(request)
    sub = hub.subscribe(principal)
    try:
        await response.write(b"retry: 2000\n" + _frame("hello", {"user": principal.user}))
        while not sub.closed:
            try:
                # Not wait_for: 3.11's loses a cancel (a client gone, a shutdown) that
                # lands as an event arrives (bpo-42130), and the stream would go on.
                async with asyncio.timeout(HEARTBEAT_S):
                    item = await sub.queue.get()
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if item is None:
                break
            chunks = [_frame(*item)]
            # A burst (a county-wide broadcast) goes out in few writes, not thousands.
            while not sub.queue.empty() and len(chunks) < 500:
                nxt = sub.queue.get_nowait()
                if nxt is None:
                    sub.closed = True
                    break
                chunks.append(_frame(*nxt))
            if sub.overflowed:
                while not sub.queue.empty():
                    sub.queue.get_nowait()
                sub.overflowed = False
                chunks = [_frame("resync", {})]
            await response.write(b"".join(chunks))
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        hub.unsubscribe(sub)
    return response
