"""Where encryption keeps its state: mautrix's crypto store in the bridge's own database
(opened, a device's keys deleted, expired keys pruned), and the room state OlmMachine asks
about (RoomStates).

The crypto store is mautrix's PgCryptoStore in the bridge's own database. Its tables
(crypto_*) belong to mautrix's upgrade table `crypto_version`, not to alembic: mautrix
migrates that schema with its releases, on start, as in every mautrix bridge. No name clashes
with `alembic_version` or ours, and alembic never autogenerates (no target metadata), so it
never proposes dropping them.
"""
from __future__ import annotations

import logging

import asyncpg
from mautrix.appservice import IntentAPI
from mautrix.crypto import PgCryptoStore, StateStore
from mautrix.errors import MForbidden, MNotFound
from mautrix.types import EventType, Membership
from mautrix.util.async_db import Database

from bridge.config import Config
from bridge.encryption.olm import POOL_ARGS, forget_cached_devices
from bridge.state_store import TrimmedStateStore
from bridge.store import conversations, users

log = logging.getLogger("bridge.encryption.crypto_store")


class RoomStates(StateStore):
    """What OlmMachine asks about rooms, answered from the app's in-memory state store, which
    the bridge keeps current from transactions (Crypto.handle_state); a room not seen since
    start is asked of the homeserver once. Shared rooms also come from our own tables, so a
    user's new device gets fresh keys in their DM even right after a restart."""

    def __init__(self, cache: TrimmedStateStore, bot: IntentAPI, pool: asyncpg.Pool) -> None:
        self.cache, self.bot, self.pool = cache, bot, pool

    async def fetch(self, room_id: str, intent: IntentAPI | None = None) -> None:
        if await self.cache.has_encryption_info_cached(room_id):
            return
        try:  # get_state_event caches what it gets; ensure_joined=False: never join to look
            await (intent or self.bot).get_state_event(room_id, EventType.ROOM_ENCRYPTION,
                                                       ensure_joined=False)
        except MNotFound:
            self.cache.encryption[room_id] = None
        except MForbidden:
            log.debug("Cannot read the state of %s as %s", room_id, (intent or self.bot).mxid)

    async def is_encrypted(self, room_id: str) -> bool:
        return await self.get_encryption_info(room_id) is not None

    async def get_encryption_info(self, room_id: str):
        await self.fetch(room_id)
        return await self.cache.get_encryption_info(room_id)

    async def find_shared_rooms(self, user_id: str) -> list[str]:
        rooms = {room_id for room_id, members in self.cache.members.items()
                 if (m := members.get(user_id)) and m.membership in (Membership.JOIN,
                                                                     Membership.INVITE)}
        user = await users.get(self.pool, user_id)
        side = await conversations.live_side_of(self.pool, user_id)
        rooms.update(r for r in (user and user.dm_room_id, side and side.room_id) if r)
        return list(rooms)


def crypto_database(config: Config) -> Database:
    """One small pool for every device's crypto store, in the bridge's database (see the
    module docstring); start() runs mautrix's crypto store migrations (crypto_version)."""
    return Database.create(
        config["database.uri"], upgrade_table=PgCryptoStore.upgrade_table,
        db_args={"min_size": 1, "max_size": 8, **POOL_ARGS},
        log=logging.getLogger("mau.crypto.db"))


async def delete_account(db: Database, user_id: str) -> None:
    """Everything the crypto store holds of a device that is gone for good (a ghost's, when
    its conversation ended): mautrix's own delete() keeps the inbound room keys (which would
    still decrypt what the user wrote), their message indexes and the cross-signing keys."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            """DELETE FROM crypto_message_index WHERE session_id IN
               (SELECT session_id FROM crypto_megolm_inbound_session WHERE account_id = $1)""",
            user_id)
        for table in ("crypto_megolm_inbound_session", "crypto_megolm_outbound_session",
                      "crypto_olm_session", "crypto_account"):
            await conn.execute(f"DELETE FROM {table} WHERE account_id = $1", user_id)
        await conn.execute("DELETE FROM crypto_cross_signing_keys WHERE user_id = $1", user_id)
        await conn.execute("""DELETE FROM crypto_cross_signing_signatures
                              WHERE signed_user_id = $1 OR signer_user_id = $1""", user_id)
        await conn.execute("DELETE FROM crypto_device WHERE user_id = $1", user_id)


async def prune_expired_keys(store: PgCryptoStore) -> int:
    """Drop the room keys of a device that have outlived their room's rotation period twice
    over (mautrix's redaction: the key is deleted, a note that it was stays), and the
    replay-protection indexes of messages under keys no device holds any more. Returns how
    many keys were dropped."""
    redacted = await store.redact_expired_group_sessions()
    await store.db.execute(
        """DELETE FROM crypto_message_index AS mi WHERE NOT EXISTS
           (SELECT 1 FROM crypto_megolm_inbound_session AS s
            WHERE s.session_id = mi.session_id AND s.session IS NOT NULL)""")
    return len(redacted)


async def forget_user(db: Database, user_id: str) -> None:
    """What the crypto store keeps of another user (their devices' public keys, their
    cross-signing keys and signatures, that their device list is tracked): `!forget`. If a
    device of ours talks to them again, mautrix fetches the list again."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM crypto_tracked_user WHERE user_id = $1", user_id)
        await conn.execute("DELETE FROM crypto_device WHERE user_id = $1", user_id)
        await conn.execute("DELETE FROM crypto_cross_signing_keys WHERE user_id = $1", user_id)
        await conn.execute("""DELETE FROM crypto_cross_signing_signatures
                              WHERE signed_user_id = $1 OR signer_user_id = $1""", user_id)
    forget_cached_devices(db, user_id)
