"""Fetching audio onto the terminal's flash: every source in turn, with backoff, until a
deadline.

A controller that restarts, or a mirror that is briefly away, must not make a whole
county's broadcast fail: a play's audio is retried (0.25 s, doubling, at most 2 s, with
jitter so a county's terminals do not retry in lockstep) until the broadcast's start
plus a grace, trying `MediaRef.url` and then each mirror. Only answers that retrying
cannot change end it early: HTTP 404/410 and bytes that do not hash to the sha256 the
signed command names, from every source. The hash is checked before anything is stored.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp

from dalaba import protocol as p
from edge_agent.cache import MediaCache
from edge_agent.hardware import Clock, NetworkLink

# A single request never waits longer than this to connect: a dead host is tried again
# (or the next source is), instead of eating the whole grace.
CONNECT_TIMEOUT_S = 5.0


class MediaUnavailable(Exception):
    """Every source answered in a way retrying cannot change (404, hash mismatch)."""


class FetchDeadline(Exception):
    """The deadline passed before any source delivered; the message is the last error."""


@dataclass(frozen=True)
class Backoff:
    first_s: float
    cap_s: float
    jitter: float = 0.25  # each delay is scaled by a random factor in 1 ± jitter

    def delays(self) -> Iterator[float]:
        delay = self.first_s
        while True:
            yield delay * (1 + self.jitter * (2 * random.random() - 1))
            delay = min(delay * 2, self.cap_s)


# For a play: its start instant is close, retry often.
PLAY_BACKOFF = Backoff(first_s=0.25, cap_s=2.0)
# For pre-positioned and scheduled audio: nothing is waiting on it, be gentle.
PREFETCH_BACKOFF = Backoff(first_s=1.0, cap_s=15.0)


class _Definitive(Exception):
    pass


class _Retryable(Exception):
    pass


class MediaFetcher:
    def __init__(
        self,
        *,
        cache: MediaCache,
        base_url: str,
        network: NetworkLink,
        clock: Clock,
        session: Callable[[], aiohttp.ClientSession],
    ) -> None:
        self.cache = cache
        self.base_url = base_url
        self.network = network
        self.clock = clock
        self._session = session
        self.requests = 0  # HTTP requests made (a test counts them to prove "not fetched")

    def sources(self, media: p.MediaRef) -> list[str]:
        """`url` first, then the mirrors; relative ones join the media base URL."""
        urls: list[str] = []
        for ref in (media.url, *media.mirrors):
            url = urljoin(self.base_url, ref)
            if url not in urls:
                urls.append(url)
        return urls

    async def fetch(
        self, media: p.MediaRef, deadline_ms: int, backoff: Backoff = PLAY_BACKOFF
    ) -> Path:
        """The audio's path in the cache, fetched if it is not there.

        Every source is tried at least once, however late it is. Raises
        `MediaUnavailable` as soon as every source answered definitively, and
        `FetchDeadline` when the next retry would start after `deadline_ms`."""
        sources = self.sources(media)
        delays = backoff.delays()
        last_error = "no source tried"
        while True:
            cached = self.cache.lookup(media.sha256)  # fetched meanwhile by another job?
            if cached is not None:
                return cached
            definitive: list[str] = []
            for url in sources:
                try:
                    return await self._fetch_from(media, url, deadline_ms)
                except _Definitive as exc:
                    definitive.append(str(exc))
                    last_error = str(exc)
                except _Retryable as exc:
                    last_error = str(exc)
            if len(definitive) == len(sources):
                raise MediaUnavailable("; ".join(definitive))
            delay = next(delays)
            if self.clock.now_ms() + delay * 1000 >= deadline_ms:
                raise FetchDeadline(last_error)
            await asyncio.sleep(delay)

    async def _fetch_from(self, media: p.MediaRef, url: str, deadline_ms: int) -> Path:
        if urlsplit(url).scheme not in ("http", "https"):
            raise _Definitive(f"unusable URL {url}")
        if not self.network.up:
            raise _Retryable("network down")
        remaining_s = max(1.0, (deadline_ms - self.clock.now_ms()) / 1000)
        timeout = aiohttp.ClientTimeout(
            total=remaining_s, sock_connect=min(remaining_s, CONNECT_TIMEOUT_S)
        )
        self.requests += 1
        try:
            async with self._session().get(url, timeout=timeout) as resp:
                if resp.status in (404, 410):
                    raise _Definitive(f"HTTP {resp.status} from {url}")
                if resp.status != 200:
                    raise _Retryable(f"HTTP {resp.status} from {url}")
                data = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _Retryable(f"{exc or type(exc).__name__} ({url})") from None
        await self.network.transfer_delay(len(data))
        try:
            return self.cache.put(media.sha256, data)
        except ValueError as exc:
            detail = str(exc).partition(": ")[2]  # "expected …, got …"
            raise _Definitive(f"hash mismatch from {url} ({detail})") from None
