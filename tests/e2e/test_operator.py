"""What an operator watches, on the real federated lab with the real bridge process
(metrics on, its PostgreSQL and homeserver reached through proxies this module can cut):

- a real conversation (plain, encrypted, mixed) moves the metrics: a match and its
  time-to-match, relay latency, transactions, a refused event, the ending by its cause, and
  the live gauges go back to 0; no label anywhere holds a user, room or server name;
- the health endpoint answers 503 naming the dependency within seconds of PostgreSQL
  hanging or the homeserver going away, and 200 again once they are back.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from bridge.lab.bridged import BridgedLab, start_bridged_lab
from bridge.lab.synapse import free_port
from bridge.lab.tcpproxy import TcpProxy
from bridge.metrics import labels
from tests.conftest import ADMIN_DSN, _admin
from tests.e2e.conftest import E2E_SETTINGS

pytestmark = pytest.mark.e2e

ENCRYPTION = pytest.mark.parametrize("alice_encrypted, bob_encrypted", [
    (False, False), (True, True), (False, True)], ids=["plain", "encrypted", "mixed"])


@pytest_asyncio.fixture(scope="module")
async def oplab(tmp_path_factory):
    await (await _admin()).close()  # fails clearly when PostgreSQL is missing
    admin = urlsplit(ADMIN_DSN)
    database = f"stranger_operator_{uuid.uuid4().hex[:8]}"
    db_proxy = TcpProxy(admin.hostname, admin.port or 5432)
    hs_proxy = TcpProxy()
    await db_proxy.start()
    await hs_proxy.start()
    proxied_db = ADMIN_DSN.replace(admin.netloc.rsplit("@", 1)[-1],
                                   f"127.0.0.1:{db_proxy.port}").rsplit("/", 1)[0] + "/" + database
    metrics_port = free_port()
    lab = await start_bridged_lab(
        tmp_path_factory.mktemp("operator"), ADMIN_DSN, database,
        homeserver_via=hs_proxy.forward_url, **E2E_SETTINGS,
        **{"database.uri": proxied_db, "metrics.enabled": True,
           "metrics.listen": f"127.0.0.1:{metrics_port}"})
    lab.db_proxy, lab.hs_proxy, lab.metrics_port = db_proxy, hs_proxy, metrics_port
    try:
        yield lab
    finally:
        await db_proxy.restore()
        await hs_proxy.restore()
        await lab.shutdown(ADMIN_DSN)
        await db_proxy.stop()
        await hs_proxy.stop()


class Scrape:
    """One scrape of /metrics: sample values by (name, labels)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for family in text_string_to_metric_families(text)
                        for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.samples)


async def scrape(lab: BridgedLab) -> Scrape:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{lab.metrics_port}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return Scrape(await response.text())


