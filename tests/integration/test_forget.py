"""!forget: after a confirmation, no table holds the user's Matrix ID but the legal record
(reports, sanctions, evidence, the moderators' log) and blocks others made against them,
once the report grace period of their last chats is over (until then those chats keep it, so
a partner can still report them); without one, nothing changes. The whole bridge in process,
against the fake homeserver and real PostgreSQL."""
from __future__ import annotations

import asyncpg
import pytest

from bridge.lab.inprocess import SERVER_NAME, existing_keys, start_inprocess_bridge
from bridge.matching import queue
from bridge.store import conversations, users

pytestmark = pytest.mark.filterwarnings("ignore:loop argument is deprecated:DeprecationWarning")

# Tables that may keep a forgotten user's ID: the operator's legal record.
LEGAL_RECORD = {"reports", "sanctions", "evidence", "moderation_log"}
MOD = f"@mod:{SERVER_NAME}"


@pytest.fixture
async def world(tmp_path, database_uri):
    world = await start_inprocess_bridge(
        tmp_path, database_uri, **existing_keys({"logging.level": "WARNING",
                                                 "bridge.matching.fallback_after": 0,
                                                 "bridge.admins": [MOD]}))
    try:
        world.hs.member(world.bridge.moderation_room.room_id, MOD, "join")
        yield world
    finally:
        await world.stop()


async def holders(pool, user_id: str) -> dict[str, int]:
    """Every (table.column) of the database, mautrix's crypto tables included, whose text
    value is the user ID, or whose JSON holds it anywhere: how many rows."""
    columns = await pool.fetch(
        """SELECT table_name, column_name, data_type FROM information_schema.columns
           WHERE table_schema = 'public'
             AND data_type IN ('text', 'character varying', 'jsonb', 'json', 'ARRAY')""")
    assert len({c["table_name"] for c in columns}) >= 15  # every table of ours is seen
    found = {}
    for c in columns:
        table, column = c["table_name"], c["column_name"]
        if c["data_type"] in ("jsonb", "json"):
            where = f'position($1 in "{column}"::text) > 0'
        elif c["data_type"] == "ARRAY":
            where = f'$1 = ANY("{column}"::text[])'
        else:
            where = f'"{column}" = $1'
        count = await pool.fetchval(f'SELECT count(*) FROM "{table}" WHERE {where}', user_id)
        if count:
            found[f"{table}.{column}"] = count
    return found


async def chat_line(world, sender, receiver, body: str) -> None:
    mark = world.hs.mark()
    world.hs.say(sender.room, sender.user_id, body)
    await world.hs.wait_for(lambda e: e["room_id"] == receiver.room
                            and e["content"].get("body") == body, 30, mark, "relayed line")


async def in_chat_room(world, user, text: str) -> None:
    world.hs.say(user.room, user.user_id, text)
    await world.quiesce()


async def history(world):
    """Ann has a past: reported and blocked by carl, reported bob and blocked him, interests
    and a language, a live chat with dave, and a (lifted) suspension on record."""
    ann, bob, carl, dave = (world.user(n) for n in ("ann", "bob", "carl", "dave"))
    for user in (ann, bob, carl, dave):
        await user.ready()
    await world.pair_users(ann, carl)
    await chat_line(world, ann, carl, "hello carl")
    await chat_line(world, carl, ann, "hello ann")
    await in_chat_room(world, carl, "!report rude")
    await carl.command("!block", "Blocked")
    await world.pair_users(ann, bob)
    await chat_line(world, ann, bob, "hello bob")
    await in_chat_room(world, ann, "!report spam")
    await ann.command("!block", "Blocked")
    await world.pair_users(ann, dave)
    await chat_line(world, ann, dave, "hello dave")
    await chat_line(world, dave, ann, "hello again")
    await ann.command("!interests cinema, jazz", "cinema")
    await ann.command("!lang de", "de")  # (a language the bot does not speak: it stays English)
    pool = world.bridge.pool
    await pool.execute(
        """INSERT INTO sanctions (user_id, kind, reason, until, source, lifted_by, lifted_at)
           VALUES ($1, 'suspended', 'test', now(), 'automatic', '@mod:localhost', now())""",
        ann.user_id)
    await world.quiesce()
    return ann, bob, carl, dave


