"""Recovery from faults a homeserver or database can show, driven precisely through the fake
homeserver with the whole bridge in-process (real PostgreSQL): transactions the homeserver
never sends (Synapse's recoverer race), relays repeated after a crash, rooms whose creation
was interrupted, cleanups that failed, and which errors count as "try again".
"""
from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiohttp import web
from mautrix.errors import MatrixConnectionError, make_request_error

from bridge.dispatcher import is_transient
from bridge.lab.inprocess import existing_keys, start_inprocess_bridge
from bridge.store import conversations

pytestmark = pytest.mark.filterwarnings("ignore:loop argument is deprecated:DeprecationWarning")


@pytest.fixture
async def chat(tmp_path, database_uri):
    world = await start_inprocess_bridge(tmp_path, database_uri,
                                         **existing_keys({"logging.level": "WARNING"}))
    try:
        alice, bob = await world.pair("alice", "bob")
        await world.quiesce()
        yield world, alice, bob
    finally:
        await world.stop()


def bodies_in(world, room_id: str, mark: int) -> list[str]:
    return [e["content"].get("body") for e in world.hs.sent[mark:]
            if e["room_id"] == room_id and e["type"] == "m.room.message"
            and world.is_ghost(e["sender"])]


async def relayed(world, room_id: str, body: str, mark: int, timeout: float = 15) -> None:
    await world.hs.wait_for(lambda e: e["room_id"] == room_id and e["content"].get("body") == body,
                            timeout, mark, f"relay of {body!r}")


async def test_a_stranded_event_is_relayed_before_the_next_one(chat):
    """The homeserver persisted an event but never sent it; the next event reveals the gap
    (while suspect, i.e. after a fault) and the stranded one is relayed first."""
    world, alice, bob = chat
    world.bridge.recovery.suspect_since_start("test: a recovery just ended")
    world.hs.strand = lambda e: e["content"].get("body") in ("two", "three")
    mark = world.hs.mark()
    for body in ("one", "two", "three"):
        world.hs.say(alice.room, alice.user_id, body)
    world.hs.strand = None
    world.hs.say(alice.room, alice.user_id, "four")
    await relayed(world, bob.room, "four", mark)
    assert bodies_in(world, bob.room, mark) == ["one", "two", "three", "four"]
    assert world.bridge.recovery.adopted_before == 2


async def test_without_a_fault_history_is_not_read(chat):
    world, alice, bob = chat
    catch_ups = world.bridge.recovery.catch_ups
    world.bridge.recovery.end_suspect_time_in(0)  # start-up's suspect time is over
    await asyncio.wait_for(world.bridge.recovery.caught_up(catch_ups), 10)
    reads = []
    world.hs.fault = lambda method, path, user: reads.append(path) if "/context/" in path else None
    mark = world.hs.mark()
    world.hs.say(alice.room, alice.user_id, "plain")
    await relayed(world, bob.room, "plain", mark)
    assert reads == []


async def test_a_trailing_stranded_event_is_adopted_when_suspect_time_ends(chat):
    """Nothing comes after the stranded event to reveal it: the catch-up at the end of
    suspect time reads each live room's latest history and adopts it."""
    world, alice, bob = chat
    recovery = world.bridge.recovery
    recovery.adopt_min_age_ms = 300
    recovery.recheck_seconds = 0.3
    world.hs.strand = lambda e: e["content"].get("body") in ("last words", "really last")
    mark = world.hs.mark()
    world.hs.say(alice.room, alice.user_id, "last words")
    world.hs.say(bob.room, bob.user_id, "really last")
    recovery.end_suspect_time_in(0.5)  # (a recovery just ended)
    await relayed(world, bob.room, "last words", mark)
    await relayed(world, alice.room, "really last", mark)
    assert recovery.adopted_trailing == 2
    await world.quiesce()
    # Delivered late after all (the next failure): recognised, not relayed again.
    for event in world.hs.stranded:
        world.hs.strand = None
        world.hs._outbox.append(event)
    world.hs._outbox_ready.set()
    world.hs.say(alice.room, alice.user_id, "after")
    await relayed(world, bob.room, "after", mark)
    assert bodies_in(world, bob.room, mark) == ["last words", "after"]
    assert bodies_in(world, alice.room, mark) == ["really last"]


