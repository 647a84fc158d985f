"""Is the bridge healthy: can it reach PostgreSQL and its homeserver now?

Each check is short (`SELECT 1`; the homeserver's GET /_matrix/client/versions), each
given up after `timeout` seconds, so an answer comes within seconds even when one of them
hangs rather than refuses. The result is kept `max_age` seconds and concurrent callers
share one check: an orchestrator polling hard costs at most one check a second. Also a
collector: stranger_bridge_dependency_up{dependency} from the last check.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import aiohttp
import asyncpg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


@dataclass(frozen=True)
class Health:
    database: str | None  # None: reachable; else what went wrong (no address, no secret)
    homeserver: str | None

    @property
    def healthy(self) -> bool:
        return self.database is None and self.homeserver is None

    def as_json(self) -> dict:
        down = [name for name, error in (("database", self.database),
                                         ("homeserver", self.homeserver)) if error]
        return {"healthy": self.healthy, "down": down,
                "database": self.database or "ok", "homeserver": self.homeserver or "ok"}


async def _within(check: Callable[[], Awaitable[None]], timeout: float) -> str | None:
    """Run the check; None when it passed in time, else why not. The caller never waits
    longer than `timeout`, even for a check whose clean-up hangs (it is cancelled and left
    to finish on its own)."""
    task = asyncio.ensure_future(check())
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return f"no answer within {timeout:g} s"
    error = task.exception()
    if error is None:
        return None
    return str(error) if isinstance(error, _Unhealthy) else f"unreachable ({type(error).__name__})"


class _Unhealthy(Exception):
    """Reachable, but answering wrong (the text says how)."""


class HealthCheck(Collector):
    def __init__(self, pool: asyncpg.Pool, homeserver_url: str, *, verify_ssl: bool = True,
                 timeout: float = 2.0, max_age: float = 1.0) -> None:
        self.pool = pool
        self.versions_url = homeserver_url.rstrip("/") + "/_matrix/client/versions"
        self.verify_ssl = verify_ssl
        self.timeout = timeout
        self.max_age = max_age
        self.last: Health | None = None
        self._checked_at = float("-inf")
        self._checking: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None

    async def check(self) -> Health:
        """The latest result, checked again when older than max_age."""
        if self.last is not None and time.monotonic() - self._checked_at < self.max_age:
            return self.last
        if self._checking is None or self._checking.done():
            self._checking = asyncio.ensure_future(self._check())
        checking = self._checking
        try:
            return await asyncio.shield(checking)
        finally:
            if self._checking is checking and checking.done():
                self._checking = None

    async def _check(self) -> Health:
        database, homeserver = await asyncio.gather(
            _within(self._database, self.timeout), _within(self._homeserver, self.timeout))
        self.last = Health(database, homeserver)
        self._checked_at = time.monotonic()
        return self.last

    async def _database(self) -> None:
        async with self.pool.acquire(timeout=self.timeout) as conn:
            await conn.fetchval("SELECT 1", timeout=self.timeout)

    async def _homeserver(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=None if self.verify_ssl else False))
        async with self._session.get(
                self.versions_url, timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
            if response.status != 200:
                raise _Unhealthy(f"answered HTTP {response.status}")
            await response.read()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def collect(self):
        if self.last is None:
            return
        up = GaugeMetricFamily("stranger_bridge_dependency_up",
                               "1 when the last health check reached it, else 0.",
                               labels=["dependency"])
        up.add_metric(["database"], int(self.last.database is None))
        up.add_metric(["homeserver"], int(self.last.homeserver is None))
        yield up

    def describe(self):
        return []
