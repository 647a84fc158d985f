"""Question mode's three-party state over real PostgreSQL: who is matched, who sees what (the
discussers' notice, the mirror into the watch room), who ends what, restart safety and bad
input. Rooms are recorded by fakes (the e2e module drives real homeservers)."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from bridge.background import Background
from bridge.commands import Commands
from bridge.matching import queue
from bridge.moderation.limits import Limits
from bridge.moderation.safety import Safety
from bridge.moderation import sanctions
from bridge.pairing import Pairing
from bridge.questions import table
from bridge.questions.questions import Questions
from bridge.questions.rules import ASKER_FORGOT, ASKER_LEFT
from bridge.relay.relayer import Relayer
from bridge.store import conversations, relayed
from tests.integration.moderation_world import agreed, say
from tests.integration.test_pairing import config  # noqa: F401 (fixture)


class FakePortal:
    """Pairing's room work, recorded; greets as the real portal does (the question first);
    sends and redactions recorded with made-up event IDs."""

    def __init__(self) -> None:
        self.opened: list[int] = []
        self.closed: list[int] = []
        self.notices: list[tuple[str, str, dict]] = []  # (room, key, values)
        self.sent: list[tuple[str, str, str, dict]] = []  # (ghost, room, type, content)
        self.redacted: list[tuple[str, str, str]] = []
        self.opening_notice = None
        self.ghost_devices = None

    async def open(self, conversation_id: int) -> bool:
        self.opened.append(conversation_id)
        return True

    async def close(self, conversation_id: int) -> None:
        self.closed.append(conversation_id)

    async def greet(self, conv) -> None:
        first = await self.opening_notice(conv) if self.opening_notice else None
        for side in conv.sides:
            if first is not None:
                self.notices.append((side.room_id, first[0], first[1]))
            self.notices.append((side.room_id, "chat_opened", {}))

    def ghost(self, ghost_id: str):
        return SimpleNamespace(mxid=ghost_id)

    async def notice(self, intent, room_id: str, key: str, *, cause, **values) -> str:
        self.notices.append((room_id, key, values))
        return f"$notice{len(self.notices)}"

    async def send(self, ghost_id: str, room_id: str, event_type: str, content: dict,
                   txn: str) -> str:
        self.sent.append((ghost_id, room_id, event_type, content))
        return f"$sent{len(self.sent)}"

    async def redact(self, ghost_id: str, room_id: str, event_id: str, txn: str) -> str:
        self.redacted.append((ghost_id, room_id, event_id))
        return f"$redaction{len(self.redacted)}"


class FakeWatch:
    """The watch room's work, recorded: opened (its room ID recorded as the real one is),
    closed with the goodbye the asker would read."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.opened: list[int] = []
        self.closed: list[tuple[int, tuple | None]] = []
        self.welcomed: list[int] = []
        self.memberships: dict[int, str] = {}  # what the homeserver would say of the asker
        self.deliver = True

    def name(self, number: int) -> str:
        return f"Stranger {number}"

    async def open(self, question_id: int) -> bool:
        q = await table.get(self.pool, question_id)
        if q.state != "matched" or q.watch_room_id is not None:
            return True
        self.opened.append(question_id)
        if not self.deliver:
            return False
        await table.set_watch_room(self.pool, question_id, f"!watch{question_id}")
        return True

    async def asker_membership(self, q) -> str | None:
        return self.memberships.get(q.id)

    async def welcome(self, q) -> None:
        self.welcomed.append(q.id)

    async def close(self, question_id: int, notice) -> list[str]:
        q = await table.get(self.pool, question_id)
        if q.closed_at is not None:
            return []
        self.closed.append((question_id, notice))
        await table.mark_closed(self.pool, question_id)
        return [q.ghost_1, q.ghost_2]


def make_questions(pool, config, world) -> Questions:
    questions = Questions(pool, world.pairing, world.portal, world.relayer, world.commands,
                          world.safety, world.background)
    questions.install()
    questions.watch = FakeWatch(pool)
    return questions


