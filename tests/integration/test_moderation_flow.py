"""!report, !block, the moderation room and its commands, restrictions and the automatic
suspension, through the whole bridge (handler, pairing, portal, relay) in process, against
the fake homeserver and real PostgreSQL."""
from __future__ import annotations

import pytest

from bridge.lab.inprocess import SERVER_NAME, existing_keys, start_inprocess_bridge
from bridge.moderation import evidence, moderation_log, reports
from bridge.store import bridge_state

pytestmark = pytest.mark.filterwarnings("ignore:loop argument is deprecated:DeprecationWarning")

MOD = f"@mod:{SERVER_NAME}"


@pytest.fixture
async def world(tmp_path, database_uri):
    world = await start_inprocess_bridge(
        tmp_path, database_uri, **existing_keys({"logging.level": "WARNING",
                                                 "bridge.admins": [MOD]}))
    try:
        room = world.bridge.moderation_room.room_id
        assert room is not None
        world.hs.member(room, MOD, "join")
        yield world
    finally:
        await world.stop()


def mod_room(world) -> str:
    return world.bridge.moderation_room.room_id


async def mod_says(world, text: str, expect: str) -> str:
    """A moderator's command in the moderation room; the bot's answer there."""
    mark = world.hs.mark()
    world.hs.say(mod_room(world), MOD, text)
    event = await world.hs.wait_for(
        lambda e: e["room_id"] == mod_room(world) and e["sender"] == world.bot_id
        and expect in str(e["content"].get("body", "")), 30, mark, f"answer to {text!r}")
    return event["content"]["body"]


async def posted(world, expect: str, mark: int) -> str:
    event = await world.hs.wait_for(
        lambda e: e["room_id"] == mod_room(world) and expect in str(e["content"].get("body", "")),
        30, mark, f"moderation room post with {expect!r}")
    return event["content"]["body"]


def seen_by(world, user, mark: int) -> list[str]:
    """Every body the bridge sent, since mark, into the user's DM or chat rooms."""
    rooms = {user.dm} | {e["room_id"] for e in world.hs.sent
                         if e.get("state_key") == user.user_id}
    return [str(e["content"].get("body", "")) for e in world.hs.sent[mark:]
            if e["room_id"] in rooms and e["type"] == "m.room.message"]


async def chat_line(world, sender, receiver, body: str) -> None:
    mark = world.hs.mark()
    world.hs.say(sender.room, sender.user_id, body)
    await world.hs.wait_for(lambda e: e["room_id"] == receiver.room
                            and e["content"].get("body") == body, 30, mark, "relayed line")


async def test_the_moderation_room_is_made_once_and_kept(world):
    # Made at the first start, with the admin invited, and remembered for the next.
    invites = [e for e in world.hs.sent if e["room_id"] == mod_room(world)
               and e["type"] == "m.room.member" and e.get("state_key") == MOD]
    assert invites and invites[0]["content"]["membership"] == "invite"
    assert await bridge_state.get(world.bridge.pool, "moderation_room") == mod_room(world)


