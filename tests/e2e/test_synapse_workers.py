"""End to end against a homeserver split into Synapse workers: the bridge's homeserver (hs1)
runs a main process, a generic worker for the client API behind HAProxy, two event
persisters, the appservice sender and the federation sender on workers, on PostgreSQL with
Redis (bridge/lab/synapse_workers.py). hs2 stays one process.

The core flows are the existing e2e tests, called unchanged against this lab: pairing users
of hs1 and hs2, relaying plain, encrypted and mixed, leaving and being paired again. Around
each, Synapse's own metrics show that the work really went to the workers: the appservice
transactions from the appservice sender, the sends through the generic worker, the events
persisted by the persisters, federation sent by the federation sender, and none of it by main.
"""
from __future__ import annotations

import contextlib
import re
import uuid

import pytest
import pytest_asyncio

from bridge.lab.bridged import BridgedLab
from bridge.lab.synapse_workers import WorkerHomeserver, WorkerLayout, sum_samples
from tests.e2e import test_core as core
from tests.e2e import test_encrypted_chat as encrypted_chat
from tests.e2e import test_leave_race as leave_race
from tests.e2e.conftest import _bridged_lab

pytestmark = pytest.mark.e2e

LAYOUT = WorkerLayout(persisters=2, federation_sender=True)


@pytest_asyncio.fixture(scope="module")
async def bridged(tmp_path_factory: pytest.TempPathFactory) -> BridgedLab:
    """This module's lab: hs1 split into workers, whatever STRANGER_LAB_WORKERS says."""
    async for lab in _bridged_lab(tmp_path_factory, "e2e_workers", workers=LAYOUT):
        yield lab


def homeserver(lab: BridgedLab) -> WorkerHomeserver:
    hs = lab.lab.homeservers[0]
    assert isinstance(hs, WorkerHomeserver)
    return hs


# What each process did, by Synapse's own counters: (metric, labels).
COUNTERS = {
    "appservice_transactions": ("synapse_appservice_api_sent_transactions", {}),
    "sends": ("synapse_http_server_requests_received", {"servlet": "RoomSendEventRestServlet"}),
    "syncs": ("synapse_http_server_requests_received", {"servlet": "SyncRestServlet"}),
    "persisted": ("synapse_storage_events_persisted_events", {}),
    "federation_transactions": ("synapse_federation_client_sent_transactions", {}),
}


async def counters(hs: WorkerHomeserver) -> dict[str, dict[str, float]]:
    found = {}
    for process in ["main", *hs.layout.worker_names]:
        text = await hs.metrics(process)
        found[process] = {key: sum_samples(text, name, **labels)
                          for key, (name, labels) in COUNTERS.items()}
    return found


@contextlib.asynccontextmanager
async def on_the_workers(lab: BridgedLab):
    """Around a flow: afterwards, each kind of work was done by its worker and none by main."""
    hs = homeserver(lab)
    before = await counters(hs)
    yield
    after = await counters(hs)
    did = {process: {key: after[process][key] - before[process][key] for key in COUNTERS}
           for process in after}
    others = [p for p in did if p != "appservice1"]
    assert did["appservice1"]["appservice_transactions"] > 0, did
    assert all(did[p]["appservice_transactions"] == 0 for p in others), did
    assert did["client1"]["sends"] > 0 and did["client1"]["syncs"] > 0, did
    assert did["main"]["sends"] == 0 and did["main"]["syncs"] == 0, did
    assert did["main"]["persisted"] == 0, did
    assert sum(did[p]["persisted"] for p in hs.layout.persister_names) > 0, did
    assert did["fedsender1"]["federation_transactions"] > 0, did
    assert did["main"]["federation_transactions"] == 0, did


async def test_pair_relay_plain_leave_and_rematch(bridged: BridgedLab):
    async with on_the_workers(bridged):
        await core.test_pair_relay_anonymously_leave_and_rematch(bridged)


async def test_encrypted_both_ways(bridged: BridgedLab):
    async with on_the_workers(bridged):
        await encrypted_chat.test_both_encrypted_messages_decrypt_both_ways_and_after_a_restart(
            bridged)


async def test_mixed(bridged: BridgedLab):
    async with on_the_workers(bridged):
        await encrypted_chat.test_mixed_each_room_follows_its_users_dm(bridged)


@leave_race.ENCRYPTION
async def test_both_leave_and_are_paired_again(bridged: BridgedLab, alice_encrypted: bool,
                                               bob_encrypted: bool):
    async with on_the_workers(bridged):
        await leave_race.test_both_leave_at_once_and_both_are_paired_again(
            bridged, alice_encrypted, bob_encrypted)


async def test_the_bridges_requests_go_through_the_proxy_to_the_generic_worker(
        bridged: BridgedLab):
    """The bridge talks to the homeserver's one client URL: its ghosts' sends are answered by
    the generic worker (its access log names the ghost), never by main."""
    hs = homeserver(bridged)
    ghost_send = re.compile(r"\{@_stranger_[a-z0-9]+:[^}]+\} Processed request: .* 200 "
                            r'"PUT /_matrix/client/v3/rooms/[^ ]+/send/')
    mark = {name: hs.worker_log_path(name).stat().st_size for name in ["client1"]}
    main_mark = hs.log_path.stat().st_size
    alice, alice_dm = await bridged.ready_user(0, "Alice")
    bob, bob_dm = await bridged.ready_user(1, "Bob")
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
    text = f"through the worker {uuid.uuid4().hex[:6]}"
    await bob.send_text(bob_room, text)
    await alice.wait_for_message(alice_room, text)
    with hs.worker_log_path("client1").open("rb") as f:
        f.seek(mark["client1"])
        worker_log = f.read().decode(errors="replace")
    with hs.log_path.open("rb") as f:
        f.seek(main_mark)
        main_log = f.read().decode(errors="replace")
    assert any(ghost_send.search(line) for line in worker_log.splitlines())
    assert not any(ghost_send.search(line) for line in main_log.splitlines())


async def test_events_are_sharded_over_both_persisters(bridged: BridgedLab):
    """Rooms are spread over the two event persisters (by room ID): new rooms land on both."""
    hs = homeserver(bridged)
    client = await bridged.client(0, "Rooms")
    before = {p: await hs.metric(p, "synapse_storage_events_persisted_events")
              for p in hs.layout.persister_names}
    grew: set[str] = set()
    for _ in range(40):  # chance that 40 rooms all land on one of two: 2 in 10^12
        await client.api("POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"})
        grew = {p for p in hs.layout.persister_names
                if await hs.metric(p, "synapse_storage_events_persisted_events") > before[p]}
        if grew == set(hs.layout.persister_names):
            break
    assert grew == set(hs.layout.persister_names)
    assert await hs.metric("main", "synapse_storage_events_persisted_events") == 0