@pytest.fixture
async def world(pool, config):
    told: list[tuple[str, str, dict]] = []

    async def notify_dm(user_id: str, key: str, cause: str, **values: str) -> None:
        told.append((user_id, key, values))

    portal = FakePortal()
    background = Background()
    pairing = Pairing(pool, config, portal, notify_dm, background)
    safety = Safety(pool, pairing)
    posted: list[tuple[str, dict]] = []

    async def post(key: str, cause: str, **values: str) -> None:
        posted.append((key, values))

    safety.post = post
    limits = Limits(pool, config)
    w = SimpleNamespace(pairing=pairing, portal=portal, told=told, posted=posted,
                        background=background, safety=safety,
                        relayer=Relayer(pool, config, portal, limits),
                        commands=Commands(pool, pairing, limits, safety))
    w.questions = make_questions(pool, config, w)
    yield w
    await asyncio.wait_for(background.wait(timeout=10), timeout=15)


ASKER, D1, D2, OTHER = (f"@{n}:example.org" for n in ("asker", "dana", "dev", "olga"))


async def settle(world) -> None:
    await asyncio.wait_for(world.background.wait(timeout=10), timeout=15)


async def matched(pool, world, question_text: str = "Is a hot dog a sandwich?"):
    """The asker asks, D1 waits with !discuss, D2 with !questions on and !start: matched.
    Returns (question, conversation) once the discussers' rooms are 'made' and joined."""
    await agreed(pool, ASKER, D1, D2)
    q = world.questions
    assert (await say(world.commands, ASKER, f"!ask {question_text}"))[0] == "question_queued"
    assert (await say(world.commands, D1, "!discuss"))[0] == "discuss_queued"
    assert (await say(world.commands, D2, "!questions on"))[0] == "questions_on"
    assert (await say(world.commands, D2, "!start"))[0] == "queued"
    [conversation_id] = await q.sweep()
    await settle(world)
    for i, side in enumerate((await conversations.get(pool, conversation_id)).sides):
        await conversations.set_room(pool, conversation_id, side.side, f"!room{i}")
        await world.pairing.joined(conversation_id, side.side)
    question = await table.of_conversation(pool, conversation_id)
    # The discussion waits for the asker to be in the watch room.
    assert (await conversations.get(pool, conversation_id)).state == "opening"
    assert await q.on_watch_member(question.watch_room_id, ASKER, "join")
    assert q.watch.welcomed == [question.id]
    question = await table.of_conversation(pool, conversation_id)
    return question, await conversations.get(pool, conversation_id)


async def test_an_asker_and_two_discussers_make_a_conversation_and_a_watch(pool, world):
    question, conv = await matched(pool, world)
    assert conv.state == "active"
    # The two discussers talk to each other; the asker is in no conversation at all.
    assert [s.user_id for s in conv.sides] == [D1, D2]  # D1 waited longer: side 0
    assert await conversations.live_side_of(pool, ASKER) is None
    assert not await table.is_discusser(pool, D1) and not await queue.is_waiting(pool, D2)
    assert question.asker == ASKER and question.state == "matched"
    assert question.discuss_only == [True, False]
    # Fresh ghosts for the watch, none of them the discussers' own.
    ghosts = {question.ghost_1, question.ghost_2, *(s.ghost_id for s in conv.sides)}
    assert len(ghosts) == 4 and all(world.pairing.config.is_ghost(g) for g in ghosts)
    # The watch room is made before the discussion starts (at the latest, by the greeting).
    assert world.questions.watch.opened == [question.id]
    assert question.watch_room_id == f"!watch{question.id}"
    # Each discusser's first notice is the question, and it names nobody.
    for room in ("!room0", "!room1"):
        said = [(key, values) for r, key, values in world.portal.notices if r == room]
        assert said[0] == ("question_asked", {"question": "Is a hot dog a sandwich?"})
        assert ASKER not in repr(said)


