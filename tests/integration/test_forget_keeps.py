"""What !forget keeps for others, over real PostgreSQL: blocks others made against the user
(theirs go), and the real ID on chats a report may still name, until the grace period is over
(then the periodic purge's step gives them the stand-in: once, across processes)."""
from __future__ import annotations

import asyncio

import asyncpg

from bridge.matching import claim, policy, queue
from bridge.privacy import erase
from bridge.store import conversations, recent_pairs, users
from tests.integration.moderation_world import agreed

ANN, BOB, CARL, DAVE, EVE = (f"@{n}:example.org" for n in ("ann", "bob", "carl", "dave", "eve"))
GRACE = 300.0


async def ended_chat(pool, a: str, b: str, ago: float = 0.0) -> int:
    """A chat of a and b that ended `ago` seconds ago (ended by a)."""
    async with pool.acquire() as conn, conn.transaction():
        conversation_id = await conversations.create(conn, a, b, f"@_g{a[1:4]}{b[1:4]}:x",
                                                     f"@_g{b[1:4]}{a[1:4]}:x", 60)
        await conversations.end(conn, conversation_id, "stop", a)
    await pool.execute(
        "UPDATE conversations SET ended_at = now() - make_interval(secs => $2) WHERE id = $1",
        conversation_id, float(ago))
    return conversation_id


async def forget(pool, user_id: str) -> erase.Erased:
    async with pool.acquire() as conn:
        return await erase.erase(conn, user_id, GRACE)


async def sides_of(pool, user_id: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM conversation_sides WHERE user_id = $1",
                               user_id)


async def test_blocks_others_made_stay_and_the_users_own_go(pool):
    await agreed(pool, ANN, BOB, CARL, DAVE, EVE)
    await recent_pairs.avoid(pool, ANN, BOB, blocked_by=ANN)     # hers: goes
    await recent_pairs.avoid(pool, CARL, ANN, blocked_by=CARL)   # against her: stays
    await recent_pairs.avoid(pool, ANN, DAVE, blocked_by=ANN)    # both ways: dave's stays
    await recent_pairs.avoid(pool, DAVE, ANN, blocked_by=DAVE)
    await recent_pairs.avoid(pool, ANN, EVE, until="2999-01-01")  # a cooldown: goes
    # A block from before makers were recorded: kept, whoever made it (safety first).
    await pool.execute("INSERT INTO recent_pairs VALUES ('@ann:example.org', '@zed:x', "
                       "'infinity', NULL)")
    erased = await forget(pool, ANN)
    assert erased.blocks_kept == 3 and not erased.kept
    rows = {(r["user_a"], r["user_b"]): r["blocked_by"] for r in await pool.fetch(
        "SELECT user_a, user_b, blocked_by FROM recent_pairs")}
    assert rows == {(ANN, CARL): [CARL], (ANN, DAVE): [DAVE], (ANN, "@zed:x"): None}
    assert await users.get(pool, ANN) is None  # nothing else of hers
    # She comes back: the claim passes carl over (he waited longer), and offers her bob
    # (her own block of him went).
    await agreed(pool, ANN)
    for user_id in (CARL, BOB, ANN):
        assert await queue.enqueue(pool, user_id, fallback_after=0)
    async with pool.acquire() as conn, conn.transaction():
        me, _ = await claim.lock_self(conn, ANN)
        assert (await claim.lock_partner(conn, me, policy.probes(me))).user_id == BOB
    # Carl's !forget takes his block with him.
    await queue.dequeue(pool, CARL)
    await forget(pool, CARL)
    assert {(r["user_a"], r["user_b"]) for r in await pool.fetch(
        "SELECT user_a, user_b FROM recent_pairs")} == {(ANN, DAVE), (ANN, "@zed:x")}


async def test_a_block_made_again_merges_its_makers(pool):
    await agreed(pool, ANN, BOB)
    await recent_pairs.avoid(pool, ANN, BOB, until="2999-01-01")  # a cooldown first
    await recent_pairs.avoid(pool, BOB, ANN, blocked_by=BOB)
    await recent_pairs.avoid(pool, ANN, BOB, blocked_by=ANN)
    await recent_pairs.avoid(pool, ANN, BOB, blocked_by=ANN)
    assert sorted(await pool.fetchval("SELECT blocked_by FROM recent_pairs")) == [ANN, BOB]


async def test_recent_chats_keep_the_real_id_until_the_grace_is_over(pool, database_uri):
    await agreed(pool, ANN, BOB, CARL, DAVE)
    old = await ended_chat(pool, ANN, BOB, ago=3600)
    recent = await ended_chat(pool, CARL, ANN, ago=10)
    erased = await forget(pool, ANN)
    assert (erased.conversations, erased.kept, erased.user) == (1, 1, True)
    # The old chat has the stand-in already; the recent one her real ID, as a report needs.
    stand_in = (await conversations.get(pool, old)).sides[0].user_id
    assert stand_in.startswith(erase.STAND_IN_PREFIX)
    assert (await conversations.get(pool, recent)).sides[1].user_id == ANN
    row = await pool.fetchrow("SELECT * FROM users WHERE user_id = $1", ANN)
    assert row["agreed_at"] is None and row["dm_room_id"] is None
    assert await erase.scrub_due(pool, GRACE) == 0  # not yet
    # The grace is over: scrubbed once, with the same stand-in (one per erasure), even by
    # two processes at once; the bare users row goes with the last of them.
    await pool.execute("UPDATE conversations SET ended_at = now() - interval '301 seconds'")
    other = await asyncpg.create_pool(database_uri, min_size=1, max_size=2)
    try:
        done = await asyncio.gather(erase.scrub_due(pool, GRACE), erase.scrub_due(other, GRACE))
    finally:
        await other.close()
    assert sum(done) == 1
    conv = await conversations.get(pool, recent)
    assert conv.sides[1].user_id == stand_in and conv.ended_by == CARL
    assert await erase.scrub_due(pool, GRACE) == 0
    assert await sides_of(pool, ANN) == 0
    assert await users.get(pool, ANN) is None
    assert await pool.fetchval("SELECT count(*) FROM forget_pending") == 0


async def test_coming_back_within_the_grace_keeps_the_new_self(pool):
    await agreed(pool, ANN, BOB, CARL)
    recent = await ended_chat(pool, ANN, BOB, ago=10)
    await forget(pool, ANN)
    # She opens a DM again and chats anew before the grace is over.
    await users.set_dm_room(pool, ANN, "!dm2:example.org")
    await users.agree(pool, ANN)
    again = await ended_chat(pool, ANN, CARL, ago=0)
    await pool.execute("UPDATE conversations SET ended_at = now() - interval '1 hour' "
                       "WHERE id = $1", recent)
    assert await erase.scrub_due(pool, GRACE) == 1
    conv = await conversations.get(pool, recent)
    assert conv.sides[0].user_id.startswith(erase.STAND_IN_PREFIX)
    assert conv.ended_by == conv.sides[0].user_id
    # Her new chat, and her new self, are untouched.
    assert (await conversations.get(pool, again)).sides[0].user_id == ANN
    assert (await users.get(pool, ANN)).dm_room_id == "!dm2:example.org"