async def test_report_in_the_chat_room_reaches_the_moderators_with_evidence(world):
    ann, bob = await world.pair("ann", "bob")
    await chat_line(world, bob, ann, "buy cheap stuff at spam.example")
    await chat_line(world, ann, bob, "no thanks")
    bob_mark = world.hs.mark()
    mark = world.hs.mark()
    world.hs.say(ann.room, ann.user_id, "!report spam links")
    await world.hs.wait_for(lambda e: e["room_id"] == ann.dm and "report was received"
                            in str(e["content"].get("body", "")), 30, mark, "report received")
    report = await posted(world, "Report #", mark)
    assert f"{ann.user_id} reported {bob.user_id}" in report
    assert "Reason: spam links" in report
    assert "1. buy cheap stuff at spam.example" in report
    assert "no thanks" not in report  # only the reported side's words
    await world.quiesce()
    # Bob sees exactly what a leave shows, and nothing of the report; the command itself
    # never reached him.
    bob_saw = seen_by(world, bob, bob_mark)
    assert any(b.startswith("Stranger has disconnected.") for b in bob_saw)
    assert not any("report" in b.lower() or ann.user_id in b for b in bob_saw)
    # Ann is not requeued; the report is open and holds Bob's evidence.
    [open_report] = await reports.open_reports(world.bridge.pool, 10)
    assert open_report.reported == bob.user_id
    await world.bridge.pool.execute("UPDATE conversations SET ended_at = now() - interval '1 day'")
    await world.bridge.safety.purge_evidence()
    assert await evidence.of_side(world.bridge.pool, open_report.conversation_id,
                                  open_report.reported_side) == [
        "buy cheap stuff at spam.example"]
    # Listed, then dismissed (recorded); then the evidence goes.
    assert f"#{open_report.id}" in await mod_says(world, "!reports", "Open reports (1)")
    await mod_says(world, f"!dismiss {open_report.id} a joke", "dismissed")
    assert await reports.count_open(world.bridge.pool) == 0
    await world.bridge.safety.purge_evidence()
    assert await evidence.count(world.bridge.pool) == 0
    [entry] = await moderation_log.entries(world.bridge.pool)
    assert (entry.actor, entry.action, entry.reason) == (MOD, "dismiss", "a joke")


async def test_report_just_after_the_chat_from_the_dm(world):
    ann, bob = await world.pair("ann", "bob")
    await chat_line(world, bob, ann, "you are stupid")
    await bob.command("!stop", "ended")
    mark = world.hs.mark()
    await ann.command("!report insults", "report was received")
    assert "1. you are stupid" in await posted(world, "Report #", mark)
    await ann.command("!report again", "already reported")
    # Long after (beyond the grace period) there is nothing left to report.
    await world.bridge.pool.execute("UPDATE conversations SET ended_at = now() - interval '1 day'")
    await ann.command("!report late", "no chat to report")


async def test_block_ends_like_next_and_the_pair_never_meets_again(world):
    ann, bob = await world.pair("ann", "bob")
    mark = world.hs.mark()
    world.hs.say(ann.room, ann.user_id, "!block")
    await world.hs.wait_for(lambda e: e["room_id"] == ann.dm and "Blocked" in str(
        e["content"].get("body", "")), 30, mark, "blocked")
    await world.quiesce()
    assert any(b.startswith("Stranger has disconnected.") for b in seen_by(world, bob, mark))
    assert not any("lock" in b for b in seen_by(world, bob, mark))
    # Ann waits again; Bob starts: they are not paired, whoever else comes is.
    await world.bridge.pool.execute("DELETE FROM recent_pairs WHERE until < 'infinity'")
    await bob.command("!start", "Looking")
    await world.quiesce()
    assert await world.bridge.pool.fetchval("SELECT count(*) FROM waiting") == 2
    cat = world.user("cat")
    await cat.ready()
    await cat.command("!start", "Looking")
    await world.quiesce()
    assert await world.bridge.pool.fetchval("SELECT count(*) FROM waiting") == 1
    rows = await world.bridge.pool.fetch("SELECT * FROM recent_pairs WHERE until = 'infinity'")
    assert {rows[0]["user_a"], rows[0]["user_b"]} == {ann.user_id, bob.user_id}


async def test_a_ban_ends_the_live_chat_and_start_gets_the_statement_of_reasons(world):
    ann, bob = await world.pair("ann", "bob")
    mark = world.hs.mark()
    answer = await mod_says(world, f"!ban {bob.user_id} 7d threatening people", "is banned")
    assert "until" in answer and "threatening people" in answer
    await world.quiesce()
    ann_saw = seen_by(world, ann, mark)
    assert any(b.startswith("Stranger has disconnected.") for b in ann_saw)
    assert not any("ban" in b.lower() for b in ann_saw)
    statement = await bob.command("!start", "You can't chat here")
    body = statement["content"]["body"]
    assert "your account is banned until" in body and "Reason: threatening people" in body
    assert "decided by a moderator" in body
    assert await world.bridge.pool.fetchval("SELECT count(*) FROM waiting") == 0
    await mod_says(world, f"!unban {bob.user_id} appeal accepted", "lifted")
    await bob.command("!start", "Looking")
    actions = [(e.action, e.target) for e in await moderation_log.entries(world.bridge.pool)]
    assert actions == [("unban", bob.user_id), ("banned", bob.user_id)]