async def test_what_crosses_is_mirrored_and_nothing_else(pool, world):
    question, conv = await matched(pool, world)
    d1, d2 = conv.sides
    hello = {"event_id": "$hello", "type": "m.room.message", "room_id": "!room0",
             "sender": D1, "content": {"msgtype": "m.text", "body": "hi @asker:example.org",
                                       "m.mentions": {"user_ids": [ASKER]}}}
    await world.relayer.relay(conv, d1, hello)
    await world.questions.mirror(conv, d1, hello)
    to_partner, to_watch = world.portal.sent
    assert to_partner[:2] == (d2.ghost_id, "!room1")
    # As Stranger 1, in the watch room, sanitised exactly as for the partner.
    assert to_watch[:2] == (question.ghost_1, question.watch_room_id)
    assert to_watch[3] == to_partner[3] and to_watch[3]["m.mentions"] == {}
    # Handled again (a crash before it was marked handled): not mirrored twice.
    await world.questions.mirror(conv, d1, hello)
    assert len(world.portal.sent) == 2
    # A reply by D2 to the copy they saw points at the watch room's copy, as Stranger 2.
    copy_in_room1 = await relayed.target_of(pool, "$hello")
    reply = {"event_id": "$reply", "type": "m.room.message", "room_id": "!room1",
             "sender": D2, "content": {"msgtype": "m.text", "body": "hello",
                                       "m.relates_to": {"m.in_reply_to": {
                                           "event_id": copy_in_room1}}}}
    await world.relayer.relay(conv, d2, reply)
    await world.questions.mirror(conv, d2, reply)
    watch_hello = await table.mirrored(pool, "$hello")
    ghost, room, _, content = world.portal.sent[-1]
    assert (ghost, room) == (question.ghost_2, question.watch_room_id)
    assert content["m.relates_to"]["m.in_reply_to"]["event_id"] == watch_hello
    # A redaction of the message takes back the watch room's copy too.
    redaction = {"event_id": "$gone", "type": "m.room.redaction", "room_id": "!room0",
                 "sender": D1, "redacts": "$hello", "content": {"redacts": "$hello"}}
    await world.relayer.relay(conv, d1, redaction)
    await world.questions.mirror(conv, d1, redaction)
    assert world.portal.redacted[-1] == (question.ghost_1, question.watch_room_id, watch_hello)
    # What the relay refused (a location) is not mirrored either: the sender was told.
    sent = len(world.portal.sent)
    location = {"event_id": "$where", "type": "m.room.message", "room_id": "!room0",
                "sender": D1, "content": {"msgtype": "m.location", "body": "home",
                                          "geo_uri": "geo:1,2"}}
    await world.relayer.relay(conv, d1, location)
    await world.questions.mirror(conv, d1, location)
    assert len(world.portal.sent) == sent
    assert world.portal.notices[-1][:2] == ("!room0", "refused_location")
    # A call is relayed but never mirrored (the asker's client would ring).
    invite = {"event_id": "$call", "type": "m.call.invite", "room_id": "!room0", "sender": D1,
              "content": {"call_id": "c1", "party_id": "p1", "version": "1", "lifetime": 60000,
                          "offer": {"type": "offer", "sdp": "v=0\r\n"}}}
    await world.relayer.relay(conv, d1, invite)
    await world.questions.mirror(conv, d1, invite)
    assert all(room != question.watch_room_id for _, room, _, _ in world.portal.sent[sent:])


async def test_the_asker_is_told_once_that_the_watch_is_read_only(pool, world):
    question, _ = await matched(pool, world)
    for n in range(3):
        event = {"event_id": f"$a{n}", "type": "m.room.message", "sender": ASKER,
                 "room_id": question.watch_room_id,
                 "content": {"msgtype": "m.text", "body": "can you hear me?"}}
        assert await world.questions.on_watch_event(event) is True
    told = [n for n in world.portal.notices if n[0] == question.watch_room_id]
    assert told == [(question.watch_room_id, "watch_read_only", {})]
    assert world.portal.sent == []  # nothing the asker wrote went anywhere
    # Another room is none of the watch's business.
    assert await world.questions.on_watch_event({**event, "room_id": "!room0"}) is False


async def test_a_discusser_leaving_ends_it_for_all_three(pool, world):
    question, conv = await matched(pool, world)
    await world.pairing.leave(conv.id, D1, datetime.now(timezone.utc))
    await settle(world)
    ended = await table.get(pool, question.id)
    assert ended.state == "ended" and ended.ended_by == D1
    assert world.questions.watch.closed == [
        (question.id, ("watch_partner_left", 1, {"name": "Stranger 1"}))]
    assert (await conversations.get(pool, conv.id)).state == "ended"
    # D1 came through !discuss: queued again as a discusser, never for a plain chat.
    assert await table.is_discusser(pool, D1) and not await queue.is_waiting(pool, D1)
    # D2, left behind, is told as usual (the portal's goodbye) and not queued.
    assert not await queue.is_waiting(pool, D2) and not await table.is_discusser(pool, D2)


async def test_next_from_the_chat_queue_goes_back_to_the_chat_queue(pool, world):
    question, conv = await matched(pool, world)
    assert (await say(world.commands, D2, "!next"))[0] == "requeued"
    await settle(world)
    assert await queue.is_waiting(pool, D2) and not await table.is_discusser(pool, D2)
    assert world.questions.watch.closed == [
        (question.id, ("watch_partner_left", 2, {"name": "Stranger 2"}))]