async def test_a_relay_handled_again_is_not_sent_again(chat):
    """Handled again after a crash (or a database outage) between the send and marking it
    handled, with the homeserver's transaction-ID cache gone (it restarted): sent once."""
    world, alice, bob = chat
    mark = world.hs.mark()
    event = world.hs.say(alice.room, alice.user_id, "once only")
    await relayed(world, bob.room, "once only", mark)
    await world.quiesce()
    world.hs.txn_cache.clear()
    pool = world.bridge.pool
    await pool.execute("UPDATE inbox SET handled_at = NULL, event = $2::jsonb WHERE event_id = $1",
                       event["event_id"], __import__("json").dumps(event))
    world.bridge.dispatcher.kick([alice.room])
    await world.quiesce()
    world.hs.say(alice.room, alice.user_id, "marker")
    await relayed(world, bob.room, "marker", mark)
    assert bodies_in(world, bob.room, mark) == ["once only", "marker"]


async def test_a_room_whose_creation_was_interrupted_is_reused(chat):
    """A crash between createRoom and recording the room: the new ghost is already in a
    room, which must be this side's (never a second, orphaned one)."""
    world, alice, bob = chat
    pool = world.bridge.pool
    conv_id = await pool.fetchval("SELECT max(id) FROM conversations")
    ghost = await pool.fetchval("SELECT ghost_id FROM conversation_sides WHERE conversation_id=$1"
                                " AND side = 0", conv_id)
    # A conversation opening for two new users; side 0's room made but not recorded.
    carol, dave = world.user("carol"), world.user("dave")
    await carol.ready()
    await dave.ready()
    world.bridge.pairing.background = _Hold()  # opening is run by hand below
    await carol.command("!start", "Looking")
    await dave.command("!start", "Looking")
    new_conv = await pool.fetchval("SELECT max(id) FROM conversations")
    assert new_conv != conv_id
    conv = await conversations.get(pool, new_conv)
    orphan = world.hs.create_room(conv.sides[0].ghost_id)
    rooms_before = len(world.hs.rooms)
    mark = world.hs.mark()
    assert await world.bridge.portal.open(new_conv)
    conv = await conversations.get(pool, new_conv)
    assert conv.sides[0].room_id == orphan
    assert len(world.hs.rooms) == rooms_before + 1  # only side 1's room was created
    await carol.accept(mark)
    assert carol.room == orphan
    assert ghost  # (the first conversation's ghosts are untouched)


async def test_a_rejected_invite_leaves_no_ghost_behind(chat):
    """dave rejects the chat invite: the chat ends for carol, and both ghosts leave their
    rooms (the ghost used to stay when taking back dave's invite failed: he had left)."""
    world = chat[0]
    carol, dave = world.user("carol"), world.user("dave")
    await carol.ready()
    await dave.ready()
    mark = world.hs.mark()
    await carol.command("!start", "Looking")
    await dave.command("!start", "Looking")
    await carol.accept(mark)
    invite = await world.hs.wait_for(
        lambda e: e.get("state_key") == dave.user_id and e["content"].get("membership") == "invite",
        15, mark, "dave's invite")
    dave.room = invite["room_id"]
    world.hs.member(dave.room, dave.user_id, "leave")  # rejected
    await carol.wait_ghost_left(mark)
    await dave.wait_ghost_left(mark)
    await world.quiesce()
    assert all(world.hs.rooms.get(room) is None or not any(
        world.is_ghost(user) and membership == "join"
        for user, membership in world.hs.rooms[room].members.items())
        for room in (carol.room, dave.room))