async def test_server_bans_and_moderator_input_errors(world):
    ann = world.user("ann")
    await ann.ready()
    await ann.command("!start", "Looking")
    await mod_says(world, "!banserver other.example", "give a reason")
    await mod_says(world, f"!banserver {SERVER_NAME} spam", "admin of this bridge")
    await mod_says(world, "!banserver bad.example spam server", "bad.example is banned")
    await mod_says(world, "!suspend @x:bad.example soon spam", "not a duration")
    await mod_says(world, "!ban not-a-user spam", "not a Matrix user ID")
    await mod_says(world, f"!ban {MOD} spam", "admin of this bridge")
    await mod_says(world, "!frobnicate", "Unknown moderator command")
    await mod_says(world, "!dismiss 999", "no open report #999")
    counts = await mod_says(world, "!counts", "Waiting: 1.")
    assert "Servers banned: 1." in counts and "Open reports: 0." in counts
    await mod_says(world, "!unbanserver bad.example", "no longer banned")
    await mod_says(world, "!unbanserver bad.example", "was not banned")
    assert "!banserver" in await mod_says(world, "!help", "Moderator commands")


async def test_only_admins_command_in_the_moderation_room(world):
    eve = f"@eve:{SERVER_NAME}"
    world.hs.member(mod_room(world), eve, "join")
    mark = world.hs.mark()
    world.hs.say(mod_room(world), eve, f"!ban {MOD} x")
    world.hs.say(mod_room(world), eve, "!counts")
    await world.quiesce()
    assert not [e for e in world.hs.sent[mark:] if e["room_id"] == mod_room(world)]
    assert await world.bridge.pool.fetchval("SELECT count(*) FROM sanctions") == 0


async def test_three_reporters_suspend_automatically_pending_review(world):
    mark = world.hs.mark()
    troll = world.user("troll")
    await troll.ready()
    for name in ("ann", "bob", "cat"):
        victim = world.user(name)
        await victim.ready()
        await world.pair_users(victim, troll)
        await victim.command("!report rude", "report was received")
        await world.quiesce()
        await world.bridge.pool.execute("DELETE FROM recent_pairs")
    note = await posted(world, "suspended automatically", mark)
    assert troll.user_id in note and "reported by 3 users" in note
    body = (await troll.command("!start", "You can't chat here"))["content"]["body"]
    assert "your account is suspended until" in body and "decided automatically" in body
    # Lifted early, the same reports suspend again: twice as long (escalation).
    await mod_says(world, f"!unban {troll.user_id} mistake", "lifted")
    assert await world.bridge.safety.consider_auto_suspension(troll.user_id)
    lengths = await world.bridge.pool.fetch(
        """SELECT extract(epoch FROM until - created_at)::int AS seconds FROM sanctions
           WHERE source = 'automatic' ORDER BY id""")
    assert [r["seconds"] for r in lengths] == [86400, 2 * 86400]


async def test_a_server_ban_ends_its_users_chats_and_queue_places(world):
    from bridge.lab.inprocess import SimUser
    ann = world.user("ann")
    bad = SimUser(world, "@bob:bad.example")
    world.users[bad.user_id] = bad
    waiting = SimUser(world, "@cat:bad.example")
    for u in (ann, bad, waiting):
        await u.ready()
    await world.pair_users(ann, bad)
    await waiting.command("!start", "Looking")
    mark = world.hs.mark()
    answer = await mod_says(world, "!banserver Bad.Example spam server", "bad.example is banned")
    assert "2 of its users" in answer
    await world.quiesce()
    assert any(b.startswith("Stranger has disconnected.") for b in seen_by(world, ann, mark))
    for u in (bad, waiting):
        assert any("your homeserver is banned from this bridge permanently" in b
                   for b in seen_by(world, u, mark))
    assert await world.bridge.pool.fetchval("SELECT count(*) FROM waiting") == 0
    body = (await waiting.command("!start", "You can't chat here"))["content"]["body"]
    assert "Reason: spam server" in body
