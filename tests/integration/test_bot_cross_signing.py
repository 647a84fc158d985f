"""The bot's stored cross-signing keys (bridge/encryption/cross_signing.py) on real PostgreSQL,
with a homeserver played by a fake machine: made and published once however many bot devices
start together, then only used; keys made before they were stored, or replaced on the
homeserver, are replaced by the stored ones; a wrong pickle key is refused, and both
--rotate-pickle-key and the placeholder's adoption re-seal them. The same against a real
Synapse: tests/e2e/test_bot_devices.py."""
from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import asyncpg
import olm
import pytest
from mautrix.crypto import OlmAccount, PgCryptoStore
from mautrix.crypto.cross_signing_key import CrossSigningSeeds
from mautrix.util.async_db import Database

from bridge.encryption.cross_signing import pack, sign_own_device, unpack
from bridge.encryption.pickle_key import (PLACEHOLDER, PickleKeyError, adopt, rotate, seal,
                                          unseal)

BOT = "@strangerbot:example.org"
KEY = "the-pickle-key-0123456789"
AS_TOKEN = "the-appservice-token"


class Homeserver:
    """What the homeserver publishes of the bot's cross-signing keys, and who signed what."""

    def __init__(self) -> None:
        self.master: str | None = None
        self.publications: list[tuple[str, str]] = []  # (master key, token used)
        self.signatures: dict[str, str] = {}  # device -> self-signing public key
        self.hold: asyncio.Event | None = None  # when set: publishing waits for it
        self.publishing = asyncio.Event()


class Machine:
    """The parts of mautrix's OlmMachine that cross_signing.py uses, for one bot device."""

    def __init__(self, hs: Homeserver, device_id: str) -> None:
        self.hs, self.device_id = hs, device_id
        self.client = SimpleNamespace(mxid=BOT, api=SimpleNamespace(token=f"device-{device_id}",
                                                                   as_user_id=None),
                                      query_keys=self._query_keys)
        self.keys = None
        self.own_identity = device_id

    async def _query_keys(self, users):
        master = (SimpleNamespace(first_key=self.hs.master) if self.hs.master else None)
        return SimpleNamespace(master_keys={BOT: master} if master else {})

    def _import_cross_signing_keys(self, seeds: CrossSigningSeeds) -> None:
        self.keys = seeds.to_keys()

    async def _publish_cross_signing_keys(self, keys) -> None:
        self.hs.publishing.set()
        if self.hs.hold is not None:
            await self.hs.hold.wait()
        self.hs.master = keys.master_key.public_key
        api = self.client.api
        self.hs.publications.append((self.hs.master, api.token, api.as_user_id))
        self.keys = keys

    async def sign_own_device(self, device) -> None:
        self.hs.signatures[device] = self.keys.self_signing_key.public_key


async def stored(pool, key: str = KEY) -> CrossSigningSeeds | None:
    sealed = await pool.fetchval("SELECT seeds FROM bot_cross_signing WHERE user_id = $1", BOT)
    return None if sealed is None else unpack(unseal(sealed, key))


async def test_the_first_device_makes_them_the_next_one_uses_them(pool):
    hs = Homeserver()
    first, second = Machine(hs, "FIRST"), Machine(hs, "SECOND")
    assert await sign_own_device(first, pool, KEY, AS_TOKEN) == "new"
    seeds = await stored(pool)
    assert hs.publications == [(olm.PkSigning(seeds.master_key).public_key, AS_TOKEN, BOT)]
    # The device's own token is back.
    assert (first.client.api.token, first.client.api.as_user_id) == ("device-FIRST", None)
    assert await sign_own_device(second, pool, KEY, AS_TOKEN) == "stored"
    assert len(hs.publications) == 1
    ssk = olm.PkSigning(seeds.self_signing_key).public_key
    assert hs.signatures == {"FIRST": ssk, "SECOND": ssk}
    # A restart (or a third device) finds the same keys.
    assert await sign_own_device(Machine(hs, "FIRST"), pool, KEY, AS_TOKEN) == "stored"
    assert await stored(pool) == seeds


