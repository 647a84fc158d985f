"""Gauges read from PostgreSQL when scraped: several bridge processes may share one
database, so what is waiting or live is the database's to say, not one process's. One
statement over partial indexes (the queue holds only waiters; live sides and opening
conversations have their own indexes), run at most once per `max_age` seconds however
often it is scraped, and given up after `timeout` (the gauges are then left out: a gauge
that is not known is not shown, rather than shown stale)."""
from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("bridge.metrics")

_COUNTS = """
    SELECT (SELECT count(*) FROM waiting) AS waiting,
           (SELECT count(*) FROM conversation_sides WHERE live) / 2 AS live,
           (SELECT count(*) FROM conversations WHERE state = 'opening') AS opening,
           (SELECT count(*) FROM reports WHERE status = 'open') AS open_reports"""


class DatabaseGauges(Collector):
    def __init__(self, pool: asyncpg.Pool, *, max_age: float = 5.0, timeout: float = 2.0) -> None:
        self.pool = pool
        self.max_age = max_age
        self.timeout = timeout
        self._counts: dict[str, int] | None = None
        self._read_at = float("-inf")
        self._reading: asyncio.Task | None = None

    async def refresh(self) -> None:
        """Read the counts again unless they are fresh (concurrent scrapes share one read)."""
        if time.monotonic() - self._read_at < self.max_age:
            return
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read())
        reading = self._reading
        try:
            await asyncio.shield(reading)
        finally:
            if self._reading is reading and reading.done():
                self._reading = None

    async def _read(self) -> None:
        try:
            row = await asyncio.wait_for(self.pool.fetchrow(_COUNTS), self.timeout)
            self._counts = dict(row)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError,
                asyncpg.InterfaceError) as e:
            log.warning("Metrics: could not read the counts from PostgreSQL: %s",
                        type(e).__name__)
            self._counts = None
        self._read_at = time.monotonic()

    def collect(self):
        counts = self._counts
        if counts is None:
            return
        yield GaugeMetricFamily("stranger_bridge_users_waiting",
                                "Users in the queue, waiting for a stranger (every process).",
                                value=counts["waiting"])
        live = GaugeMetricFamily(
            "stranger_bridge_conversations_live",
            "Conversations not ended, by state: opening (invites out) or active (every "
            "process).", labels=["state"])
        live.add_metric(["opening"], counts["opening"])
        live.add_metric(["active"], max(0, counts["live"] - counts["opening"]))
        yield live
        yield GaugeMetricFamily("stranger_bridge_reports_open",
                                "Reports no moderator has dealt with yet.",
                                value=counts["open_reports"])

    def describe(self):
        return []  # (the registry must not call collect() at registration: nothing read yet)
