"""Metrics: the config keys, the label rule (no label ever holds a user, room or server
name), the thin calls, errors counted from the log, and the health check's timeouts and
cache. (With a real bridge and a real conversation: tests/e2e/test_operator.py.)"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from bridge.lab.synapse import free_port
from bridge.metrics import definitions as metrics
from bridge.metrics import labels
from bridge.metrics.database import DatabaseGauges
from bridge.metrics.errors import count_errors
from bridge.metrics.health import Health, HealthCheck
from bridge.metrics.server import MetricsServer, split_listen
from tests.unit.test_config import assert_invalid, load, valid

REPO = Path(__file__).resolve().parents[2]
HOSTILE = ["@alice:evil.example", "!room:evil.example", "evil.example", "#alias:evil.example",
           "", "left\n", "refused_@alice:x"]


def value(name: str, **label_values: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, label_values) or 0.0


# -- config ---------------------------------------------------------------------------------

def test_metrics_are_off_by_default_on_loopback(tmp_path):
    config = load(tmp_path, valid())
    config.validate()
    assert config["metrics.enabled"] is False
    assert config["metrics.listen"] == "127.0.0.1:8000"


@pytest.mark.parametrize("listen", ["127.0.0.1:8000", "[::1]:9100", "metrics.internal:9000",
                                    "0.0.0.0:1"])
def test_a_good_listen_address_is_taken(tmp_path, listen):
    config = load(tmp_path, valid(metrics={"enabled": True, "listen": listen}))
    config.validate()
    assert split_listen(listen)[1] == int(listen.rsplit(":", 1)[1])


@pytest.mark.parametrize("listen", ["8000", "127.0.0.1", "127.0.0.1:", ":8000", "host:0",
                                    "host:70000", "a b:80", "http://127.0.0.1:8000", 8000])
def test_a_bad_listen_address_names_the_key(tmp_path, listen):
    message = assert_invalid(tmp_path, valid(metrics={"listen": listen}), "metrics.listen")
    assert "host:port" in message


@pytest.mark.parametrize("enabled", ["yes", 1, "true"])
def test_enabled_must_be_true_or_false(tmp_path, enabled):
    assert_invalid(tmp_path, valid(metrics={"enabled": enabled}), "metrics.enabled")


def test_metrics_cannot_share_the_appservice_port(tmp_path):
    data = valid(metrics={"enabled": True, "listen": "127.0.0.1:29331"},
                 appservice={"port": 29331})
    assert "appservice.port" in assert_invalid(tmp_path, data, "metrics.listen")


# -- the label rule ------------------------------------------------------------------------

def walk_labels(registry) -> list[tuple[str, str, str]]:
    """Every (sample, label name, label value) the registry would serve."""
    return [(sample.name, name, value) for family in registry.collect()
            for sample in family.samples for name, value in sample.labels.items()]


class FakePool:
    def __init__(self, row: dict | None = None, hang: bool = False) -> None:
        self.row, self.hang, self.reads = row, hang, 0

    async def fetchrow(self, query: str):
        self.reads += 1
        if self.hang:
            await asyncio.Event().wait()
        return self.row


async def test_no_label_anywhere_holds_a_user_room_or_server():
    # Every call, with every kind of value a caller could pass, hostile ones included.
    for reason in (*labels.END_REASONS, *HOSTILE):
        metrics.conversation_ended(reason)
    for kind in (*labels.REFUSED_KINDS, *HOSTILE):
        metrics.refused(kind)
        metrics.refused(f"refused_{kind}")
    for where in (*labels.UNDECRYPTABLE_PLACES, *HOSTILE):
        metrics.undecryptable(where)
    for kind in (*labels.SANCTION_KINDS, *HOSTILE):
        for source in (*labels.SANCTION_SOURCES, *HOSTILE):
            metrics.sanctioned(kind, source)
    metrics.matched(0.5, 3.0)
    metrics.reported()
    counter = count_errors()
    for name in ("bridge", "bridge.handler", "bridge.appservice.api.@_stranger_x:evil.example",
                 "bridge.@alice:evil.example", "mau.client", "bridge.encryption.crypto"):
        counter.handle(logging.LogRecord(name, logging.ERROR, __file__, 1, "x", None, None))
    # The collectors of a running bridge, with data.
    gauges = DatabaseGauges(FakePool({"waiting": 3, "live": 2, "opening": 1, "open_reports": 4}))
    await gauges.refresh()
    check = HealthCheck(FakePool(), "http://127.0.0.1:1")
    check.last = Health(None, "down")
    metrics.REGISTRY.register(gauges)
    metrics.REGISTRY.register(check)
    try:
        found = walk_labels(metrics.REGISTRY)
        text = generate_latest(metrics.REGISTRY).decode()
    finally:
        metrics.REGISTRY.unregister(gauges)
        metrics.REGISTRY.unregister(check)
    assert {name for _, name, _ in found} >= {"reason", "kind", "where", "source", "component",
                                              "state", "dependency", "le"}
    bad = [(sample, name, v) for sample, name, v in found if not labels.allowed(name, v)]
    assert bad == []
    for hostile in ("@alice", "evil.example", "!room", "#alias", "_stranger_"):
        assert hostile not in text
    assert value("stranger_bridge_conversation_endings_total", reason="other") >= len(HOSTILE)


def test_the_rule_refuses_ids_and_names():
    for name in ("reason", "kind", "where", "component", "source", "state", "dependency"):
        for hostile in HOSTILE:
            assert not labels.allowed(name, hostile)
    assert not labels.allowed("user", "anything")  # an unknown label name is refused
    assert not labels.allowed("le", "@alice:evil.example")
    assert labels.allowed("le", "0.25") and labels.allowed("le", "+Inf")


def test_every_name_says_its_unit_and_starts_with_the_prefix():
    for family in metrics.REGISTRY.collect():
        if family.name.startswith(("process_", "python_")):
            continue  # prometheus_client's own
        assert family.name.startswith("stranger_bridge_")
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        if family.type == "histogram":
            assert family.name.endswith("_seconds")


def test_every_refusal_key_of_the_bridge_is_a_known_kind():
    """A new refused_<kind> notice must get its label value (else it counts as other)."""
    source = "\n".join(p.read_text() for p in (REPO / "bridge").rglob("*.py"))
    keys = set(re.findall(r'"refused_([a-z_]+)"', source))
    keys |= set(re.findall(r'Refused\("([a-z_]+)"', source))
    assert keys and keys <= set(labels.REFUSED_KINDS)


def test_components_are_the_loggers_second_name():
    assert labels.component_of("bridge") == "app"
    assert labels.component_of("bridge.encryption.ghost_devices") == "encryption"
    assert labels.component_of("bridge.@alice:evil.example") == "other"
    assert labels.component_of("mau.client") == "other"


# -- the thin calls ------------------------------------------------------------------------

def test_errors_are_counted_from_the_log():
    count_errors()
    before = value("stranger_bridge_errors_total", component="dispatcher")
    warnings = value("stranger_bridge_errors_total", component="relay")
    logging.getLogger("bridge.dispatcher").error("Failed to handle $x")
    logging.getLogger("bridge.relay").warning("a warning is not an error")
    assert value("stranger_bridge_errors_total", component="dispatcher") == before + 1
    assert value("stranger_bridge_errors_total", component="relay") == warnings
    assert count_errors() is count_errors()  # attached once


def test_relay_latency_runs_from_the_events_arrival():
    count = value("stranger_bridge_relay_latency_seconds_count")
    total = value("stranger_bridge_relay_latency_seconds_sum")
    metrics.relayed()  # no event being handled: nothing to time
    assert value("stranger_bridge_relay_latency_seconds_count") == count
    token = metrics.handling(time.time() - 0.25)
    try:
        metrics.relayed()
    finally:
        metrics.done_handling(token)
    assert value("stranger_bridge_relay_latency_seconds_count") == count + 1
    assert 0.25 <= value("stranger_bridge_relay_latency_seconds_sum") - total < 5
    metrics.relayed()  # reset once handled
    assert value("stranger_bridge_relay_latency_seconds_count") == count + 1


def test_a_match_counts_once_and_each_wait():
    matches = value("stranger_bridge_matches_total")
    waits = value("stranger_bridge_time_to_match_seconds_count")
    metrics.matched(12.0)
    metrics.waited(0.01)
    assert value("stranger_bridge_matches_total") == matches + 1
    assert value("stranger_bridge_time_to_match_seconds_count") == waits + 2
    assert value("stranger_bridge_time_to_match_seconds_bucket", le="20.0") - \
        value("stranger_bridge_time_to_match_seconds_bucket", le="10.0") >= 1


# -- the database gauges -----------------------------------------------------------------

async def test_database_gauges_are_read_at_most_every_max_age_and_left_out_when_unknown():
    pool = FakePool({"waiting": 3, "live": 5, "opening": 2, "open_reports": 0})
    gauges = DatabaseGauges(pool, max_age=60)
    assert list(gauges.collect()) == []  # nothing read yet: nothing shown
    await asyncio.gather(*(gauges.refresh() for _ in range(20)))
    await gauges.refresh()
    assert pool.reads == 1
    samples = {(s.name, s.labels.get("state")): s.value
               for f in gauges.collect() for s in f.samples}
    assert samples == {("stranger_bridge_users_waiting", None): 3,
                       ("stranger_bridge_conversations_live", "opening"): 2,
                       ("stranger_bridge_conversations_live", "active"): 3,
                       ("stranger_bridge_reports_open", None): 0}
    hanging = DatabaseGauges(FakePool(hang=True), timeout=0.2)
    started = time.monotonic()
    await hanging.refresh()
    assert time.monotonic() - started < 2
    assert list(hanging.collect()) == []


# -- the health check --------------------------------------------------------------------

class FakeConnection:
    async def fetchval(self, query: str, timeout: float | None = None):
        return 1


class HealthPool:
    """acquire() that answers, refuses or hangs."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.checks = 0

    def acquire(self, timeout: float | None = None):
        pool = self

        class Acquire:
            async def __aenter__(self):
                pool.checks += 1
                if pool.mode == "refuse":
                    raise ConnectionRefusedError("refused")
                if pool.mode == "hang":
                    await asyncio.Event().wait()
                return FakeConnection()

            async def __aexit__(self, *exc):
                return False
        return Acquire()