async def test_the_asker_leaving_ends_only_the_watch(pool, world):
    question, conv = await matched(pool, world)
    assert await world.questions.on_watch_member(question.watch_room_id, ASKER, "join")
    assert world.questions.watch.welcomed == [question.id]  # once
    assert await world.questions.on_watch_member(question.watch_room_id, ASKER, "leave")
    ended = await table.get(pool, question.id)
    assert (ended.state, ended.end_reason) == ("ended", ASKER_LEFT)
    assert world.questions.watch.closed == [(question.id, None)]
    assert (await conversations.get(pool, conv.id)).state == "active"
    # The discussers go on; nothing reaches the closed watch any more.
    message = {"event_id": "$later", "type": "m.room.message", "room_id": "!room0",
               "sender": D1, "content": {"msgtype": "m.text", "body": "still here"}}
    await world.relayer.relay(conv, conv.sides[0], message)
    await world.questions.mirror(conv, conv.sides[0], message)
    assert [room for _, room, _, _ in world.portal.sent] == ["!room1"]


async def test_the_askers_stop_withdraws_or_ends_the_watch(pool, world):
    await agreed(pool, ASKER)
    await say(world.commands, ASKER, "!ask Cats or dogs?")
    assert (await say(world.commands, ASKER, "!stop"))[0] == "question_withdrawn"
    assert await table.open_of(pool, ASKER) is None
    question, conv = await matched(pool, world)
    assert (await say(world.commands, ASKER, "!stop"))[0] == "watch_stopped"
    assert (await table.get(pool, question.id)).state == "ended"
    assert (await conversations.get(pool, conv.id)).state == "active"
    assert (await say(world.commands, ASKER, "!stop"))[0] == "nothing_to_stop"


async def test_a_discusser_reports_the_question(pool, world):
    question, conv = await matched(pool, world)
    key, _, _ = await say(world.commands, D2, "!report question trolling")
    assert key == "report_question_received"
    row = await pool.fetchrow("SELECT reporter, reported, reported_side, reason FROM reports")
    assert tuple(row) == (D2, ASKER, 2, "trolling")
    [(post_key, values)] = world.posted
    assert post_key == "mod_question_report"
    assert values["asker"] == ASKER and values["question"] == "Is a hot dog a sandwich?"
    await settle(world)
    assert (await conversations.get(pool, conv.id)).state == "ended"
    assert (await table.get(pool, question.id)).state == "ended"
    assert (await say(world.commands, D2, "!report question again"))[0] == "report_already"
    # Outside question mode there is no question to report.
    await agreed(pool, OTHER)
    assert (await say(world.commands, OTHER, "!report question x"))[0] == "report_no_question"


async def test_bad_input_is_answered_and_changes_nothing(pool, world):
    await agreed(pool, ASKER, D1)
    assert (await say(world.commands, ASKER, "!ask"))[0] == "ask_usage"
    assert (await say(world.commands, ASKER, "!ask    "))[0] == "ask_usage"
    key, text, _ = await say(world.commands, ASKER, "!ask " + "x" * 301)
    assert key == "question_too_long" and "300 characters" in text
    # Links are held back at the start of chats (the default): a question may not hold one.
    assert (await say(world.commands, ASKER, "!ask see https://example.com"))[0] == (
        "question_no_links")
    assert (await say(world.commands, D1, "!discuss now please"))[0] == "discuss_usage"
    assert (await say(world.commands, D1, "!questions maybe"))[0] == "questions_usage"
    assert await pool.fetchval("SELECT count(*) FROM questions") == 0
    assert not await table.is_discusser(pool, D1) and not await table.accepts(pool, D1)
    # Not agreed yet: nothing.
    assert (await say(world.commands, OTHER, "!ask why?"))[0] == "must_agree"
    assert (await say(world.commands, OTHER, "!discuss"))[0] == "must_agree"
    # Two open questions at once: no.
    assert (await say(world.commands, ASKER, "!ask " + "x" * 300))[0] == "question_queued"
    assert (await say(world.commands, ASKER, "!ask again?"))[0] == "already_asking"
    assert (await say(world.commands, D1, "!discuss"))[0] == "discuss_queued"
    assert (await say(world.commands, D1, "!discuss"))[0] == "already_discussing"


