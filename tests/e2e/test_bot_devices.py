"""End to end: a bot device per bridge process (cluster mode), all signed by the bot's one
self-signing key, on a real Synapse.

The lab's bridge runs one process (its bot device under the bot's own ID); this test starts
two more bot devices in the test process, as two cluster processes would (instances of their
own), on the lab's database and homeserver, then deletes them again (other tests count the
bot's devices). In both encryption modes.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from types import SimpleNamespace

import aiohttp
import asyncpg
import pytest
from mautrix.appservice import AppServiceAPI

from bridge.config import Config
from bridge.encryption.crypto import Crypto, bot_account_id, bot_device_name
from bridge.encryption.crypto_store import crypto_database
from bridge.lab.bridged import BridgedLab
from bridge.state_store import TrimmedStateStore
from tests.e2e.conftest import in_both_encryption_modes

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["classic", "appservice"])
def bridged(request: pytest.FixtureRequest, bridged: BridgedLab) -> BridgedLab:
    return in_both_encryption_modes(request, bridged)


class Processes:
    """What a cluster process has for its bot device: its config (its instance), and the
    shared database, crypto store and HTTP session."""

    def __init__(self, bridged: BridgedLab, pool: asyncpg.Pool, session: aiohttp.ClientSession):
        self.bridged, self.pool, self.session = bridged, pool, session
        self.config = Config(str(bridged.bridge.config))
        self.config.load()
        self.config.update(save=False)
        self.crypto_db = crypto_database(self.config)
        api = AppServiceAPI(self.config["homeserver.address"], self.config.bot_mxid,
                            self.config["appservice.as_token"], client_session=session,
                            log=logging.getLogger("test.bot_devices"))
        self.appservice = SimpleNamespace(intent=api.bot_intent(), http_session=session,
                                          as_token=self.config["appservice.as_token"])

    def config_of(self, instance: str) -> Config:
        config = Config(self.config.path)
        config.load()
        config.update(save=False)
        # (Set after loading: config.py still refuses encryption in cluster mode.)
        config["bridge.cluster.enabled"] = True
        config["bridge.instance"] = instance
        return config

    async def start(self, instance: str) -> Crypto:
        config = self.config_of(instance)
        crypto = Crypto(self.appservice, config, TrimmedStateStore(), self.pool, self.crypto_db,
                        account_id=bot_account_id(config), device_name=bot_device_name(config))
        await crypto.start()
        return crypto


async def published(bridged: BridgedLab, client) -> dict:
    """The bot's devices and cross-signing keys, as a user of its homeserver sees them."""
    bot = bridged.bot_id
    resp = await client.api("POST", "/_matrix/client/v3/keys/query", {"device_keys": {bot: []}})
    (master,) = resp["master_keys"][bot]["keys"].values()
    ssk_keys = resp["self_signing_keys"][bot]
    (ssk_id,) = ssk_keys["keys"]
    return {"devices": resp["device_keys"][bot], "master": master, "ssk": ssk_id,
            "ssk_signed_by_master": f"ed25519:{master}" in ssk_keys["signatures"][bot]}


def signed_by(device: dict, bot: str, ssk_id: str) -> bool:
    return ssk_id in device.get("signatures", {}).get(bot, {})


async def test_each_process_has_its_own_bot_device_signed_by_one_key(bridged: BridgedLab):
    bot = bridged.bot_id
    client = await bridged.client(0, "Keys")
    before = await published(bridged, client)
    suffix = secrets.token_hex(3)
    instances = [f"bridge-a-{suffix}", f"bridge-b-{suffix}"]
    async with aiohttp.ClientSession() as session, \
            asyncpg.create_pool(bridged.database_uri, min_size=1, max_size=4) as pool:
        lab = Processes(bridged, pool, session)
        await lab.crypto_db.start()
        devices: list[Crypto] = []
        try:
            # Two processes starting together.
            devices = list(await asyncio.gather(*(lab.start(i) for i in instances)))
            first_ids = [d.device_id for d in devices]
            assert len(set(first_ids)) == 2
            assert [d.account_id for d in devices] == [f"{bot}/{i}" for i in instances]
            during = await published(bridged, client)
            # The lab bridge's own device (the bot's ID as account) is still there and signed:
            # nobody replaced the bot's cross-signing keys.
            own = await pool.fetchval(
                "SELECT device_id FROM crypto_account WHERE account_id = $1", bot)
            assert (during["master"], during["ssk"]) == (before["master"], before["ssk"])
            assert during["ssk_signed_by_master"]
            for device_id in (own, *first_ids):
                assert signed_by(during["devices"][device_id], bot, during["ssk"]), device_id
            assert during["devices"][first_ids[0]]["unsigned"]["device_display_name"] \
                == f"Stranger Bridge ({instances[0]})"

            # Restarted, each process finds its own device again, keys and signature unchanged.
            for crypto in devices:
                await crypto.stop()
            devices = list(await asyncio.gather(*(lab.start(i) for i in instances)))
            assert [d.device_id for d in devices] == first_ids
            after = await published(bridged, client)
            assert (after["master"], after["ssk"]) == (before["master"], before["ssk"])
            for device_id in first_ids:
                assert after["devices"][device_id]["keys"] == during["devices"][device_id]["keys"]
                assert signed_by(after["devices"][device_id], bot, after["ssk"])
        finally:
            for crypto in devices:  # deleted on the homeserver; only its account's rows here
                await crypto.stop(forget=True)
            await lab.crypto_db.stop()
        left = await published(bridged, client)
        assert set(left["devices"]) == set(before["devices"])
        assert await pool.fetchval(
            "SELECT count(*) FROM crypto_account WHERE account_id = ANY($1)",
            [f"{bot}/{i}" for i in instances]) == 0