@pytest.fixture
async def homeserver():
    """A homeserver stand-in whose /versions answers, fails or hangs."""
    state = {"mode": "ok"}
    released = asyncio.Event()  # (set at the end: the server's shutdown waits for handlers)

    async def versions(request):
        if state["mode"] == "hang":
            await released.wait()
        if state["mode"] == "502":
            return web.Response(status=502)
        return web.json_response({"versions": ["v1.11"]})
    app = web.Application()
    app.router.add_get("/_matrix/client/versions", versions)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state["url"] = f"http://127.0.0.1:{port}"
    yield state
    released.set()
    await runner.cleanup()


async def test_health_names_what_is_down_within_the_timeout(homeserver):
    pool = HealthPool()
    check = HealthCheck(pool, homeserver["url"], timeout=0.5, max_age=0)
    try:
        assert (await check.check()).as_json() == {
            "healthy": True, "down": [], "database": "ok", "homeserver": "ok"}
        for db_mode, hs_mode, down in (("hang", "ok", ["database"]),
                                       ("refuse", "ok", ["database"]),
                                       ("ok", "hang", ["homeserver"]),
                                       ("ok", "502", ["homeserver"]),
                                       ("hang", "hang", ["database", "homeserver"])):
            pool.mode, homeserver["mode"] = db_mode, hs_mode
            started = time.monotonic()
            result = await check.check()
            assert time.monotonic() - started < 2, (db_mode, hs_mode)
            assert not result.healthy and result.as_json()["down"] == down
        pool.mode, homeserver["mode"] = "ok", "ok"
        assert (await check.check()).healthy  # back
    finally:
        await check.close()