async def test_forget_confirmed_leaves_only_the_legal_record(world):
    ann, bob, carl, dave = await history(world)
    pool = world.bridge.pool
    before = await holders(pool, ann.user_id)
    # The history really put her ID in the tables !forget must empty.
    for held in ("users.user_id", "conversation_sides.user_id", "recent_pairs.user_a",
                 "reports.reporter", "reports.reported", "sanctions.user_id"):
        assert held in before or held.replace("user_a", "user_b") in before, (held, before)
    live = await conversations.live_side_of(pool, ann.user_id)
    assert live is not None

    await ann.command("!forget", "within 5 minutes")
    mark = world.hs.mark()
    reply = await ann.command("!forget confirm", "I have forgotten you")
    body = reply["content"]["body"]
    assert "reports made by you or about you" in body
    assert "a chat that ended less than 5 min ago keeps it that long" in body
    assert "blocks others made against you" in body
    # Dave is told, as for any stop; the bot leaves Ann's DM.
    await world.hs.wait_for(lambda e: e["room_id"] == dave.room
                            and "Stranger has disconnected" in str(e["content"].get("body")),
                            30, mark, "partner told")
    await world.hs.wait_for(lambda e: e["room_id"] == ann.dm and e.get("state_key") == world.bot_id
                            and e["content"].get("membership") == "leave", 30, mark, "bot leaves")
    await world.quiesce()

    # Within the report grace period her three chats (all just ended) keep her ID, and so
    # does a bare users row they point at; nothing else of hers is left.
    during = await holders(pool, ann.user_id)
    assert {column.split(".")[0] for column in during} <= LEGAL_RECORD | {
        "conversation_sides", "conversations", "users", "forget_pending", "recent_pairs"}, during
    assert during["conversation_sides.user_id"] == 3
    row = await pool.fetchrow("SELECT * FROM users WHERE user_id = $1", ann.user_id)
    assert (row["dm_room_id"], row["agreed_at"], row["tags"], row["lang"]) == (
        None, None, [], None)
    # Dave reports her after her !forget: the moderators get her real ID.
    mark = world.hs.mark()
    await dave.command("!report creepy", "report was received")
    post = await world.hs.wait_for(
        lambda e: e["room_id"] == world.bridge.moderation_room.room_id
        and "creepy" in str(e["content"].get("body", "")), 30, mark, "report posted")
    assert ann.user_id in post["content"]["body"]
    assert await pool.fetchval("SELECT reported FROM reports WHERE reporter = $1",
                               dave.user_id) == ann.user_id

    # The grace period is over: the periodic purge's step gives them the stand-in, once
    # (again, or in another process: nothing left to do).
    await pool.execute("UPDATE conversations SET ended_at = now() - interval '301 seconds'")
    assert await world.bridge.forgetting.scrub_due() == 3
    assert await world.bridge.forgetting.scrub_due() == 0
    after = await holders(pool, ann.user_id)
    assert {column.split(".")[0] for column in after} <= LEGAL_RECORD | {"recent_pairs"}, after
    assert after["reports.reporter"] == 1 and after["reports.reported"] == 2
    assert after["sanctions.user_id"] == 1
    # Carl's block of her stays (it protects him); hers of bob went.
    blocks = await pool.fetch("SELECT user_a, user_b, until, blocked_by FROM recent_pairs")
    assert [(r["user_a"], r["user_b"], r["blocked_by"]) for r in blocks] == [
        (ann.user_id, carl.user_id, [carl.user_id])]
    # Her side of each chat has a stand-in; the partners' sides and histories are whole.
    conv = await conversations.get(pool, live.conversation_id)
    assert conv.state == "ended"
    stand_in = conv.sides[live.side].user_id
    assert stand_in.startswith("forgotten:") and conv.ended_by == stand_in
    assert conv.partner_of(conv.sides[live.side]).user_id == dave.user_id
    for other in (bob, carl, dave):
        assert await pool.fetchval("SELECT count(*) FROM conversation_sides WHERE user_id = $1",
                                   other.user_id) == 1
    assert await pool.fetchval("SELECT count(*) FROM conversation_sides WHERE user_id = $1",
                               stand_in) == 3  # one stand-in per erasure: her three chats
    assert await pool.fetchval("SELECT count(*) FROM forget_pending") == 0
    # Dave goes on as usual; Ann may come back as a newcomer.
    assert not await queue.is_waiting(pool, dave.user_id)
    await ann.open_dm()
    assert (await users.get(pool, ann.user_id)).agreed_at is None


async def test_without_confirmation_nothing_changes(world):
    ann, *_ = await history(world)
    pool = world.bridge.pool
    before = await holders(pool, ann.user_id)
    prefs = await users.preferences(pool, ann.user_id)
    await ann.command("!forget confirm", "Nothing to confirm")   # not asked first
    await ann.command("!forget everything", "I'll ask you to confirm")   # bad argument
    await ann.command("!forget", "within 5 minutes")                # asked, never confirmed
    await world.quiesce()
    assert await holders(pool, ann.user_id) == before
    assert await users.preferences(pool, ann.user_id) == prefs
    assert await conversations.live_side_of(pool, ann.user_id) is not None
    # Too late: the window has passed.
    await pool.execute("UPDATE users SET forget_asked_at = now() - interval '6 minutes'")
    await ann.command("!forget confirm", "Nothing to confirm")
    await world.quiesce()
    assert await holders(pool, ann.user_id) == before


