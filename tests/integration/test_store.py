"""The per-table SQL, against a real, freshly migrated PostgreSQL database."""
from __future__ import annotations

import asyncpg
import pytest

from bridge.store import conversations, inbox, relayed, users

from bridge.matching import queue

A, B, C = "@alice:a.example", "@bob:b.example", "@carol:c.example"


async def make_users(pool, *user_ids: str) -> None:
    for user_id in user_ids:
        await users.ensure(pool, user_id)


async def new_conversation(pool, user_a: str, user_b: str, timeout: float = 60) -> int:
    async with pool.acquire() as conn, conn.transaction():
        return await conversations.create(conn, user_a, user_b, f"@_g_{user_a}{user_b}0:x",
                                          f"@_g_{user_a}{user_b}1:x", timeout)


def event(event_id: str, room_id: str, body: str = "hi") -> dict:
    return {"event_id": event_id, "room_id": room_id, "type": "m.room.message",
            "sender": A, "content": {"msgtype": "m.text", "body": body}}


# -- users ------------------------------------------------------------------------------------

async def test_users_ensure_is_idempotent(pool):
    first = await users.ensure(pool, A)
    assert first.user_id == A and first.dm_room_id is None and not first.agreed
    assert await users.ensure(pool, A) == first
    assert await pool.fetchval("SELECT count(*) FROM users") == 1
    assert await users.get(pool, B) is None


async def test_users_agree_once(pool):
    await users.ensure(pool, A)
    assert await users.agree(pool, A) is True
    agreed = await users.get(pool, A)
    assert agreed.agreed
    assert await users.agree(pool, A) is False
    assert (await users.get(pool, A)).agreed_at == agreed.agreed_at
    # ensure() never forgets the agreement.
    assert (await users.ensure(pool, A)).agreed
    # Agreeing needs a user row.
    assert await users.agree(pool, B) is False


async def test_users_dm_room(pool):
    await users.set_dm_room(pool, A, "!dm1:a.example")  # creates the user
    assert (await users.get(pool, A)).dm_room_id == "!dm1:a.example"
    assert (await users.get_by_dm_room(pool, "!dm1:a.example", A)).user_id == A
    # Someone else writing in A's DM is not its owner.
    assert await users.get_by_dm_room(pool, "!dm1:a.example", B) is None
    assert await users.is_dm_room(pool, "!dm1:a.example")

    await users.set_dm_room(pool, A, "!dm2:a.example")  # a newer DM replaces the old one
    assert await users.get_by_dm_room(pool, "!dm1:a.example", A) is None
    assert (await users.get_by_dm_room(pool, "!dm2:a.example", A)).dm_room_id == "!dm2:a.example"
    assert not await users.is_dm_room(pool, "!dm1:a.example")

    await users.clear_dm_room(pool, "!dm2:a.example")
    assert (await users.get(pool, A)).dm_room_id is None


# -- queue ------------------------------------------------------------------------------------

async def test_queue_enqueue_dequeue(pool):
    await make_users(pool, A, B)
    assert await queue.enqueue(pool, A) is True
    assert await queue.enqueue(pool, A) is False
    assert await queue.enqueue(pool, B) is True
    assert await queue.is_waiting(pool, A)
    assert await queue.count(pool) == 2

    oldest = await pool.fetch("SELECT user_id, seq FROM waiting ORDER BY seq")
    assert [w["user_id"] for w in oldest] == [A, B]
    # Each waiter without tags has one index key ('' tag, '' language).
    assert await pool.fetchval("SELECT count(*) FROM waiting_keys WHERE tag = '' AND lang = ''") == 2

    assert await queue.dequeue(pool, A) is True
    assert await queue.dequeue(pool, A) is False
    assert not await queue.is_waiting(pool, A)
    assert await queue.count(pool) == 1

    async with pool.acquire() as conn:
        await queue.remove_many(conn, [B, C])
    assert await queue.count(pool) == 0


async def test_queue_needs_a_known_user(pool):
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await queue.enqueue(pool, C)


# -- conversations ----------------------------------------------------------------------------

async def test_conversation_create_and_get(pool):
    await make_users(pool, A, B)
    conversation_id = await new_conversation(pool, A, B)
    conv = await conversations.get(pool, conversation_id)
    assert conv.state == "opening"
    assert [s.user_id for s in conv.sides] == [A, B]
    assert [s.side for s in conv.sides] == [0, 1]
    assert all(s.live and s.joined_at is None and s.room_id is None for s in conv.sides)
    side_a = conv.side_of(A)
    assert conv.partner_of(side_a).user_id == B
    assert conv.side_of(C) is None
    assert await conversations.get(pool, conversation_id + 1000) is None
    assert await conversations.count_live(pool) == 1