async def test_health_is_checked_at_most_once_per_max_age_however_hammered(homeserver):
    pool = HealthPool()
    check = HealthCheck(pool, homeserver["url"], timeout=0.5, max_age=60)
    try:
        results = await asyncio.gather(*(check.check() for _ in range(50)))
        assert all(r.healthy for r in results) and pool.checks == 1
        pool.mode = "refuse"
        assert (await check.check()).healthy and pool.checks == 1  # (cached)
    finally:
        await check.close()


async def test_the_metrics_listener_serves_metrics_and_health(homeserver):
    pool = HealthPool()
    gauges = DatabaseGauges(FakePool({"waiting": 7, "live": 0, "opening": 0, "open_reports": 1}))
    check = HealthCheck(pool, homeserver["url"], timeout=0.5)
    port = free_port()
    server = MetricsServer(f"127.0.0.1:{port}", gauges, check)
    metrics.REGISTRY.register(gauges)
    metrics.REGISTRY.register(check)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                text = await response.text()
            assert "stranger_bridge_users_waiting 7.0" in text
            assert 'stranger_bridge_dependency_up{dependency="database"} 1.0' in text
            homeserver["mode"] = "502"
            check.max_age = 0
            async with session.get(f"http://127.0.0.1:{port}/health") as response:
                assert response.status == 503
                body = await response.json()
            assert body["down"] == ["homeserver"] and "HTTP 502" in body["homeserver"]
    finally:
        await server.stop()
        metrics.REGISTRY.unregister(gauges)
        metrics.REGISTRY.unregister(check)
        await check.close()