async def test_two_devices_starting_together_publish_once(pool):
    hs = Homeserver()
    hs.hold = asyncio.Event()
    first = asyncio.create_task(sign_own_device(Machine(hs, "A"), pool, KEY, AS_TOKEN))
    await asyncio.wait_for(hs.publishing.wait(), 10)  # A holds the lock, publishing
    second = asyncio.create_task(sign_own_device(Machine(hs, "B"), pool, KEY, AS_TOKEN))
    await asyncio.wait_for(waiting_for_the_lock(pool), 10)  # B waits for A
    hs.hold.set()
    assert sorted(await asyncio.gather(first, second)) == ["new", "stored"]
    assert len(hs.publications) == 1
    assert hs.signatures["A"] == hs.signatures["B"]


async def waiting_for_the_lock(pool) -> None:
    while not await pool.fetchval(
            """SELECT count(*) FROM pg_locks WHERE NOT granted
               AND relation = 'bot_cross_signing'::regclass"""):
        await asyncio.sleep(0.01)


async def test_keys_made_before_they_were_stored_are_replaced_once(pool):
    hs = Homeserver()
    hs.master = olm.PkSigning(CrossSigningSeeds.generate().master_key).public_key  # legacy
    assert await sign_own_device(Machine(hs, "NEW"), pool, KEY, AS_TOKEN) == "replaced"
    seeds = await stored(pool)
    assert hs.master == olm.PkSigning(seeds.master_key).public_key
    assert await sign_own_device(Machine(hs, "OTHER"), pool, KEY, AS_TOKEN) == "stored"
    assert len(hs.publications) == 1


async def test_keys_replaced_on_the_homeserver_are_put_back(pool):
    hs = Homeserver()
    await sign_own_device(Machine(hs, "A"), pool, KEY, AS_TOKEN)
    ours = hs.master
    hs.master = "someone-elses-master-key"
    assert await sign_own_device(Machine(hs, "B"), pool, KEY, AS_TOKEN) == "republished"
    assert hs.master == ours and hs.signatures["A"] == hs.signatures["B"]


async def test_seeds_of_another_pickle_key_are_refused(pool):
    await pool.execute("INSERT INTO bot_cross_signing (user_id, seeds) VALUES ($1, $2)",
                       BOT, seal(pack(CrossSigningSeeds.generate()), "another-key-123"))
    hs = Homeserver()
    with pytest.raises(PickleKeyError, match="--rotate-pickle-key"):
        await sign_own_device(Machine(hs, "A"), pool, KEY, AS_TOKEN)
    assert hs.publications == [] and hs.signatures == {}


async def put_seeds(conn: asyncpg.Connection, key: str) -> CrossSigningSeeds:
    seeds = CrossSigningSeeds.generate()
    await conn.execute("INSERT INTO bot_cross_signing (user_id, seeds) VALUES ($1, $2)",
                       BOT, seal(pack(seeds), key))
    return seeds


@pytest.fixture
async def crypto_db(database_uri):
    """mautrix's crypto tables, which the rotation re-pickles beside the seeds."""
    db = Database.create(database_uri, upgrade_table=PgCryptoStore.upgrade_table,
                         log=logging.getLogger("test.crypto.db"))
    await db.start()
    yield db
    await db.stop()


async def test_rotation_re_seals_the_seeds(pool, crypto_db):
    async with pool.acquire() as conn:
        seeds = await put_seeds(conn, PLACEHOLDER)
        assert (await rotate(conn, PLACEHOLDER, KEY)).moved == 1
        assert await stored(pool, KEY) == seeds
        again = await rotate(conn, PLACEHOLDER, KEY)  # run twice: already moved
        assert (again.moved, again.already) == (0, 1)
        with pytest.raises(PickleKeyError, match="bot_cross_signing"):
            await rotate(conn, "a-third-key-000", "a-fourth-key-00")
        assert await stored(pool, KEY) == seeds  # nothing changed


async def test_adopting_the_placeholders_database_re_seals_the_seeds(pool, crypto_db):
    await PgCryptoStore(BOT, PLACEHOLDER, crypto_db).put_account(OlmAccount())
    async with pool.acquire() as conn:
        seeds = await put_seeds(conn, PLACEHOLDER)
        assert (await adopt(conn, KEY)).moved == 2
    assert await stored(pool, KEY) == seeds
