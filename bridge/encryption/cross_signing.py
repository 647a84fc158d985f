"""The bot's cross-signing keys, kept in the database, so every bot device is signed by one
self-signing key (bridge.encryption.self_sign).

Each bridge process of a cluster has a bot device of its own. Clients following MSC4153
(Element's "exclude insecure devices") ignore a device its owner did not cross-sign, so each
must be signed, and by the key the homeserver publishes: making new cross-signing keys per
device (what ghosts' devices do, crypto.py's Crypto._cross_sign) would replace the
published ones and take the signature of every other bot device with them. So the bot's
seeds (mautrix's CrossSigningSeeds: master, self-signing, user-signing) are stored in
bot_cross_signing, sealed with bridge.encryption.pickle_key (pickle_key.seal; re-sealed by
--rotate-pickle-key and by the placeholder's adoption, as the Olm pickles are).

The first bot device to need them makes them, stores them and publishes them, all under a
lock on the table (one process at a time: two processes starting together publish once).
Every later one finds them and signs itself with the stored self-signing key. When the
homeserver publishes other keys than the stored ones (keys made before they were stored, by
an older bridge; or replaced by someone else), the stored ones are published (made first if
there are none): the bot's identity is the database's from then on. That replacement is
made with the appservice's token, which Synapse lets replace cross-signing keys without
interactive auth; devices signed with the replaced keys lose that signature (a bot device
signs itself again only at its start), and users who had verified the bot see its identity
change, once.
"""
from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator

import asyncpg
from mautrix.client import Client
from mautrix.crypto import OlmMachine
from mautrix.crypto.cross_signing_key import CrossSigningSeeds

from bridge.encryption.pickle_key import PickleKeyError, seal, unseal

log = logging.getLogger("bridge.encryption.cross_signing")

SEED_BYTES = 32  # each of the three seeds (an ed25519 seed)


def pack(seeds: CrossSigningSeeds) -> bytes:
    return seeds.master_key + seeds.self_signing_key + seeds.user_signing_key


def unpack(data: bytes) -> CrossSigningSeeds:
    if len(data) != 3 * SEED_BYTES:
        raise ValueError(f"cross-signing seeds are {3 * SEED_BYTES} bytes, got {len(data)}")
    return CrossSigningSeeds(data[:SEED_BYTES], data[SEED_BYTES:2 * SEED_BYTES],
                             data[2 * SEED_BYTES:])


def master_public_key(seeds: CrossSigningSeeds) -> str:
    return seeds.to_keys().master_key.public_key


async def published_master_key(client: Client) -> str | None:
    """The master key the homeserver publishes for the client's user, if any."""
    keys = (await client.query_keys([client.mxid])).master_keys.get(client.mxid)
    return keys.first_key if keys else None


@contextlib.asynccontextmanager
async def as_appservice(client: Client, as_token: str) -> AsyncIterator[None]:
    """The client's requests made by the appservice, as the client's user (its token and
    ?user_id=), which replaces cross-signing keys without interactive auth. Appservice mode
    does so already; classic mode's device token is put back after. Only while nothing else
    uses the client (Crypto.start, before its sync loop)."""
    api = client.api
    saved = api.token, api.as_user_id
    api.token, api.as_user_id = as_token, client.mxid
    try:
        yield
    finally:
        api.token, api.as_user_id = saved


async def sign_own_device(machine: OlmMachine, pool: asyncpg.Pool, pickle_key: str,
                          as_token: str) -> str:
    """Sign the machine's device (the bot's) with the stored self-signing key, making and
    publishing the keys first when needed (see the module docstring). Returns what was done
    with the keys: "stored" (found, and the published ones), "new" (none anywhere: made),
    "replaced" (the homeserver had others and none were stored: made, published over them),
    "republished" (stored, but the homeserver had others: published over them). Raises
    PickleKeyError when the stored seeds do not open with `pickle_key`."""
    client = machine.client
    async with pool.acquire() as conn, conn.transaction():
        # One bot device at a time, across processes, until the keys are published (plain
        # reads are not blocked: only another lock). Released at commit.
        await conn.execute("LOCK TABLE bot_cross_signing IN EXCLUSIVE MODE")
        sealed = await conn.fetchval("SELECT seeds FROM bot_cross_signing WHERE user_id = $1",
                                     client.mxid)
        seeds = None
        if sealed is not None:
            opened = unseal(sealed, pickle_key)
            if opened is None:
                raise PickleKeyError(
                    f"the bot's stored cross-signing keys (bot_cross_signing, {client.mxid}) do "
                    f"not open with bridge.encryption.pickle_key: put the key they were stored "
                    f"with back, or run --rotate-pickle-key --old-pickle-key OLD_KEY")
            seeds = unpack(opened)
        published = await published_master_key(client)  # read under the lock: current
        if seeds is None:
            seeds = CrossSigningSeeds.generate()
            # Stored before they are published: a failure after this rolls both back, except
            # a commit failing after the homeserver took them (the next start replaces them).
            await conn.execute("INSERT INTO bot_cross_signing (user_id, seeds) VALUES ($1, $2)",
                               client.mxid, seal(pack(seeds), pickle_key))
            outcome = "replaced" if published else "new"
        else:
            outcome = "stored" if published == master_public_key(seeds) else "republished"
        if outcome == "stored":
            machine._import_cross_signing_keys(seeds)
        else:
            # Private in mautrix, as Crypto._cross_sign explains; it imports them too.
            async with as_appservice(client, as_token):
                await machine._publish_cross_signing_keys(seeds.to_keys())
    if outcome in ("replaced", "republished"):
        log.warning(
            "The homeserver published other cross-signing keys for %s than the stored ones "
            "(%s): published the stored ones over them. Bot devices signed with the old ones "
            "are signed again when they start; users who had verified the bot see its "
            "identity change, once", client.mxid,
            "made before they were kept in the database" if outcome == "replaced"
            else "replaced by someone else")
    await machine.sign_own_device(machine.own_identity)
    return outcome
