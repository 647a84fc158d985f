"""Appservice-mode encryption with several processes, over real PostgreSQL: a to-device
message (or key count) for one of our devices that this process does not hold is stored
before the transaction is answered and its holder woken; the holder (or whoever takes the
device next) gets what waited, in order, once; messages for devices we do not have are
dropped, not stored."""
from __future__ import annotations

import logging

import pytest
from mautrix.crypto import PgCryptoStore
from mautrix.util.async_db import Database

from bridge.background import Background
from bridge.encryption import device_inbox
from bridge.encryption.device_events import DeviceEvents
from tests.unit.test_device_events import BOT, FakeDevice, to_device

GHOST_HERE = "@_stranger_here:example.org"
GHOST_THERE = "@_stranger_there:example.org"


class RunningGhosts:
    def __init__(self, *devices: FakeDevice) -> None:
        self.devices = {d.client.mxid: d for d in devices}

    def running(self, ghost_id: str):
        return self.devices.get(ghost_id)

    async def find(self, user_id, device_id):  # never asked when routing
        raise AssertionError("a device was started to handle a routed message")


@pytest.fixture
async def crypto_db(database_uri):
    db = Database.create(database_uri, upgrade_table=PgCryptoStore.upgrade_table,
                         log=logging.getLogger("test.crypto.db"))
    await db.start()
    for account, device in [(f"{BOT}/bridge-1", "BOT1"), (f"{BOT}/bridge-2", "BOT2"),
                            (GHOST_HERE, "HERE"), (GHOST_THERE, "THERE")]:
        await db.execute("""INSERT INTO crypto_account (account_id, device_id, shared,
                            sync_token, account) VALUES ($1, $2, true, '', '\\x00')""",
                         account, device)
    yield db
    await db.stop()


@pytest.fixture
async def routing(pool, crypto_db):
    bot, here = FakeDevice(BOT, "BOT1"), FakeDevice(GHOST_HERE, "HERE")
    events = DeviceEvents()
    events.start(bot, RunningGhosts(here))
    woken: list[str] = []

    async def wake(name):
        woken.append(name)
    events.pool, events.wake_holder, events.background = pool, wake, Background()
    return events, bot, here, woken


async def test_messages_for_devices_held_elsewhere_wait_for_their_holder(routing, pool):
    events, bot, here, woken = routing
    await events.handle({
        "de.sorunome.msc2409.to_device": [
            to_device(GHOST_HERE, "HERE", sender="@alice:hs2"),
            to_device(GHOST_THERE, "THERE", sender="@bob:hs1"),
            to_device(BOT, "BOT2", sender="@carol:hs1"),
            to_device(GHOST_THERE, "THERE", sender="@dave:hs1"),
            to_device("@_stranger_gone:example.org", "X"),     # not ours: dropped
            to_device(GHOST_THERE, "OLD")],                    # a device it no longer has
        "org.matrix.msc3202.device_one_time_keys_count": {
            GHOST_THERE: {"THERE": {"signed_curve25519": 3}},
            GHOST_HERE: {"HERE": {"signed_curve25519": 9}}}})
    assert here.got == [("to_device", "@alice:hs2"), ("otk", 9)]
    assert bot.got == []
    assert set(woken) == {device_inbox.name(BOT, "BOT2"),
                          device_inbox.name(GHOST_THERE, "THERE")}
    rows = await pool.fetch("SELECT user_id, device_id, kind FROM device_inbox ORDER BY seq")
    assert [tuple(r) for r in rows] == [(GHOST_THERE, "THERE", "to_device"),
                                        (BOT, "BOT2", "to_device"),
                                        (GHOST_THERE, "THERE", "to_device"),
                                        (GHOST_THERE, "THERE", "otk_count")]

    # The process that takes the ghost's device gets what waited for it, in order, once.
    taker = DeviceEvents()
    there = FakeDevice(GHOST_THERE, "THERE")
    taker.start(FakeDevice(BOT, "BOT2"), RunningGhosts(there))
    taker.pool, taker.wake_holder = pool, None
    await taker.take_stored(GHOST_THERE, there)
    assert there.got == [("to_device", "@bob:hs1"), ("to_device", "@dave:hs1"), ("otk", 3)]
    await taker.take_stored(GHOST_THERE, there)
    assert len(there.got) == 3
    # and the other bot device's message is left for that process
    assert await pool.fetchval("SELECT count(*) FROM device_inbox") == 1
    await taker.take_stored(BOT, taker.bot)
    assert taker.bot.got == [("to_device", "@carol:hs1")]
