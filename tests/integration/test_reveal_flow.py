"""!reveal through the whole bridge in process (handler, dispatcher, commands, portal)
against the fake homeserver and real PostgreSQL: never relayed, answered in the room, both
at once reveal once to each (by each room's own ghost, nowhere else), in the DM or after the
chat a polite answer."""
from __future__ import annotations

import pytest

from bridge.lab.inprocess import start_inprocess_bridge
from bridge.moderation import evidence

pytestmark = pytest.mark.filterwarnings("ignore:loop argument is deprecated:DeprecationWarning")


@pytest.fixture
async def world(tmp_path, database_uri):
    world = await start_inprocess_bridge(tmp_path, database_uri, **{"logging.level": "WARNING"})
    try:
        yield world
    finally:
        await world.stop()


def sent_since(world, mark: int, text: str) -> list[dict]:
    """The bridge's messages since `mark` whose body contains `text`."""
    return [e for e in world.hs.sent[mark:] if e["type"] == "m.room.message"
            and text in str(e["content"].get("body", ""))]


def ghost_of(world, room_id: str) -> str:
    [ghost] = {e["sender"] for e in world.hs.sent if e["room_id"] == room_id
               and world.is_ghost(e["sender"])}
    return ghost


async def test_both_at_once_reveal_once_to_each_in_their_own_room(world):
    for round_ in range(5):
        ann, bob = await world.pair(f"ann{round_}", f"bob{round_}")
        mark = world.hs.mark()
        world.hs.say(ann.room, ann.user_id, "!reveal")
        world.hs.say(bob.room, bob.user_id, "!reveal")
        await world.quiesce()
        to_ann = sent_since(world, mark, bob.user_id)
        to_bob = sent_since(world, mark, ann.user_id)
        assert [(e["room_id"], e["sender"]) for e in to_ann] == [(ann.room, ghost_of(world, ann.room))]
        assert [(e["room_id"], e["sender"]) for e in to_bob] == [(bob.room, ghost_of(world, bob.room))]
        assert f'href="https://matrix.to/#/{bob.user_id}"' in to_ann[0]["content"]["formatted_body"]
        # The command itself never crossed; nothing went to the DMs.
        assert not [e for e in world.hs.sent[mark:] if e["room_id"] in (ann.dm, bob.dm)]
        assert not [e for e in world.hs.sent[mark:] if e["content"].get("body") == "!reveal"]
        # Not evidence for reports: the bridge's own notices, never relayed messages.
        assert await evidence.count(world.bridge.pool) == 0
        await ann.command("!stop", "ended")


async def test_one_side_alone_is_answered_in_the_room_and_the_partner_asked_once(world):
    ann, bob = await world.pair("ann", "bob")
    mark = world.hs.mark()
    world.hs.say(ann.room, ann.user_id, "!reveal")
    world.hs.say(ann.room, ann.user_id, "!reveal")
    world.hs.say(ann.room, ann.user_id, "!reveal maybe")
    await world.quiesce()
    ann_saw = [e["content"]["body"] for e in world.hs.sent[mark:] if e["room_id"] == ann.room]
    assert [b.split(".")[0] for b in ann_saw] == [
        "Your request to exchange contacts was sent",
        "You have already asked to exchange contacts; the stranger has not agreed yet",
        "Send !reveal to offer to exchange contacts with the stranger, or !reveal cancel to "
        "take your offer back"]
    bob_saw = [e["content"]["body"] for e in world.hs.sent[mark:] if e["room_id"] == bob.room]
    assert bob_saw == ["Stranger would like to exchange contacts. Send !reveal to agree."]
    assert not sent_since(world, mark, ann.user_id) and not sent_since(world, mark, bob.user_id)


async def test_in_the_dm_and_after_the_chat_a_polite_answer(world):
    ann, bob = await world.pair("ann", "bob")
    await ann.command("!reveal", "works only inside a chat room")
    world.hs.say(bob.room, bob.user_id, "!reveal")
    await bob.command("!stop", "ended")
    await world.quiesce()
    mark = world.hs.mark()
    # ann agrees in her room of the chat that has just ended: nothing is revealed.
    world.hs.say(ann.room, ann.user_id, "!reveal")
    await world.hs.wait_for(lambda e: e["room_id"] == ann.dm and "That chat has ended" in str(
        e["content"].get("body", "")), 30, mark, "chat ended answer")
    await world.quiesce()
    assert not sent_since(world, mark, ann.user_id) and not sent_since(world, mark, bob.user_id)