async def test_conversations_created_together_each_get_their_sides_tags_and_unmet(pool):
    d, e, f = "@dave:d.example", "@erin:e.example", "@fay:f.example"
    await make_users(pool, A, B, C, d, e, f)
    for user_id in (A, B, C):
        await queue.enqueue(pool, user_id)
    new = [conversations.NewConversation(A, B, "@_g1:x", "@_g2:x", ("jazz", "tea"),
                                         ((False, True), (True, False))),
           conversations.NewConversation(C, d, "@_g3:x", "@_g4:x"),
           conversations.NewConversation(e, f, "@_g5:x", "@_g6:x", ("cats",)),
           conversations.NewConversation("@nobody:x", "@no-one:x", "@_g7:x", "@_g8:x")]
    async with pool.acquire() as conn, conn.transaction():
        ids = await conversations.create_many(conn, new[:2], 60, from_queue=True)
    assert len(set(ids)) == 2
    first, second = [await conversations.get(pool, i) for i in ids]
    assert [(s.user_id, s.ghost_id, s.interests_unmet, s.language_unmet) for s in first.sides] \
        == [(A, "@_g1:x", False, True), (B, "@_g2:x", True, False)]
    assert first.shared_tags == ("jazz", "tea") and second.shared_tags == ()
    assert [s.user_id for s in second.sides] == [C, d]
    assert first.state == second.state == "opening"
    assert await queue.count(pool) == 0  # taken out of the queue in the same statement
    # All or nothing: one bad conversation (an unknown user) makes none.
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        async with pool.acquire() as conn, conn.transaction():
            await conversations.create_many(conn, new[2:], 60)
    assert await pool.fetchval("SELECT count(*) FROM conversations") == 2


async def test_conversation_rooms(pool):
    await make_users(pool, A, B)
    conversation_id = await new_conversation(pool, A, B)
    await conversations.set_room(pool, conversation_id, 1, "!roomb:x")
    side = await conversations.side_by_room(pool, "!roomb:x")
    assert (side.conversation_id, side.side, side.user_id) == (conversation_id, 1, B)
    assert await conversations.side_by_room(pool, "!other:x") is None


async def test_mark_joined_tells_when_both_are_in_and_activate_happens_once(pool):
    await make_users(pool, A, B)
    conversation_id = await new_conversation(pool, A, B)
    async with pool.acquire() as conn:
        assert await conversations.mark_joined(conn, conversation_id, 0) is False
        assert await conversations.mark_joined(conn, conversation_id, 0) is False
        first_join = (await conversations.get(conn, conversation_id)).sides[0].joined_at
        assert first_join is not None
        assert await conversations.mark_joined(conn, conversation_id, 1) is True
        conv = await conversations.get(conn, conversation_id)
        assert conv.sides[0].joined_at == first_join  # a repeated join keeps the first time
        assert conv.sides[1].joined_at is not None
        assert conv.state == "opening"  # joining alone does not activate
        assert await conversations.activate(conn, conversation_id) is True
        assert await conversations.activate(conn, conversation_id) is False
        assert (await conversations.get(conn, conversation_id)).state == "active"


async def test_activate_and_join_after_the_end(pool):
    await make_users(pool, A, B)
    conversation_id = await new_conversation(pool, A, B)
    async with pool.acquire() as conn:
        await conversations.mark_joined(conn, conversation_id, 0)
        await conversations.end(conn, conversation_id, "invite_timeout", None)
        assert await conversations.mark_joined(conn, conversation_id, 1) is False
        assert await conversations.activate(conn, conversation_id) is False
        conv = await conversations.get(conn, conversation_id)
    assert conv.state == "ended"
    assert conv.sides[1].joined_at is None


async def test_end_is_idempotent(pool):
    await make_users(pool, A, B)
    conversation_id = await new_conversation(pool, A, B)
    assert (await conversations.live_side_of(pool, A)).conversation_id == conversation_id
    assert (await conversations.live_side_of(pool, B)).side == 1
    async with pool.acquire() as conn:
        assert await conversations.end(conn, conversation_id, "next", A) is True
        assert await conversations.end(conn, conversation_id, "stop", B) is False
    conv = await conversations.get(pool, conversation_id)
    assert (conv.state, conv.end_reason, conv.ended_by) == ("ended", "next", A)
    assert not any(s.live for s in conv.sides)
    assert await conversations.live_side_of(pool, A) is None
    assert await conversations.count_live(pool) == 0


async def test_a_user_cannot_be_in_two_live_conversations(pool):
    await make_users(pool, A, B, C)
    first = await new_conversation(pool, A, B)
    with pytest.raises(asyncpg.UniqueViolationError):
        await new_conversation(pool, A, C)
    # The failed transaction left nothing behind.
    assert await conversations.live_side_of(pool, C) is None
    assert await conversations.count_live(pool) == 1
    # Once the first has ended, a new one is allowed.
    async with pool.acquire() as conn:
        await conversations.end(conn, first, "next", A)
    second = await new_conversation(pool, C, A)
    assert (await conversations.live_side_of(pool, A)).conversation_id == second