async def test_restricted_users_can_neither_ask_nor_discuss(pool, world):
    await agreed(pool, ASKER, D1)
    for user_id in (ASKER, D1):
        await sanctions.add(pool, user_id, "banned", "spam", None, "moderator", "@mod:x")
    key, text, _ = await say(world.commands, ASKER, "!ask why?")
    assert key == "restricted" and "spam" in text
    assert (await say(world.commands, D1, "!discuss"))[0] == "restricted"
    assert await pool.fetchval("SELECT count(*) FROM questions") == 0
    assert not await table.is_discusser(pool, D1)


async def test_a_restriction_stops_an_asker_and_a_waiting_discusser(pool, world):
    await agreed(pool, ASKER, D1)
    await say(world.commands, ASKER, "!ask why?")
    await say(world.commands, D1, "!discuss")
    assert set(await world.safety.enforcer.active_users()) >= {ASKER, D1}
    for user_id in (ASKER, D1):
        await world.safety.restrict(user_id, "suspended", "spam", 3600, "moderator", "@mod:x")
    assert await table.open_of(pool, ASKER) is None
    assert not await table.is_discusser(pool, D1)


async def test_discussers_are_paired_by_language_as_any_pair(pool, world):
    fr1, de, fr2 = "@fr1:example.org", "@de:example.org", "@fr2:example.org"
    await agreed(pool, ASKER, fr1, de, fr2)
    for user_id, lang in ((fr1, "fr"), (de, "de"), (fr2, "fr")):
        await say(world.commands, user_id, f"!lang {lang}")
        await say(world.commands, user_id, "!discuss")
    await say(world.commands, ASKER, "!ask Bonjour?")
    [conversation_id] = await world.questions.sweep()
    conv = await conversations.get(pool, conversation_id)
    assert {s.user_id for s in conv.sides} == {fr1, fr2}
    assert await table.is_discusser(pool, de)


async def test_the_asker_never_discusses_their_own_question(pool, world):
    await agreed(pool, ASKER, D1)
    await say(world.commands, ASKER, "!questions on")
    await say(world.commands, ASKER, "!ask Mine?")
    await say(world.commands, ASKER, "!start")
    await say(world.commands, D1, "!discuss")
    assert await world.questions.sweep() == []
    assert (await table.open_of(pool, ASKER)).state == "waiting"


async def test_a_restart_finishes_the_watch_exactly_once(pool, config, world):
    question, conv = await matched(pool, world)
    # A crash right after the discussers' conversation ended, before the watch was told:
    # the conversation is ended in the database, the question still matched.
    async with pool.acquire() as conn, conn.transaction():
        await conversations.end(conn, conv.id, "left", D2)
    assert (await table.get(pool, question.id)).state == "matched"
    # A new process (its own Questions) starts up, and its timer runs too.
    after = make_questions(pool, config, world)
    await after.resume()
    await after.resume()
    assert after.watch.closed == [
        (question.id, ("watch_partner_left", 2, {"name": "Stranger 2"}))]
    assert (await table.get(pool, question.id)).state == "ended"
    assert await table.unfinished(pool) == []


async def test_a_restart_makes_a_watch_room_not_made_yet(pool, world):
    await agreed(pool, ASKER, D1, D2)
    await say(world.commands, ASKER, "!ask Tea or coffee?")
    await say(world.commands, D1, "!discuss")
    await say(world.commands, D2, "!discuss")
    question_id = (await table.open_of(pool, ASKER)).id
    # Matched, then the process died before the watch room was made.
    assert await world.questions.matcher.match(question_id) is not None
    assert await table.unfinished(pool) == [question_id]
    await world.questions.resume()
    assert (await table.get(pool, question_id)).watch_room_id == f"!watch{question_id}"
    assert await table.unfinished(pool) == []


async def test_a_watch_that_cannot_be_delivered_ends_the_question_only(pool, world):
    await agreed(pool, ASKER, D1, D2)
    world.questions.watch.deliver = False
    await say(world.commands, ASKER, "!ask Tea or coffee?")
    await say(world.commands, D1, "!discuss")
    await say(world.commands, D2, "!discuss")
    [conversation_id] = await world.questions.sweep()
    await settle(world)
    q = await table.of_conversation(pool, conversation_id)
    assert (q.state, q.end_reason) == ("ended", "watch_failed")
    assert (await conversations.get(pool, conversation_id)).state == "opening"