async def test_a_forgotten_user_who_comes_back_starts_afresh(world):
    """They invite the bot to a new DM: greeted as a newcomer, asked to agree again, then
    answered there as anyone else."""
    ann = world.user("ann")
    await ann.ready()
    old_dm = ann.dm
    await ann.command("!forget", "within 5 minutes")
    await ann.command("!forget confirm", "I have forgotten you")
    await world.quiesce()
    await ann.open_dm()
    assert ann.dm != old_dm
    await ann.command("!start", "agree")  # not agreed any more
    await ann.command("!agree", "Thanks")
    await ann.command("!status", "You are not chatting or waiting")
    row = await users.get(world.bridge.pool, ann.user_id)
    assert row.dm_room_id == ann.dm


async def test_a_running_cooldown_is_not_lifted_by_forgetting(world):
    ann = world.user("ann")
    await ann.ready()
    pool = world.bridge.pool
    await pool.execute("""INSERT INTO start_limits (user_id, flood_until)
                          VALUES ($1, now() + interval '10 minutes')""", ann.user_id)
    await ann.command("!forget", "Try again in")
    await pool.execute("UPDATE users SET forget_asked_at = now()")
    await ann.command("!forget confirm", "Try again in")
    assert await users.get(pool, ann.user_id) is not None


async def test_erase_refuses_a_live_conversation(world):
    """The caller must end the chat first: erasing a live side would break the partner."""
    from bridge.privacy.erase import erase
    ann, bob = await world.pair("ann", "bob")
    async with world.bridge.pool.acquire() as conn:
        with pytest.raises(ValueError):
            await erase(conn, ann.user_id)
    assert await users.get(world.bridge.pool, ann.user_id) is not None


async def test_crypto_device_lists_are_dropped(database_uri):
    """What mautrix's crypto store keeps of another user goes with forget_user."""
    import logging

    from mautrix.crypto import PgCryptoStore
    from mautrix.util.async_db import Database

    from bridge.encryption.crypto_store import forget_user
    db = Database.create(database_uri, upgrade_table=PgCryptoStore.upgrade_table,
                         log=logging.getLogger("test.crypto.db"))
    await db.start()
    try:
        ann, key = "@ann:localhost", "k" * 43
        await db.execute("INSERT INTO crypto_tracked_user (user_id) VALUES ($1)", ann)
        await db.execute("""INSERT INTO crypto_device (user_id, device_id, identity_key,
                            signing_key, trust, deleted, name) VALUES ($1, 'D', $2, $2, 0,
                            false, 'phone')""", ann, key)
        await db.execute("""INSERT INTO crypto_cross_signing_keys (user_id, usage, key,
                            first_seen_key) VALUES ($1, 'master', $2, $2)""", ann, key)
        await db.execute("""INSERT INTO crypto_cross_signing_signatures (signed_user_id,
                            signed_key, signer_user_id, signer_key, signature)
                            VALUES ($1, 'D', $1, $2, 'sig')""", ann, key)
        await forget_user(db, ann)
        conn = await asyncpg.connect(database_uri)
        try:
            from types import SimpleNamespace
            pool = SimpleNamespace(fetch=conn.fetch, fetchval=conn.fetchval)
            assert await holders(pool, ann) == {}
        finally:
            await conn.close()
    finally:
        await db.stop()


async def test_the_running_bridge_scrubs_a_kept_chat_once_its_grace_is_over(tmp_path,
                                                                            database_uri):
    """The evidence purge's loop does the scrub (here with a grace of 2 s: it runs each s)."""
    import asyncio
    world = await start_inprocess_bridge(
        tmp_path, database_uri, **existing_keys({"logging.level": "WARNING",
                                                 "bridge.moderation.evidence_grace": 2}))
    try:
        ann, bob = await world.pair("ann", "bob")
        await ann.command("!forget", "within 5 minutes")
        reply = await ann.command("!forget confirm", "I have forgotten you")
        assert "less than 2 s ago keeps it" in reply["content"]["body"]
        pool = world.bridge.pool
        # (That the chat keeps her ID meanwhile is the first test's; a loaded machine may
        # take longer than this grace to answer.)
        for _ in range(200):  # up to 20 s: the 2 s grace, then the next run of the loop
            if not await pool.fetchval("SELECT count(*) FROM forget_pending"):
                break
            await asyncio.sleep(0.1)
        assert await pool.fetchval("SELECT count(*) FROM forget_pending") == 0
        assert await holders(pool, ann.user_id) == {}
        assert await pool.fetchval("SELECT count(*) FROM conversation_sides WHERE user_id "
                                   "LIKE 'forgotten:%'") == 1
    finally:
        await world.stop()
