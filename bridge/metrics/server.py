"""The HTTP side: the health endpoint (on the appservice's own listener, beside mautrix's
/_matrix/mau/ready and /live, and on the metrics listener) and the metrics listener
(metrics.listen: GET /metrics in Prometheus' text format, GET /health)."""
from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.metrics.database import DatabaseGauges
from bridge.metrics.definitions import REGISTRY
from bridge.metrics.health import HealthCheck

log = logging.getLogger("bridge.metrics")

HEALTH_PATH = "/_matrix/mau/health"


def health_handler(check: HealthCheck):
    async def health(request: web.Request) -> web.Response:
        result = await check.check()
        return web.json_response(result.as_json(), status=200 if result.healthy else 503)
    return health


def split_listen(listen: str) -> tuple[str, int]:
    """"127.0.0.1:8000" -> ("127.0.0.1", 8000); "[::1]:8000" -> ("::1", 8000)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer:
    def __init__(self, listen: str, gauges: DatabaseGauges, check: HealthCheck) -> None:
        self.host, self.port = split_listen(listen)
        self.gauges = gauges
        self.check = check
        self.runner: web.AppRunner | None = None

    async def metrics(self, request: web.Request) -> web.Response:
        await self.gauges.refresh()
        await self.check.check()  # (cached: the dependency_up gauges come from it)
        return web.Response(body=generate_latest(REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", health_handler(self.check))
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port).start()
        log.info("Metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