async def test_a_questions_text_is_forgotten_after_the_grace_unless_reported(pool, world):
    question, conv = await matched(pool, world)
    await say(world.commands, D2, "!report question rude")
    await settle(world)
    await agreed(pool, OTHER)
    await say(world.commands, OTHER, "!ask Withdrawn soon?")
    await say(world.commands, OTHER, "!stop")
    await pool.execute("UPDATE questions SET ended_at = now() - interval '1 hour'")
    assert await table.forget_texts(pool, 300) == 1  # the reported one is held
    assert (await table.open_of(pool, OTHER)) is None
    texts = dict(await pool.fetch("SELECT asker, question FROM questions"))
    assert texts == {ASKER: "Is a hot dog a sandwich?", OTHER: ""}
    await pool.execute("UPDATE reports SET status = 'dismissed'")
    assert await table.forget_texts(pool, 300) == 1
    assert await pool.fetchval("SELECT question FROM questions WHERE asker = $1", ASKER) == ""


async def test_an_asker_who_never_joins_loses_the_watch_and_the_discussion_starts(pool, world):
    await agreed(pool, ASKER, D1, D2)
    await say(world.commands, ASKER, "!ask Tea or coffee?")
    await say(world.commands, D1, "!discuss")
    await say(world.commands, D2, "!discuss")
    [conversation_id] = await world.questions.sweep()
    await settle(world)
    for i in (0, 1):
        await conversations.set_room(pool, conversation_id, i, f"!room{i}")
        assert await world.pairing.joined(conversation_id, i) is False  # held for the asker
    assert world.portal.notices == []  # not greeted yet
    # The invite deadline passes (the invite timer's work).
    await world.pairing.expire(conversation_id)
    await settle(world)
    assert (await conversations.get(pool, conversation_id)).state == "active"
    q = await table.of_conversation(pool, conversation_id)
    assert (q.state, q.end_reason) == ("ended", "asker_no_show")
    assert world.questions.watch.closed == [(q.id, None)]
    assert [key for _, key, _ in world.portal.notices][:2] == ["question_asked", "chat_opened"]


async def test_a_join_the_bridge_missed_is_found_by_the_question_timer(pool, world):
    await agreed(pool, ASKER, D1, D2)
    await say(world.commands, ASKER, "!ask Tea or coffee?")
    await say(world.commands, D1, "!discuss")
    await say(world.commands, D2, "!discuss")
    [conversation_id] = await world.questions.sweep()
    await settle(world)
    for i in (0, 1):
        await conversations.set_room(pool, conversation_id, i, f"!room{i}")
        await world.pairing.joined(conversation_id, i)
    q = await table.of_conversation(pool, conversation_id)
    await world.questions.resume()  # the asker is only invited: nothing changes
    assert (await conversations.get(pool, conversation_id)).state == "opening"
    # The asker joined, but their join was handled before the room was recorded.
    world.questions.watch.memberships[q.id] = "join"
    await world.questions.resume()
    assert (await conversations.get(pool, conversation_id)).state == "active"
    assert world.questions.watch.welcomed == [q.id]
    assert await table.awaiting_asker(pool) == []


async def test_status_and_next_of_a_waiting_discusser_and_asker(pool, world):
    await agreed(pool, ASKER, D1)
    await say(world.commands, D1, "!discuss")
    key, text, _ = await say(world.commands, D1, "!status")
    assert key == "status_discussing" and "waiting for a question to discuss" in text
    # !next while only waiting for a question: nothing to skip, and no plain chat queued.
    assert (await say(world.commands, D1, "!next"))[0] == "already_discussing"
    assert not await queue.is_waiting(pool, D1) and await table.is_discusser(pool, D1)
    await say(world.commands, ASKER, "!ask Why?")
    assert (await say(world.commands, ASKER, "!status"))[0] == "status_asking"
    # !start switches a discusser to the chat queue.
    assert (await say(world.commands, D1, "!start"))[0] == "queued"
    assert await queue.is_waiting(pool, D1) and not await table.is_discusser(pool, D1)


# -- !forget in question mode ----------------------------------------------------------------

async def forget(world, user_id: str) -> str:
    assert (await say(world.commands, user_id, "!forget"))[0] == "forget_confirm"
    key, _, _ = await say(world.commands, user_id, "!forget confirm")
    await settle(world)
    return key


