"""Encryption devices with several processes, over real PostgreSQL: a device's lock is held by
one process at a time; a process asked for it lets go (and the asker gets it); a dead
holder's locks are free at once; a lost connection abandons every device; to-device
messages for a device held elsewhere wait in device_inbox, in order, for its holder."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest

from bridge.cluster.device_locks import DeviceBusy, DeviceLocks
from bridge.encryption import device_inbox

TIMEOUT = 20


class Process:
    """One process's locks, letting a device go when asked (as GhostDevices does)."""

    def __init__(self, uri: str, name: str) -> None:
        self.asked: list[str] = []
        self.lost = 0
        self.stored: list[str] = []
        self.keep = False  # refuse to let go (a device busy for a long time)
        self.locks = DeviceLocks(uri, name, release_requested=self._asked,
                                 lost=self._lost, stored=self.stored.append)

    def _asked(self, name: str) -> None:
        self.asked.append(name)
        if not self.keep:
            asyncio.get_running_loop().create_task(self.locks.release(name))

    def _lost(self) -> None:
        self.lost += 1


@pytest.fixture
async def processes(database_uri):
    made: list[Process] = []

    async def make(name: str) -> Process:
        process = Process(database_uri, name)
        await process.locks.start()
        made.append(process)
        return process
    yield make
    for process in made:
        await process.locks.stop()


async def test_a_device_is_held_by_one_process_and_handed_over_on_request(processes):
    a, b = await processes("a"), await processes("b")
    await a.locks.acquire("@ghost1:hs")
    await asyncio.wait_for(b.locks.acquire("@ghost1:hs"), TIMEOUT)
    assert a.asked == ["@ghost1:hs"]  # asked, and let go
    assert "@ghost1:hs" in b.locks.held and "@ghost1:hs" not in a.locks.held
    # another device is not affected
    await a.locks.acquire("@ghost2:hs")
    assert "@ghost2:hs" in a.locks.held


async def test_a_holder_that_keeps_the_device_makes_the_asker_give_up(processes):
    a, b = await processes("a"), await processes("b")
    a.keep = True
    await a.locks.acquire("@ghost:hs")
    with pytest.raises(DeviceBusy):
        await b.locks.acquire("@ghost:hs", timeout=1.2)
    assert len(a.asked) >= 2  # asked again while it waited
    assert "@ghost:hs" in a.locks.held and "@ghost:hs" not in b.locks.held


async def test_a_dead_holders_devices_are_free_at_once(processes, pool):
    a, b = await processes("a"), await processes("b")
    a.keep = True
    await a.locks.acquire("@ghost:hs")
    await pool.execute("SELECT pg_terminate_backend($1)", a.locks._conn.get_server_pid())
    await asyncio.wait_for(b.locks.acquire("@ghost:hs"), TIMEOUT)

    async def told():
        while not a.lost:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(told(), TIMEOUT)  # and the dead connection's side knows it
    assert a.locks.held == set()


async def test_a_lock_released_twice_or_never_held_is_harmless(processes):
    a = await processes("a")
    await a.locks.release("@never:hs")
    await a.locks.acquire("@ghost:hs")
    await a.locks.release("@ghost:hs")
    await a.locks.release("@ghost:hs")
    await a.locks.acquire("@ghost:hs")  # and can be taken again
    assert a.locks.held == {"@ghost:hs"}


async def test_a_stored_message_wakes_every_process_and_is_taken_once_in_order(processes,
                                                                            pool):
    a, b = await processes("a"), await processes("b")
    for i in range(3):
        await device_inbox.store(pool, "@ghost:hs", "DEV", device_inbox.TO_DEVICE, {"n": i})
    await a.locks.notify_stored(pool, device_inbox.name("@ghost:hs", "DEV"))

    async def woken():
        while not (a.stored and b.stored):
            await asyncio.sleep(0.01)
    await asyncio.wait_for(woken(), TIMEOUT)
    assert device_inbox.parse_name(a.stored[0]) == ("@ghost:hs", "DEV")
    taken = []

    async def handle(kind, payload):
        taken.append((kind, payload["n"]))
    assert await device_inbox.drain(pool, "@ghost:hs", "DEV", handle) == 3
    assert taken == [("to_device", 0), ("to_device", 1), ("to_device", 2)]
    assert await device_inbox.drain(pool, "@ghost:hs", "DEV", handle) == 0


async def test_a_failed_handling_leaves_the_rest_for_the_next_holder(pool):
    for i in range(3):
        await device_inbox.store(pool, "@ghost:hs", "DEV", device_inbox.TO_DEVICE, {"n": i})
    seen = []

    async def flaky(kind, payload):
        if payload["n"] == 1:
            raise asyncpg.PostgresConnectionError("away")
        seen.append(payload["n"])
    with pytest.raises(asyncpg.PostgresConnectionError):
        await device_inbox.drain(pool, "@ghost:hs", "DEV", flaky)

    async def handle(kind, payload):
        seen.append(payload["n"])
    await device_inbox.drain(pool, "@ghost:hs", "DEV", handle)
    assert seen == [0, 1, 2]
    await device_inbox.forget(pool, "@ghost:hs")
    assert await pool.fetchval("SELECT count(*) FROM device_inbox") == 0


def test_names_round_trip_and_malformed_ones_are_refused():
    assert device_inbox.parse_name(device_inbox.name("@a:hs", "D1")) == ("@a:hs", "D1")
    for bad in ("", "@a:hs", "|D1", "@a:hs|"):
        assert device_inbox.parse_name(bad) is None
