"""Rate limits over real PostgreSQL: the churn cooldown and the flood cooldown survive a
restart (a new Limits), a flooder is warned and then their chat ends without the partner
being flooded, links early in a chat are held back with a notice, invites are limited."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from bridge.i18n import messages
from bridge.lab.inprocess import existing_keys, start_inprocess_bridge
from bridge.matching import queue
from bridge.moderation.chat_guard import ChatGuard
from bridge.portal import FLOODED
from bridge.moderation.limits import Limits
from bridge.relay.relayer import Relayer
from bridge.store import conversations
from tests.integration.moderation_world import agreed, moderation_world, say
from tests.integration.test_pairing import FakePortal, config  # noqa: F401 (fixture)

pytestmark = pytest.mark.filterwarnings("ignore:loop argument is deprecated:DeprecationWarning")


class RecordingPortal(FakePortal):
    """Also records the notices ghosts give and the events relayed."""

    def __init__(self) -> None:
        super().__init__()
        self.notices: list[tuple[str, str, str, dict]] = []  # (ghost, room, key, values)
        self.sent: list[tuple[str, str, dict]] = []  # (ghost, room, content)

    def ghost(self, ghost_id: str):
        return SimpleNamespace(mxid=ghost_id)

    async def notice(self, intent, room_id: str, key: str, *, cause, **values) -> str:
        self.notices.append((intent.mxid, room_id, key, values))
        return f"$notice{len(self.notices)}"

    async def send(self, ghost_id, room_id, event_type, content, txn) -> str:
        self.sent.append((ghost_id, room_id, content))
        return f"$sent{len(self.sent)}"


@pytest.fixture
def limited(config):
    """Small limits, so a test reaches them in a few steps."""
    for key, value in {"messages.burst": 3, "messages.per_minute": 1,
                       "messages.flood_tolerance": 2, "flood_cooldown": 600,
                       "churn.free": 2, "churn.window": 60, "churn.cooldown": 30,
                       "churn.max_cooldown": 120, "churn.forgive_after": 600,
                       "invites.burst": 2, "invites.per_hour": 1}.items():
        config[f"bridge.rate_limits.{key}"] = value
    config["bridge.links.hold_messages"] = 2
    config["bridge.links.hold_seconds"] = 0
    return config


@pytest.fixture
async def world(pool, limited):
    async with moderation_world(pool, limited, RecordingPortal()) as w:
        w.guard = ChatGuard(w.limits, w.pairing, w.portal, w.notify_dm, "!")
        w.relayer = Relayer(pool, limited, w.portal, w.limits)
        yield w


async def active_chat(pool, w, a: str, b: str):
    await agreed(pool, a, b)
    await say(w.commands, a, "!start")
    await say(w.commands, b, "!start")
    conv_id = (await conversations.live_side_of(pool, a)).conversation_id
    for side, room in ((0, "!room_a:x"), (1, "!room_b:x")):
        await conversations.set_room(pool, conv_id, side, room)
        await w.pairing.joined(conv_id, side)
    conv = await conversations.get(pool, conv_id)
    assert conv.state == "active"
    return conv


def message(body: str, n: int, room: str = "!room_a:x") -> dict:
    return {"event_id": f"$m{n}-{body[:8]}", "room_id": room, "type": "m.room.message",
            "content": {"msgtype": "m.text", "body": body}}


# -- churn --------------------------------------------------------------------------------------

async def test_churn_cooldown_escalates_and_survives_a_restart(pool, limited):
    ann = "@ann:x.example"
    await agreed(pool, ann)
    limits, t = Limits(pool, limited), datetime(2026, 12, 4, 12, tzinfo=timezone.utc)
    assert await limits.start(ann, t) is None
    assert await limits.start(ann, t) is None
    assert await limits.start(ann, t) == ("too_fast", t + timedelta(seconds=30))
    restarted = Limits(pool, limited)
    assert await restarted.start(ann, t + timedelta(seconds=29)) == (
        "too_fast", t + timedelta(seconds=30))
    later = t + timedelta(seconds=30)
    assert await restarted.start(ann, later) is None
    assert await restarted.start(ann, later) is None
    assert await restarted.start(ann, later) == ("too_fast", later + timedelta(seconds=60))


async def test_too_fast_start_and_next_are_refused_politely(pool, world):
    ann, bob, cat = "@ann:x.example", "@bob:x.example", "@cat:x.example"
    await agreed(pool, ann, bob, cat)
    await say(world.commands, bob, "!start")
    assert (await say(world.commands, ann, "!start"))[0] == "queued"  # ann's 1st: with bob
    assert (await say(world.commands, ann, "!start"))[0] == "already_chatting"  # not counted
    await say(world.commands, cat, "!start")
    assert (await say(world.commands, ann, "!next"))[0] == "requeued"  # 2nd: with cat
    with_cat = (await conversations.live_side_of(pool, ann)).conversation_id
    key, _, values = await say(world.commands, ann, "!next")  # 3rd: too fast
    assert key == "too_fast"
    assert messages.text(key, **values).startswith(
        "You're looking for new strangers too fast. You can start again in ")
    assert messages.render(values["wait"]).endswith(" s")  # (the cooldown is 30 s, counted down from now)
    # The chat she is in goes on; after a !stop, !start is refused the same way.
    assert (await conversations.live_side_of(pool, ann)).conversation_id == with_cat
    await say(world.commands, ann, "!stop")
    assert (await say(world.commands, ann, "!start"))[0] == "too_fast"


# -- flood --------------------------------------------------------------------------------------

async def test_a_flooder_is_warned_then_the_chat_ends_and_the_partner_is_spared(pool, world):
    ann, bob = "@ann:x.example", "@bob:x.example"
    conv = await active_chat(pool, world, ann, bob)
    side = conv.side_of(ann)
    verdicts = [await world.guard.allows(conv, side, message(f"spam {i}", i)) for i in range(6)]
    # burst 3 relayed; the 4th warned; 2 more dropped (tolerance 2) and the chat ended.
    assert verdicts == [True, True, True, False, False, False]
    assert [(n[0], n[1], n[2]) for n in world.portal.notices] == [
        (side.ghost_id, "!room_a:x", "flood_warning")]  # in ann's own room, by its ghost
    ended = await conversations.get(pool, conv.id)
    assert (ended.state, ended.end_reason, ended.ended_by) == ("ended", FLOODED, ann)
    assert world.told == [(ann, "flood_ended", {"wait": messages.duration(600)})]
    # Nothing reached bob's room, and ann cannot start again for now (even after a restart).
    assert world.portal.sent == []
    key, _, values = await say(world.commands, ann, "!start")
    assert key == "flood_cooldown" and re.search(r"in (10 min|9 min \d+ s)\.$",
                                                  messages.text(key, **values))
    assert (await Limits(pool, world.commands.config).start(ann))[0] == "flood_cooldown"
    assert (await say(world.commands, bob, "!start"))[0] == "queued"  # bob is not punished


# -- links --------------------------------------------------------------------------------------

async def test_links_are_held_early_in_a_chat_with_a_notice(pool, world):
    ann, bob = "@ann:x.example", "@bob:x.example"
    conv = await active_chat(pool, world, ann, bob)
    side = conv.side_of(ann)
    await world.relayer.relay(conv, side, message("see https://example.org", 1))
    assert world.portal.sent == []
    ghost, room, key, values = world.portal.notices[-1]
    assert (ghost, room, key) == (side.ghost_id, "!room_a:x", "link_held")
    assert messages.text(key, **values) == (
        "Links can't be sent at the start of a chat, so that message was not delivered. "
        "Links are allowed after 2 more messages.")
    for n in (2, 3):
        await world.relayer.relay(conv, side, message(f"hello {n}", n))
    await world.relayer.relay(conv, side, message("now www.example.org", 4))
    assert [c["body"] for _, _, c in world.portal.sent] == [
        "hello 2", "hello 3", "now www.example.org"]


async def test_a_reply_or_mention_is_not_a_link(pool, world):
    """What sanitising removes (reply fallbacks quoting matrix.to, pills) is not held."""
    ann, bob = "@ann:x.example", "@bob:x.example"
    conv = await active_chat(pool, world, ann, bob)
    event = message("Stranger: hi", 1)
    event["content"].update(format="org.matrix.custom.html", formatted_body=(
        '<a href="https://matrix.to/#/@_stranger_abc:x.example">Stranger</a>: hi'))
    await world.relayer.relay(conv, conv.side_of(ann), event)
    assert len(world.portal.sent) == 1


# -- invites ------------------------------------------------------------------------------------

def test_invites_are_limited_per_user(limited):
    limits = Limits(None, limited)
    assert [limits.invite("@ann:x", now=0) for _ in range(3)] == [True, True, False]
    assert limits.invite("@bob:x", now=0) is True
    assert limits.invite("@ann:x", now=3600) is True


# -- leaving a chat room counts as a start --------------------------------------------------------

async def test_leaving_chat_rooms_counts_towards_the_churn_limit(tmp_path, database_uri):
    """The whole bridge in process (fake homeserver): a user who keeps leaving chat rooms to
    find someone new is stopped like one who keeps sending !next."""
    world = await start_inprocess_bridge(tmp_path, database_uri, **existing_keys({
        "logging.level": "WARNING", "bridge.matching.rematch_cooldown": 0,
        "bridge.rate_limits.churn.free": 2}))
    try:
        alice, bob = await world.pair("alice", "bob")  # alice's 1st start, bob's 1st
        mark = world.hs.mark()
        world.hs.member(alice.room, alice.user_id, "leave")  # alice's 2nd: queued again
        await world.hs.wait_for(lambda e: e["room_id"] == alice.dm
                                and "Looking for a new stranger" in str(e["content"]), 30, mark,
                                "requeued")
        await bob.command("!start", "Looking")  # bob's 2nd: matched with alice again
        await alice.accept(mark)
        await bob.accept(mark)
        await alice.wait_opened(mark)
        mark = world.hs.mark()
        world.hs.member(alice.room, alice.user_id, "leave")  # alice's 3rd: too fast
        await world.hs.wait_for(lambda e: e["room_id"] == alice.dm
                                and "too fast" in str(e["content"]), 30, mark, "too fast")
        await world.quiesce()
        assert await conversations.live_side_of(world.bridge.pool, alice.user_id) is None
        assert not await queue.is_waiting(world.bridge.pool, alice.user_id)
        # bob saw the usual disconnect.
        assert any(e["room_id"] == bob.room and "Stranger has disconnected" in
                   str(e["content"]) for e in world.hs.sent[mark:])
    finally:
        await world.stop()


async def test_next_typed_in_the_chat_room_too_fast_is_answered_in_the_dm(tmp_path, database_uri):
    world = await start_inprocess_bridge(tmp_path, database_uri, **existing_keys({
        "logging.level": "WARNING", "bridge.rate_limits.churn.free": 1}))
    try:
        alice, bob = await world.pair("alice", "bob")  # each one's only free start
        mark = world.hs.mark()
        world.hs.say(alice.room, alice.user_id, "!next")
        await world.hs.wait_for(lambda e: e["room_id"] == alice.dm
                                and "too fast" in str(e["content"]), 30, mark, "too fast")
        await world.quiesce()
        # The chat goes on, and bob never saw the command.
        assert await conversations.live_side_of(world.bridge.pool, alice.user_id) is not None
        assert not any("!next" in str(e["content"]) for e in world.hs.sent[mark:]
                       if e["room_id"] == bob.room)
    finally:
        await world.stop()