async def scrub_after_grace(pool, world) -> int:
    await pool.execute("UPDATE conversations SET ended_at = now() - interval '1 hour'")
    await pool.execute("UPDATE questions SET ended_at = now() - interval '1 hour'")
    return await world.commands.forgetting.scrub_due()


async def test_a_watching_asker_who_forgets_ends_the_watch_as_if_they_left(pool, world):
    question, conv = await matched(pool, world)
    assert await forget(world, ASKER) == "forgotten"
    ended = await table.get(pool, question.id)
    assert (ended.state, ended.end_reason, ended.ended_by) == ("ended", ASKER_FORGOT, None)
    # The ghosts leave the watch room, saying nothing; the discussers go on, told nothing.
    assert world.questions.watch.closed == [(question.id, None)]
    assert (await conversations.get(pool, conv.id)).state == "active"
    assert world.portal.closed == []
    # While the discussion lasts (and a grace after), the question keeps the real asker:
    # a discusser's report still names them.
    assert ended.asker == ASKER
    assert (await say(world.commands, D1, "!report question trolls"))[0] == (
        "report_question_received")
    assert world.posted[-1][1]["asker"] == ASKER
    await settle(world)
    # Over a grace ago: the stand-in, and nothing of the asker left but the report.
    assert await scrub_after_grace(pool, world) == 1
    q = await table.get(pool, question.id)
    assert q.asker.startswith("forgotten:")
    assert await pool.fetchval("SELECT count(*) FROM users WHERE user_id = $1", ASKER) == 0
    assert await pool.fetchval("SELECT count(*) FROM forget_pending") == 0


async def test_a_waiting_question_is_withdrawn_by_forget(pool, world):
    await agreed(pool, ASKER, D1)
    await say(world.commands, ASKER, "!ask Tea or coffee?")
    assert await forget(world, ASKER) == "forgotten"
    assert await pool.fetchval("SELECT count(*) FROM questions") == 0  # seen by nobody
    assert world.questions.watch.closed == []
    assert await pool.fetchval("SELECT count(*) FROM users WHERE user_id = $1", ASKER) == 0
    # No discusser is ever matched with it.
    await say(world.commands, D1, "!discuss")
    assert await world.questions.sweep() == []


async def test_a_watch_that_fails_to_close_on_forget_is_closed_by_the_timer(pool, world):
    question, conv = await matched(pool, world)
    close, failed = world.questions.watch.close, []

    async def fails_once(question_id, notice):
        if not failed:
            failed.append(question_id)
            raise ConnectionError("homeserver away")
        return await close(question_id, notice)

    world.questions.watch.close = fails_once
    assert await forget(world, ASKER) == "forgotten"
    assert failed == [question.id] and await table.unfinished(pool) == [question.id]
    # The real ID stays while the room is not closed, even past the grace.
    assert await scrub_after_grace(pool, world) == 0
    await world.questions.resume()  # the question timer (or the next start)
    assert world.questions.watch.closed == [(question.id, None)]
    assert await table.unfinished(pool) == []
    await say(world.commands, D1, "!stop")
    await settle(world)
    assert await scrub_after_grace(pool, world) == 1
    assert (await table.get(pool, question.id)).asker.startswith("forgotten:")


async def test_a_discusser_who_forgets_ends_the_chat_and_the_watch_says_goodbye(pool, world):
    question, conv = await matched(pool, world)
    assert await forget(world, D1) == "forgotten"
    ended = await conversations.get(pool, conv.id)
    assert (ended.state, ended.end_reason, ended.ended_by) == ("ended", "stop", D1)
    q = await table.get(pool, question.id)
    assert (q.state, q.ended_by) == ("ended", D1)
    assert world.questions.watch.closed == [
        (question.id, ("watch_partner_left", 1, {"name": "Stranger 1"}))]
    # Neither is queued again (D1 is forgotten; D2 was left behind, as after any stop).
    assert not await table.is_discusser(pool, D1) and not await queue.is_waiting(pool, D2)
    # D2 may still report D1 just after: the real ID reaches the moderators.
    assert (await say(world.commands, D2, "!report rude"))[0] == "report_received"
    assert world.posted[-1][1]["reported"] == D1
    assert await scrub_after_grace(pool, world) == 1
    q = await table.get(pool, question.id)
    assert q.ended_by.startswith("forgotten:") and q.asker == ASKER
    assert (await conversations.get(pool, conv.id)).sides[0].user_id == q.ended_by