async def test_expired_invites_and_cleanup_lists(pool):
    await make_users(pool, A, B, C, "@dave:d")
    overdue = await new_conversation(pool, A, B, timeout=0)
    later = await new_conversation(pool, C, "@dave:d", timeout=3600)
    assert await conversations.expired_invites(pool) == [overdue]
    assert await conversations.seconds_to_next_deadline(pool) == 0
    assert await conversations.unfinished(pool) == [overdue, later]  # no rooms yet

    for side, room in ((0, "!a:x"), (1, "!b:x")):
        await conversations.set_room(pool, overdue, side, room)
    async with pool.acquire() as conn:
        await conversations.end(conn, overdue, "invite_timeout", None)
    assert await conversations.expired_invites(pool) == []
    assert 3500 < await conversations.seconds_to_next_deadline(pool) <= 3600
    assert await conversations.unfinished(pool) == [overdue, later]  # overdue needs closing
    for side in (0, 1):
        await conversations.mark_closed(pool, overdue, side)
    assert await conversations.unfinished(pool) == [later]


# -- inbox ------------------------------------------------------------------------------------

async def test_inbox_deduplicates_by_event_id(pool):
    batch = [event("$1", "!r:x"), event("$2", "!r:x")]
    async with pool.acquire() as conn:
        await inbox.record(conn, batch)
        await inbox.record(conn, batch)
        await inbox.record(conn, [event("$2", "!r:x", "changed"), event("$3", "!r:x")])
    assert await pool.fetchval("SELECT count(*) FROM inbox") == 3
    pending = await inbox.pending(pool, "!r:x")
    assert [e["event_id"] for _, e in pending] == ["$1", "$2", "$3"]
    assert pending[1][1]["content"]["body"] == "hi"  # the first copy is kept
    assert pending[0][1] == batch[0]


async def test_inbox_pending_in_seq_order_per_room(pool):
    async with pool.acquire() as conn:
        await inbox.record(conn, [event("$b1", "!b:x"), event("$a1", "!a:x")])
        await inbox.record(conn, [event("$a2", "!a:x"), event("$b2", "!b:x")])
    pending_a = await inbox.pending(pool, "!a:x")
    assert [e["event_id"] for _, e in pending_a] == ["$a1", "$a2"]
    assert pending_a[0][0] < pending_a[1][0]
    assert [e["event_id"] for _, e in await inbox.pending(pool, "!b:x")] == ["$b1", "$b2"]
    assert [e["event_id"] for _, e in await inbox.pending(pool, "!b:x", limit=1)] == ["$b1"]
    assert await inbox.rooms_with_pending(pool) == ["!b:x", "!a:x"]


async def test_inbox_mark_handled_drops_the_body(pool):
    async with pool.acquire() as conn:
        await inbox.record(conn, [event("$1", "!r:x", "secret"), event("$2", "!r:x")])
    (seq, _), _ = await inbox.pending(pool, "!r:x")
    await inbox.mark_handled(pool, seq)
    row = await pool.fetchrow("SELECT event, handled_at FROM inbox WHERE seq = $1", seq)
    assert row["event"] is None and row["handled_at"] is not None
    assert [e["event_id"] for _, e in await inbox.pending(pool, "!r:x")] == ["$2"]
    # A handled event redelivered by the homeserver stays handled.
    async with pool.acquire() as conn:
        await inbox.record(conn, [event("$1", "!r:x", "secret")])
    assert [e["event_id"] for _, e in await inbox.pending(pool, "!r:x")] == ["$2"]
    assert await pool.fetchval("SELECT count(*) FROM inbox WHERE event::text LIKE '%secret%'") == 0


async def test_inbox_prune_forgets_only_old_handled_events(pool):
    async with pool.acquire() as conn:
        await inbox.record(conn, [event("$1", "!r:x"), event("$2", "!r:x")])
    (seq, _), _ = await inbox.pending(pool, "!r:x")
    await inbox.mark_handled(pool, seq)
    assert await inbox.prune(pool, 3600) == 0
    await pool.execute("UPDATE inbox SET handled_at = now() - interval '2 hours' WHERE seq = $1",
                       seq)
    assert await inbox.prune(pool, 3600) == 1
    assert await pool.fetchval("SELECT count(*) FROM inbox") == 1


# -- relayed ----------------------------------------------------------------------------------

async def test_relayed_counterpart_in_both_directions(pool):
    await make_users(pool, A, B, C)
    conversation_id = await new_conversation(pool, A, B)
    async with pool.acquire() as conn:
        await relayed.record(conn, "$orig_in_a", conversation_id, "!room_b:x", "$copy_in_b")
        await relayed.record(conn, "$orig_in_a", conversation_id, "!room_b:x", "$dup")  # ignored
        await relayed.record(conn, "$orig_in_b", conversation_id, "!room_a:x", "$copy_in_a")
    assert await relayed.counterpart(pool, conversation_id, "$orig_in_a") == "$copy_in_b"
    assert await relayed.counterpart(pool, conversation_id, "$copy_in_b") == "$orig_in_a"
    assert await relayed.counterpart(pool, conversation_id, "$orig_in_b") == "$copy_in_a"
    assert await relayed.counterpart(pool, conversation_id, "$copy_in_a") == "$orig_in_b"
    assert await relayed.counterpart(pool, conversation_id, "$unknown") is None
    # Another conversation cannot reach these events.
    async with pool.acquire() as conn:
        await conversations.end(conn, conversation_id, "next", A)
    other = await new_conversation(pool, A, C)
    assert await relayed.counterpart(pool, other, "$orig_in_a") is None
