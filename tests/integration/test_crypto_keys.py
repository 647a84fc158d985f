"""Room keys do not pile up: a ghost's go with its device, the bot's expire (real PostgreSQL,
mautrix's own crypto schema)."""
from __future__ import annotations

import logging

import pytest
from mautrix.crypto import PgCryptoStore
from mautrix.util.async_db import Database

from bridge.encryption.crypto_store import delete_account, prune_expired_keys

BOT = "@strangerbot:example.org"
GHOST = "@_stranger_abc:example.org"
ALICE = "@alice:hs2"
KEY = "k" * 43


@pytest.fixture
async def crypto_db(database_uri):
    db = Database.create(database_uri, upgrade_table=PgCryptoStore.upgrade_table,
                         log=logging.getLogger("test.crypto.db"))
    await db.start()
    yield db
    await db.stop()


async def add_session(db, account: str, session_id: str, age_days: int = 0) -> None:
    """An inbound room key received `age_days` ago in a room rotating keys weekly, and the index
    row of one message decrypted with it."""
    await db.execute(
        """INSERT INTO crypto_megolm_inbound_session (account_id, session_id, sender_key,
           signing_key, room_id, session, forwarding_chains, received_at, max_age)
           VALUES ($1, $2, $3, $3, '!room:example.org', '\\x00', '',
                   now() - make_interval(days => $4), 604800000)""",
        account, session_id, KEY, age_days)
    await db.execute(
        """INSERT INTO crypto_message_index (sender_key, session_id, "index", event_id, timestamp)
           VALUES ($1, $2, 0, $3, 0)""", KEY, session_id, f"${session_id}")


async def add_device(db, user_id: str) -> None:
    await db.execute(
        """INSERT INTO crypto_account (account_id, device_id, shared, sync_token, account)
           VALUES ($1, 'DEV', true, '', '\\x00')""", user_id)
    await db.execute(
        """INSERT INTO crypto_olm_session (account_id, session_id, sender_key, session,
           created_at, last_decrypted, last_encrypted)
           VALUES ($1, $2, $3, '\\x00', now(), now(), now())""", user_id, f"olm{user_id}", KEY)
    await db.execute(
        """INSERT INTO crypto_device (user_id, device_id, identity_key, signing_key, trust,
           deleted, name) VALUES ($1, 'DEV', $2, $2, 0, false, 'Stranger')""", user_id, KEY)
    await db.execute(
        """INSERT INTO crypto_cross_signing_keys (user_id, usage, key, first_seen_key)
           VALUES ($1, 'master', $2, $2)""", user_id, KEY)
    await db.execute(
        """INSERT INTO crypto_cross_signing_signatures (signed_user_id, signed_key,
           signer_user_id, signer_key, signature) VALUES ($1, 'DEV', $1, $2, $3)""",
        user_id, KEY, "s" * 88)


async def rows_of(db, user_id: str) -> dict[str, int]:
    counts = {}
    for table, column in (("crypto_account", "account_id"), ("crypto_olm_session", "account_id"),
                          ("crypto_megolm_inbound_session", "account_id"),
                          ("crypto_device", "user_id"), ("crypto_cross_signing_keys", "user_id"),
                          ("crypto_cross_signing_signatures", "signed_user_id")):
        counts[table] = await db.fetchval(
            f"SELECT count(*) FROM {table} WHERE {column} = $1", user_id)
    return counts


async def indexed_sessions(db) -> set[str]:
    rows = await db.fetch("SELECT session_id FROM crypto_message_index")
    return {row["session_id"].strip() for row in rows}


async def test_a_forgotten_ghost_leaves_no_keys_and_the_bots_stay(crypto_db):
    for user_id in (GHOST, BOT):
        await add_device(crypto_db, user_id)
    await add_session(crypto_db, GHOST, "ghostsession")
    await add_session(crypto_db, BOT, "botsession")

    await delete_account(crypto_db, GHOST)

    assert set((await rows_of(crypto_db, GHOST)).values()) == {0}
    assert set((await rows_of(crypto_db, BOT)).values()) == {1}
    assert await indexed_sessions(crypto_db) == {"botsession"}


async def test_expired_room_keys_and_their_indexes_are_pruned(crypto_db):
    await add_device(crypto_db, BOT)
    await add_session(crypto_db, BOT, "fresh", age_days=1)
    await add_session(crypto_db, BOT, "expired", age_days=15)  # > 2 × the week's rotation
    store = PgCryptoStore(BOT, "pickle-key", crypto_db)

    assert await prune_expired_keys(store) == 1

    rows = await crypto_db.fetch(
        "SELECT session_id, session IS NULL AS gone FROM crypto_megolm_inbound_session")
    assert {row["session_id"].strip(): row["gone"] for row in rows} == {
        "fresh": False, "expired": True}
    assert await indexed_sessions(crypto_db) == {"fresh"}
    assert await prune_expired_keys(store) == 0  # nothing more to do
