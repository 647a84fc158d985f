"""Opening a conversation: only the requests it needs, and an invite refused inside
createRoom (the room is made, the invite is not) still ends as an undeliverable invite.
Driven through the fake homeserver."""
from __future__ import annotations

import pytest

from bridge.lab.fakehs import _error
from bridge.lab.inprocess import existing_keys, start_inprocess_bridge
from bridge.portal import INVITE_FAILED
from bridge.store import conversations

pytestmark = pytest.mark.filterwarnings("ignore:loop argument is deprecated:DeprecationWarning")


@pytest.fixture
async def world(tmp_path, database_uri):
    world = await start_inprocess_bridge(tmp_path, database_uri,
                                         **existing_keys({"logging.level": "WARNING"}))
    try:
        yield world
    finally:
        await world.stop()


async def test_a_side_is_opened_with_register_name_and_one_create_room(world):
    asked: list[tuple[str, str, str]] = []
    world.hs.fault = lambda method, path, user: asked.append((method, path, user))
    mark = world.hs.mark()
    carol, dave = await world.pair("carol", "dave")
    await world.quiesce()
    world.hs.fault = None
    ghosts = {user for _, _, user in asked if world.is_ghost(user)}
    assert len(ghosts) == 2
    for ghost in ghosts:
        by_ghost = [(method, path.rsplit("/", 1)[-1] if "/profile/" in path else path)
                    for method, path, user in asked
                    if user == ghost or f"/profile/{ghost}" in path]
        # (Sends are the greeting; history reads are the start-up's delivery checks.)
        opening = [r for r in by_ghost
                   if not any(part in r[1] for part in ("/send/", "/context/", "/messages"))]
        assert opening == [("POST", "/_matrix/client/v3/register"), ("PUT", "displayname"),
                           ("POST", "/_matrix/client/v3/createRoom")], by_ghost
    invites = [e for e in world.hs.sent[mark:] if e["type"] == "m.room.member"
               and e["content"].get("membership") == "invite"]
    assert sorted(e["state_key"] for e in invites) == sorted([carol.user_id, dave.user_id])
    assert all(e["content"].get("is_direct") is True for e in invites)


async def test_an_invite_refused_inside_create_room_ends_the_conversation(world):
    """createRoom makes the room, then its invite fails (the user's homeserver refused it or
    could not be reached): the room is recorded (no orphan), the invite is tried once more
    on its own, and the conversation ends as undeliverable; the ghosts leave their rooms."""
    carol, dave = world.user("carol"), world.user("dave")
    await carol.ready()
    await dave.ready()
    refused: dict[str, str] = {}  # the refused side's ghost -> the room made for it

    def refuse_one_side(method: str, path: str, user: str):
        if not world.is_ghost(user) or (refused and user not in refused):
            return None
        if path.endswith("/createRoom"):
            refused[user] = world.hs.create_room(user)  # made, but the invite failed
            return _error(502, "M_UNKNOWN", "Failed to send the invite")
        if "/state/m.room.member/" in path or path.endswith("/invite"):
            return _error(403, "M_FORBIDDEN", "The user's homeserver refused the invite")
        return None

    world.hs.fault = refuse_one_side
    mark = world.hs.mark()
    await carol.command("!start", "Looking")
    await dave.command("!start", "Looking")
    for user in (carol, dave):
        await world.hs.wait_for(user._bot_says(user.dm, "didn't accept the chat invite"), 30,
                                mark, "told the invite failed")
    await world.quiesce()
    world.hs.fault = None
    [(ghost, room_id)] = refused.items()
    conv_id = await world.bridge.pool.fetchval("SELECT max(id) FROM conversations")
    conv = await conversations.get(world.bridge.pool, conv_id)
    assert (conv.state, conv.end_reason) == ("ended", INVITE_FAILED)
    side = next(s for s in conv.sides if s.ghost_id == ghost)
    assert side.room_id == room_id  # recorded, not orphaned
    for s in conv.sides:
        assert s.room_id is not None
        room = world.hs.rooms.get(s.room_id)  # (the fake forgets a room everyone left)
        assert room is None or room.members.get(s.ghost_id) != "join"
    assert not [r for r in world.hs.rooms.values() if r.members.get(ghost) == "join"]
