"""Question mode's commands and the life of a question: asked, matched with two discussers
(whose conversation is an ordinary one), watched, ended.

Who ends what: either discusser ending their conversation (leaving, !next, !stop, a report,
a restriction) ends the watch too, the asker told "Stranger N has disconnected."; the asker
leaving the watch room (or sending !stop) ends only the watch, the discussers go on. Every
step is a guarded state change in PostgreSQL followed by room work that can be repeated, so
start-up and the question timer finish whatever a crash interrupted, and each notice is sent
once (its transaction ID derives from the question).
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Awaitable, Callable

import asyncpg

from bridge.i18n import messages
from bridge.background import Background
from bridge.dispatcher import is_transient
from bridge.matching import queue
from bridge.moderation import reports
from bridge.moderation.ratelimit import has_link
from bridge.moderation.restrictions import restriction_of
from bridge.moderation.statement import statement_values
from bridge.pairing import Pairing
from bridge.portal import REPORTED, Portal
from bridge.questions import table
from bridge.questions.matcher import QuestionMatcher
from bridge.questions.mirror import Mirror
from bridge.moderation.enforcement import RESTRICTION
from bridge.questions.rules import (ASKER_FORGOT, ASKER_LEFT, ASKER_NO_SHOW, ASKER_RESTRICTED,
                                    ASKER_STOPPED, WATCH_FAILED, watch_goodbye)
from bridge.questions.watch import Watch
from bridge.relay.relayer import Relayer
from bridge.replies import Reply
from bridge.store import conversations, users
from bridge.store.conversations import Conversation, Side

log = logging.getLogger("bridge.questions")

# The question timer also polls this often: matches need discussers who may have arrived
# through another bridge process, and unfinished room work is retried.
TIMER_SECONDS = 2.0
ON_WORDS, OFF_WORDS = frozenset({"on", "yes"}), frozenset({"off", "no"})

Command = Callable[[str, str], Awaitable["str | Reply"]]


class Questions:
    def __init__(self, pool: asyncpg.Pool, pairing: Pairing, portal: Portal, relayer: Relayer,
                 commands, safety, background: Background) -> None:
        self.pool = pool
        self.pairing = pairing
        self.config = pairing.config
        self.portal = portal
        self.commands = commands  # bridge.commands.Commands: its checks (agreed, cooldowns)
        self.safety = safety  # bridge.moderation.safety.Safety: reports reach moderators
        self.background = background
        self.matcher = QuestionMatcher(pool, self.config)
        self.watch = Watch(pool, self.config, portal)
        self.mirror_to_watch = Mirror(pool, portal, relayer)
        self.wake = asyncio.Event()
        # Told the ghosts of a closed watch, to drop caches (as Portal.on_closed).
        self.on_closed: Callable[[list[str], list[str]], None] | None = None

    def install(self) -> None:
        """Join the rest of the bridge: commands, the pairing's ends and requeues, the
        discussers' greeting, restrictions."""
        known = self.commands.table
        start, stop, report = known["start"], known["stop"], known.get("report")
        known.update(ask=self.ask, discuss=self.discuss, questions=self.setting,
                     start=self._start_wrapping(start), stop=self._stop_wrapping(stop),
                     next=self._next_wrapping(known["next"]),
                     status=self._status_wrapping(known["status"]))
        if report is not None:
            known["report"] = self._report_wrapping(report)
        self.pairing.requeue_as = self.requeue_as
        self.pairing.on_end.append(self.after_end)
        self.pairing.activation_gates.append(self.hold_for_asker)
        self.portal.opening_notice = self.opening_notice
        if self.safety is not None:
            self.safety.enforcer.stoppers.append(self.withdraw)
            self.safety.enforcer.activities.append(self.active_users)

    # -- commands -----------------------------------------------------------------------------

    async def _may_take_part(self, user_id: str) -> str | Reply | None:
        """Why the user may not ask or discuss now (not agreed, restricted, too fast)."""
        user = await users.get(self.pool, user_id)
        if user is None or not user.agreed:
            return "must_agree"
        restriction = await restriction_of(self.pool, self.config, user_id,
                                           datetime.now(timezone.utc))
        if restriction is not None:
            return Reply("restricted", statement_values(restriction))
        return None

    async def ask(self, user_id: str, args: str = "") -> str | Reply:
        """`!ask <question>`: two strangers discuss it while the asker watches."""
        if refused := await self._may_take_part(user_id):
            return refused
        question = args.strip()
        if not question:
            return "ask_usage"
        limit = self.config["bridge.questions.max_length"]
        if len(question) > limit:
            return Reply("question_too_long", {"max": str(limit)})
        if self.commands.limits.links.messages or self.commands.limits.links.seconds:
            # The question opens the discussers' chat, when links are held back.
            if has_link(question):
                return "question_no_links"
        if await table.open_of(self.pool, user_id) is not None:
            return "already_asking"
        if refused := await self.commands.too_soon(user_id):
            return refused  # asking counts as a start for the churn limit
        if await table.ask(self.pool, user_id, question) is None:
            return "already_asking"
        self.wake.set()
        return "question_queued"

    async def discuss(self, user_id: str, args: str = "") -> str | Reply:
        """`!discuss`: wait for a stranger's question, to discuss with another stranger."""
        if args:
            return "discuss_usage"
        if refused := await self._may_take_part(user_id):
            return refused
        if await conversations.live_side_of(self.pool, user_id) is not None:
            return "already_chatting"
        if await table.is_discusser(self.pool, user_id):
            return "already_discussing"
        if refused := await self.commands.too_soon(user_id):
            return refused
        async with self.pool.acquire() as conn, conn.transaction():
            await queue.dequeue(conn, user_id)  # from the chat queue to the discussers'
            if not await table.enqueue_discusser(conn, user_id):
                return "already_chatting"  # paired in this very moment
        self.wake.set()
        return "discuss_queued"

    async def setting(self, user_id: str, args: str = "") -> str:
        """`!questions on|off`: whether a question may come to the user after !start."""
        user = await users.get(self.pool, user_id)
        if user is None or not user.agreed:
            return "must_agree"
        word = args.strip().casefold()
        if not word:
            on = await table.accepts(self.pool, user_id)
            return "questions_show_on" if on else "questions_show_off"
        if word not in ON_WORDS | OFF_WORDS:
            return "questions_usage"
        await table.set_accept(self.pool, user_id, word in ON_WORDS)
        if word in ON_WORDS:
            self.wake.set()  # they may be waiting already
            return "questions_on"
        return "questions_off"

    def _start_wrapping(self, start: Command) -> Command:
        async def start_or_switch(user_id: str, args: str = "") -> str | Reply:
            # !start while waiting for a question: a plain chat (or a question, with
            # !questions on) from now on.
            await table.dequeue_discusser(self.pool, user_id)
            reply = await start(user_id, args)
            if await table.accepts(self.pool, user_id):
                self.wake.set()
            return reply
        return start_or_switch

    def _next_wrapping(self, next_: Command) -> Command:
        async def next_unless_discussing(user_id: str, args: str = "") -> str | Reply:
            # Waiting for a question and in no chat: !next has nothing to skip (and must not
            # queue them for a plain chat as well).
            if (await table.is_discusser(self.pool, user_id)
                    and await conversations.live_side_of(self.pool, user_id) is None):
                return "already_discussing"
            return await next_(user_id, args)
        return next_unless_discussing

    def _status_wrapping(self, status: Command) -> Command:
        async def status_with_questions(user_id: str, args: str = "") -> str | Reply:
            reply = await status(user_id, args)
            if not isinstance(reply, Reply) or reply.key != "status_idle":
                return reply
            now = datetime.now(timezone.utc)
            since = await table.discusser_since(self.pool, user_id)
            if since is not None:
                return Reply("status_discussing", {
                    **reply.values, "duration": messages.duration((now - since).total_seconds())})
            q = await table.open_of(self.pool, user_id)
            if q is not None and q.state == "waiting":
                return Reply("status_asking", {
                    **reply.values,
                    "duration": messages.duration((now - q.asked_at).total_seconds())})
            return reply
        return status_with_questions

    def _stop_wrapping(self, stop: Command) -> Command:
        async def stop_everything(user_id: str, args: str = "") -> str | Reply:
            """!stop also withdraws the user's question (or ends its watch) and takes them
            out of the discussers' queue."""
            asked = await self.stop_asking(user_id, ASKER_STOPPED, user_id)
            discussing = await table.dequeue_discusser(self.pool, user_id)
            reply = await stop(user_id, args)
            if reply != "nothing_to_stop":
                return reply
            if asked is not None:
                return asked
            return "stopped_discussing" if discussing else reply
        return stop_everything

    def _report_wrapping(self, report: Command) -> Command:
        async def report_partner_or_question(user_id: str, args: str = "") -> str | Reply:
            word, _, reason = args.partition(" ")
            if word.casefold() != "question":
                return await report(user_id, args)
            if (refused := await self._may_take_part(user_id)) == "must_agree":
                return refused
            return await self.report_question(user_id, reason.strip())
        return report_partner_or_question

    async def report_question(self, user_id: str, reason: str) -> Reply:
        """A discusser reports the question: the moderators get it with the asker's real
        ID; the discussion ends (as after any report)."""
        found = await self.safety.recent_conversation(user_id)
        q = await table.of_conversation(self.pool, found[0].id) if found else None
        if q is None:
            return Reply("report_no_question")
        conv = found[0]
        report = await reports.file(self.pool, conv.id, user_id, q.asker, 2, reason[:500])
        if report is None:
            return Reply("report_already")
        await self.pairing.end(conv.id, REPORTED, user_id)
        await self.safety.to_moderators(
            "mod_question_report", f"report {report.id}", id=str(report.id), reporter=user_id,
            asker=q.asker, question=q.question,
            reason=report.reason or messages.phrase("no_reason_given"))
        return Reply("report_question_received")

    # -- the asker ----------------------------------------------------------------------------

    async def stop_asking(self, user_id: str, reason: str, ended_by: str | None) -> str | None:
        """Withdraw the user's waiting question or end their watch: the reply's key, or None
        when they had no open question."""
        q = await table.open_of(self.pool, user_id)
        if q is None or not await table.end(self.pool, q.id, reason, ended_by):
            return None
        if q.state == "waiting":
            return "question_withdrawn"
        try:
            await self.close(q.id)
        except Exception as e:
            if not is_transient(e):
                raise
            # Ended in the database: the question timer closes the room (table.unfinished).
            log.warning("Question %d: closing the watch failed, retried later: %s", q.id, e)
        return "watch_stopped"

    async def on_watch_event(self, event: dict) -> bool:
        """An event in a watch room (True) or not (False). The asker's own are answered,
        once per watch, with the room being read-only; nothing in it is relayed."""
        q = await table.by_watch_room(self.pool, event["room_id"])
        if q is None:
            return False
        if event["sender"] == q.asker and q.state == "matched" and event["type"] in (
                "m.room.message", "m.room.encrypted", "m.sticker"):
            if await table.tell_read_only(self.pool, q.id):
                await self.portal.notice(self.portal.ghost(q.ghost_1), q.watch_room_id,
                                         "watch_read_only", cause=q.id)
        return True

    async def on_watch_member(self, room_id: str, target: str, membership: str | None) -> bool:
        """A membership in a watch room (True) or not (False): the asker joining, or leaving
        (which ends the watch only)."""
        q = await table.by_watch_room(self.pool, room_id)
        if q is None:
            return False
        if target == q.asker:
            if membership == "join" and q.state == "matched" and q.joined_at is None:
                await self.watch.welcome(q)
                await table.mark_joined(self.pool, q.id)
                # The discussion may start now, if the discussers are in already.
                conv = await conversations.get(self.pool, q.conversation_id)
                if conv.state == "opening" and all(s.joined_at for s in conv.sides):
                    await self.pairing.activate(conv.id)
            elif membership in ("leave", "ban") and await table.end(self.pool, q.id,
                                                                     ASKER_LEFT, q.asker):
                log.info("Question %d: the asker left the watch", q.id)
                await self.close(q.id)
        return True

    # -- the discussers -----------------------------------------------------------------------

    async def opening_notice(self, conv: Conversation) -> tuple[str, dict[str, str]] | None:
        """The discussers' first notice is the question (never who asked)."""
        q = await table.of_conversation(self.pool, conv.id)
        return None if q is None else ("question_asked", {"question": q.question})

    async def hold_for_asker(self, conv: Conversation, deadline_passed: bool) -> bool:
        """The discussion starts once the asker is in the watch room, so they see it from
        its first word (True: not yet). An asker who has not joined by the invite deadline
        loses the watch; the discussers start all the same."""
        q = await table.of_conversation(self.pool, conv.id)
        if q is None or q.state != "matched" or q.joined_at is not None:
            return False
        if not deadline_passed:
            return True
        if await table.end(self.pool, q.id, ASKER_NO_SHOW, None):
            log.info("Question %d: the asker did not join the watch in time", q.id)
            await self.close(q.id)
        return False

    async def mirror(self, conv: Conversation, side: Side, event: dict) -> None:
        """After the relay: a discusser's event copied into the asker's watch room."""
        q = await table.of_conversation(self.pool, conv.id)
        if q is not None:
            await self.mirror_to_watch.mirror(q, conv, side, event)

    async def requeue_as(self, conn, conversation_id: int, user_id: str) -> bool | None:
        """A discusser who came through !discuss goes back to the discussers' queue after
        !next or a leave (True when queued); None for anyone else (the chat queue)."""
        row = await conn.fetchrow(
            """SELECT q.discuss_only[s.side + 1] AS discuss_only
               FROM questions q JOIN conversation_sides s
                 ON s.conversation_id = q.conversation_id AND s.user_id = $2
               WHERE q.conversation_id = $1""", conversation_id, user_id)
        if row is None or not row["discuss_only"]:
            return None
        return await table.enqueue_discusser(conn, user_id)

    async def after_end(self, conversation_id: int) -> None:
        """The discussers' conversation ended: so does the watch. (Someone may also be
        back in a queue: look for discussers.)"""
        self.wake.set()
        q = await table.of_conversation(self.pool, conversation_id)
        if q is None or q.state != "matched":
            return
        conv = await conversations.get(self.pool, conversation_id)
        if await table.end(self.pool, q.id, conv.end_reason or "ended", conv.ended_by):
            log.info("Question %d: the discussion ended (%s)", q.id, conv.end_reason)
        await self.close(q.id)

    # -- matching, opening, closing -----------------------------------------------------------

    async def sweep(self) -> list[int]:
        """Match every waiting question that can be, oldest first; the new conversations."""
        created = []
        for question_id in await table.waiting_ids(self.pool):
            conversation_id = await self.matcher.match(question_id)
            if conversation_id is None:
                continue
            created.append(conversation_id)
            self.background.spawn(self.open_watch(question_id), f"watch {question_id}")
            await self.pairing.matchmaker.on_matched(conversation_id)  # the usual opening
        return created

    async def open_watch(self, question_id: int) -> None:
        if not await self.watch.open(question_id):
            if await table.end(self.pool, question_id, WATCH_FAILED, None):
                await self.close(question_id)

    async def close(self, question_id: int) -> None:
        q = await table.get(self.pool, question_id)
        if q is None or q.state != "ended":
            return
        ghosts = await self.watch.close(question_id, await self._goodbye(q))
        if ghosts and self.on_closed is not None:
            self.on_closed([q.watch_room_id] if q.watch_room_id else [], ghosts)

    async def _goodbye(self, q: table.Question) -> tuple[str, int, dict[str, str]] | None:
        """What the asker is told as the watch ends (rules.watch_goodbye)."""
        conv = await conversations.get(self.pool, q.conversation_id) if q.conversation_id else None
        side = conv.side_of(q.ended_by) if conv and q.ended_by else None
        number = None if side is None else side.side
        return watch_goodbye(q.end_reason, number,
                             self.watch.name(1 if number is None else number + 1))

    async def resume(self) -> None:
        """Start-up and the timer: carry on with whatever a crash (or a failure) left
        unfinished: watch rooms to make, watches whose discussion ended, rooms to close."""
        for question_id in await table.unfinished(self.pool):
            q = await table.get(self.pool, question_id)
            if q.state == "ended":
                await self.close(q.id)
                continue
            conv = (await conversations.get(self.pool, q.conversation_id)
                    if q.conversation_id else None)
            if conv is None:
                await self._orphaned(q)
            elif conv.state == "ended":
                await self.after_end(conv.id)
            elif q.watch_room_id is None:
                await self.open_watch(q.id)
        for question_id in await table.awaiting_asker(self.pool):
            # A join handled before its room was recorded (or never delivered) must not
            # hold the discussion back until the deadline.
            q = await table.get(self.pool, question_id)
            if await self.watch.asker_membership(q) == "join":
                await self.on_watch_member(q.watch_room_id, q.asker, "join")

    async def _orphaned(self, q: table.Question) -> None:
        if await table.end(self.pool, q.id, "ended", None):
            await self.close(q.id)

    async def run_timer(self) -> None:
        while True:
            self.wake.clear()
            try:
                await self.sweep()
                await self.resume()
                await table.forget_texts(self.pool,
                                         self.config["bridge.moderation.evidence_grace"])
            except Exception as e:
                if not is_transient(e):
                    log.exception("Question timer failed")
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=TIMER_SECONDS)
            except asyncio.TimeoutError:
                pass

    # -- restrictions -------------------------------------------------------------------------

    async def active_users(self) -> list[str]:
        """Askers with an open question, and discussers waiting."""
        rows = await self.pool.fetch(
            """SELECT asker AS user_id FROM questions WHERE state <> 'ended'
               UNION SELECT user_id FROM discussers""")
        return [r["user_id"] for r in rows]

    async def withdraw(self, user_id: str, why: str) -> bool:
        """A restricted (or forgotten: enforcement.FORGET) user asks no more and discusses
        no more: a waiting question is withdrawn, a watch ends as if they had left it (the
        discussers go on, told nothing). Their discussion, an ordinary conversation, is
        ended by the enforcer itself (the watch then gets the usual goodbye)."""
        reason = ASKER_RESTRICTED if why == RESTRICTION else ASKER_FORGOT
        asked = await self.stop_asking(user_id, reason, None)
        return await table.dequeue_discusser(self.pool, user_id) or asked is not None