async def test_a_conversation_ending_while_its_rooms_are_made_leaves_no_ghost(chat):
    """Opening is slow (a loaded homeserver) and the invite deadline passes meanwhile: the
    cleanup runs before the room exists. The room made after it must not keep its ghost
    (nor invite anyone). Seen in the 200-user load run."""
    world = chat[0]
    carol, dave = world.user("carol"), world.user("dave")
    await carol.ready()
    await dave.ready()
    portal, pairing = world.bridge.portal, world.bridge.pairing
    pairing.background = _Hold()
    await carol.command("!start", "Looking")
    await dave.command("!start", "Looking")
    conv_id = await world.bridge.pool.fetchval("SELECT max(id) FROM conversations")
    real_create = portal._create_room
    expired = asyncio.Event()

    async def slow_create(conv, side):
        # The deadline passes while the rooms (both at once) are being made.
        if side.side == 0:
            await pairing.expire(conv.id)
            await portal.close(conv.id)
            expired.set()
        else:
            await expired.wait()
        return await real_create(conv, side)

    portal._create_room = slow_create
    mark = world.hs.mark()
    assert await portal.open(conv_id)
    await world.quiesce()
    conv = await conversations.get(world.bridge.pool, conv_id)
    assert conv.state == "ended"
    for side in conv.sides:
        ghost_rooms = [r for r in world.hs.rooms.values() if r.members.get(side.ghost_id) == "join"]
        assert ghost_rooms == [], f"ghost of side {side.side} still in a room"
    assert not [e for e in world.hs.sent[mark:] if e["type"] == "m.room.member"
                and e["content"].get("membership") == "invite"], "nobody invited"


class _Hold:
    """A Background that runs nothing (the test drives the room work itself)."""
    def spawn(self, coro, name):
        coro.close()


async def test_a_failed_cleanup_is_done_again(chat):
    """The homeserver failed while the ghosts were saying goodbye: the conversation ended
    but its rooms were not cleaned up. The sweep does it again."""
    world, alice, bob = chat
    world.hs.fault = lambda method, path, user: (
        web.json_response({"errcode": "M_UNKNOWN", "error": "bad gateway"}, status=502) if path.endswith("/leave")
        and world.is_ghost(user) else None)
    world.bridge.appservice.intent.api.default_retry_count = 0
    for child in world.bridge.appservice.intent.api.children.values():
        child.default_retry_count = 0
    mark = world.hs.mark()
    world.hs.say(alice.room, alice.user_id, "!stop")
    await world.hs.wait_for(lambda e: e["room_id"] == alice.room and "disconnected" in str(
        e["content"].get("body")), 15, mark, "goodbye")
    await world.quiesce()  # the cleanup failed at the ghost's leave (logged)
    pool = world.bridge.pool
    assert await pool.fetchval("SELECT count(*) FROM conversation_sides WHERE NOT live AND "
                               "closed_at IS NULL") > 0
    world.hs.fault = None
    assert await world.bridge.recovery.sweep(grace=0) == 1
    await alice.wait_ghost_left(mark)
    await bob.wait_ghost_left(mark)
    assert await pool.fetchval("SELECT count(*) FROM conversation_sides WHERE NOT live AND "
                               "closed_at IS NULL") == 0


@pytest.mark.parametrize("error, transient", [
    (asyncpg.exceptions.AdminShutdownError("terminating connection"), True),
    (asyncpg.exceptions.CannotConnectNowError("starting up"), True),
    (asyncpg.exceptions.ConnectionDoesNotExistError("closed"), True),
    (asyncpg.exceptions.SerializationError("retry"), True),
    (asyncpg.exceptions.DeadlockDetectedError("retry"), True),
    (asyncpg.exceptions.TooManyConnectionsError("busy"), True),
    (ConnectionRefusedError(), True),
    (asyncio.TimeoutError(), True),
    (MatrixConnectionError("down"), True),
    (make_request_error(502, "", "M_UNKNOWN", "bad gateway"), True),
    (make_request_error(429, "", "M_LIMIT_EXCEEDED", "slow down"), True),
    (make_request_error(403, "", "M_FORBIDDEN", "no"), False),
    (asyncpg.exceptions.UniqueViolationError("bug"), False),
    (asyncpg.exceptions.InvalidTextRepresentationError("bad data"), False),
    (KeyError("bug"), False),
])
def test_what_counts_as_transient(error, transient):
    assert is_transient(error) is transient
