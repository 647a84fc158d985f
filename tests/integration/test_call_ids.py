"""The call/party ID stand-ins (bridge/store/calls.py) on real PostgreSQL."""
from __future__ import annotations

import asyncio

import asyncpg

from bridge.store import calls
from bridge.store.calls import CallIds
from tests.integration.test_store import make_users, new_conversation

A, B, C, D = "@alice:a.example", "@bob:b.example", "@carol:c.example", "@dan:d.example"


async def test_a_call_round_trip_maps_both_ways(pool):
    await make_users(pool, A, B)
    conv = await new_conversation(pool, A, B)
    # Side 0 (A) invites: its call and device are replaced by stand-ins.
    invite = await calls.resolve(pool, conv, 0, "callA", "DEVICEA", None)
    assert invite.call_id not in (None, "callA") and invite.party_id not in (None, "DEVICEA")
    assert invite.selected_party_id is None
    # Side 1 (B) answers the call by its stand-in: A gets its own call ID back.
    answer = await calls.resolve(pool, conv, 1, invite.call_id, "DEVICEB", None)
    assert answer.call_id == "callA" and answer.party_id not in ("DEVICEB", invite.party_id)
    # A picks B's answer by the stand-in A was shown: B is told its own real party ID.
    select = await calls.resolve(pool, conv, 0, "callA", "DEVICEA", answer.party_id)
    assert select == CallIds(invite.call_id, invite.party_id, "DEVICEB")
    # Every later event of the same call and device gets the same stand-ins.
    assert await calls.resolve(pool, conv, 0, "callA", "DEVICEA", None) == \
        CallIds(invite.call_id, invite.party_id, None)
    # A party ID that is not B's stand-in (e.g. A's own) names no one.
    assert (await calls.resolve(pool, conv, 0, "callA", "DEVICEA", "DEVICEB")).selected_party_id is None
    assert (await calls.resolve(pool, conv, 0, "callA", "DEVICEA",
                                invite.party_id)).selected_party_id is None


async def test_stand_ins_are_per_conversation(pool):
    await make_users(pool, A, B, C, D)
    first, second = await new_conversation(pool, A, B), await new_conversation(pool, C, D)
    one = await calls.resolve(pool, first, 0, "callA", "DEVICEA", None)
    two = await calls.resolve(pool, second, 0, "callA", "DEVICEA", None)
    assert one.call_id != two.call_id and one.party_id != two.party_id
    # The partner's stand-in of one conversation means nothing in another.
    assert await calls.real_of(pool, second, "call", 0, one.call_id) is None


async def test_concurrent_processes_agree_on_one_stand_in(database_uri):
    pools = [await asyncpg.create_pool(database_uri, min_size=1, max_size=4) for _ in range(2)]
    try:
        await make_users(pools[0], A, B)
        conv = await new_conversation(pools[0], A, B)
        results = await asyncio.gather(*(
            calls.resolve(pools[i % 2], conv, 0, "callA", "DEVICEA", None) for i in range(12)))
        assert len(set(results)) == 1
        assert await pools[0].fetchval("SELECT count(*) FROM call_ids") == 2
    finally:
        for p in pools:
            await p.close()


async def test_stand_ins_survive_a_new_connection(database_uri):
    pool = await asyncpg.create_pool(database_uri, min_size=1, max_size=2)
    await make_users(pool, A, B)
    conv = await new_conversation(pool, A, B)
    before = await calls.resolve(pool, conv, 1, "callB", "DEVICEB", None)
    await pool.close()
    pool = await asyncpg.create_pool(database_uri, min_size=1, max_size=2)
    try:
        assert await calls.resolve(pool, conv, 1, "callB", "DEVICEB", None) == before
    finally:
        await pool.close()


async def test_forget_drops_only_that_conversations_stand_ins(pool):
    await make_users(pool, A, B, C, D)
    first, second = await new_conversation(pool, A, B), await new_conversation(pool, C, D)
    await calls.resolve(pool, first, 0, "callA", "DEVICEA", None)
    kept = await calls.resolve(pool, second, 0, "callC", "DEVICEC", None)
    await calls.forget(pool, first)
    assert await pool.fetchval("SELECT count(*) FROM call_ids WHERE conversation_id = $1",
                               first) == 0
    assert await calls.resolve(pool, second, 0, "callC", "DEVICEC", None) == kept