async def scraped_until(lab: BridgedLab, wanted, what: str, timeout: float = 60) -> Scrape:
    """Scrape until `wanted(scrape)` holds (the database gauges are read at most every 5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        found = await scrape(lab)
        if wanted(found):
            return found
        assert time.monotonic() < deadline, f"metrics never showed {what}:\n{found.text}"
        await asyncio.sleep(0.5)  # polling the endpoint: it has nothing to wait on


def live(found: Scrape) -> float:
    return found.value("stranger_bridge_conversations_live")


@ENCRYPTION
async def test_a_conversation_moves_the_metrics(oplab: BridgedLab, alice_encrypted: bool,
                                               bob_encrypted: bool):
    ending = {(False, False): "left", (True, True): "next", (False, True): "report"}[
        (alice_encrypted, bob_encrypted)]
    before = await scrape(oplab)
    alice, alice_dm = await oplab.ready_user(0, "Alice", encrypted=alice_encrypted)
    bob, bob_dm = await oplab.ready_user(1, "Bob", encrypted=bob_encrypted)
    alice_room, bob_room = await oplab.pair(alice, alice_dm, bob, bob_dm)
    chatting = await scraped_until(oplab, lambda s: live(s) == 1 and s.value(
        "stranger_bridge_conversations_live", state="active") == 1, "the live conversation")
    assert chatting.value("stranger_bridge_users_waiting") == 0

    tag = uuid.uuid4().hex[:6]
    await alice.send_text(alice_room, f"hello {tag}")
    await bob.wait_for_message(bob_room, f"hello {tag}")
    await bob.send_text(bob_room, f"hi {tag}")
    await alice.wait_for_message(alice_room, f"hi {tag}")
    mark = alice.mark()
    await alice.send_raw(alice_room, "m.room.message", {
        "msgtype": "m.location", "body": "here", "geo_uri": "geo:51.5,0.1"})
    await alice.wait_for_event(lambda s: s.room_id == alice_room
                               and "location" in (s.body or "").lower(),
                               since=mark, description="the location refused notice")

    if ending == "left":
        await bob.leave(bob_room)
    else:
        await alice.send_text(alice_room, f"!{ending}")
    await oplab.cleaned_up([alice_room, bob_room])
    # Leaving and !next queue the user again (in the ending's own transaction): stop looking.
    if ending == "left":
        await oplab.command(bob, bob_dm, "!stop", "left the queue")
    elif ending == "next":
        await oplab.command(alice, alice_dm, "!stop", "left the queue")
    after = await scraped_until(
        oplab, lambda s: live(s) == 0 and s.value("stranger_bridge_users_waiting") == 0,
        "no live conversation and nobody waiting after the ending")

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("stranger_bridge_matches_total") == 1
    assert moved("stranger_bridge_time_to_match_seconds_count") == 2  # each side paired
    reason = "reported" if ending == "report" else ending
    assert moved("stranger_bridge_conversation_endings_total", reason=reason) == 1
    assert moved("stranger_bridge_reports_total") == (ending == "report")
    assert moved("stranger_bridge_conversation_endings_total") == 1
    # The two messages, and the notices did not count (they are not relays).
    assert moved("stranger_bridge_relay_latency_seconds_count") == 2
    assert 0 < moved("stranger_bridge_relay_latency_seconds_sum") < 60
    assert moved("stranger_bridge_events_refused_total", kind="location") == 1
    assert moved("stranger_bridge_transaction_seconds_count") >= 6
    assert after.value("stranger_bridge_dependency_up", dependency="database") == 1
    assert after.value("stranger_bridge_dependency_up", dependency="homeserver") == 1
    assert after.has("process_cpu_seconds_total")

    # No label holds anything of a user, a room or a server.
    for sample in after.samples:
        for name, value in sample.labels.items():
            assert labels.allowed(name, value), f"{sample.name}: label {name}={value!r}"
    for secret in (alice.user_id, bob.user_id, alice_room, bob_room, alice_dm, bob_dm,
                   oplab.bridge_domain, oplab.lab.homeservers[1].server_name):
        assert secret not in after.text


async def health(lab: BridgedLab, url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(url) as response:
            return response.status, await response.json()


async def health_until(lab: BridgedLab, status: int, timeout: float) -> tuple[float, dict]:
    """Ask the health endpoint until it answers `status`; (seconds it took, the answer)."""
    url = f"http://127.0.0.1:{lab.bridge.port}/_matrix/mau/health"
    start = time.monotonic()
    while True:
        got, body = await health(lab, url)
        if got == status:
            return time.monotonic() - start, body
        assert time.monotonic() - start < timeout, f"health still {got} {body} after {timeout}s"
        await asyncio.sleep(0.2)  # polling the endpoint: it has nothing to wait on


@pytest.mark.parametrize("dependency, hang", [("database", True), ("homeserver", False)],
                         ids=["database-hangs", "homeserver-refuses"])
async def test_health_follows_the_dependencies(oplab: BridgedLab, dependency: str, hang: bool):
    proxy = oplab.db_proxy if dependency == "database" else oplab.hs_proxy
    _, body = await health_until(oplab, 200, timeout=30)
    assert body == {"healthy": True, "down": [], "database": "ok", "homeserver": "ok"}
    await proxy.cut(hang=hang)
    try:
        took, body = await health_until(oplab, 503, timeout=15)
        print(f"{dependency} cut ({'hang' if hang else 'refuse'}): unhealthy after {took:.1f}s")
        assert body["healthy"] is False and body["down"] == [dependency]
        assert body[dependency] != "ok"
        # The metrics listener says the same.
        got, same = await health(oplab, f"http://127.0.0.1:{oplab.metrics_port}/health")
        assert got == 503 and same["down"] == [dependency]
    finally:
        await proxy.restore()
    took, body = await health_until(oplab, 200, timeout=30)
    print(f"{dependency} restored: healthy after {took:.1f}s")
    assert body["down"] == []
