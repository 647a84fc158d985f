"""Queueing, matching, and ending conversations: each step one database transaction,
followed by the room work (portal) it implies."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Awaitable, Callable

import asyncpg

from bridge.background import Background
from bridge.config import Config
from bridge.dispatcher import is_transient
from bridge.matching import queue
from bridge.metrics import definitions as metrics
from bridge.matching.matchmaker import Matchmaker
from bridge.portal import (BLOCKED, FLOODED, INVITE_FAILED, INVITE_TIMEOUT, LEFT, NEXT, REPORTED,
                           RESTRICTED, STOP, Portal)
from bridge.store import conversations, recent_pairs
from bridge.store.conversations import Conversation

log = logging.getLogger("bridge.pairing")

Notify = Callable[[str, str, str], Awaitable[None]]  # (user_id, message key, cause)

# How much later than the goodbye a leave may be stamped and still count as made before the
# user could see it: the leave carries their homeserver's clock, the goodbye ours.
CLOCK_SKEW_ALLOWANCE = timedelta(seconds=2)
# Endings of the partner's doing; the other side was not queued again by them.
PARTNER_ENDINGS = frozenset({LEFT, NEXT, STOP, REPORTED, BLOCKED, RESTRICTED, FLOODED})


def left_to_rematch(conv: Conversation, user_id: str, left_at: datetime) -> bool:
    """A leave that found its conversation already ended by the partner: was it made before
    the user could have known (before the goodbye reached their room, give or take the
    clocks)? Then it is a leave to rematch, as if it had come first. A leave well after the
    goodbye is tidying up and queues nobody."""
    side = conv.side_of(user_id)
    if (conv.state != "ended" or side is None or side.joined_at is None
            or conv.end_reason not in PARTNER_ENDINGS
            or conv.ended_by != conv.partner_of(side).user_id):
        return False
    # Until the goodbye is sent the user cannot have seen the end.
    return side.goodbye_at is None or left_at <= side.goodbye_at + CLOCK_SKEW_ALLOWANCE


class Pairing:
    def __init__(self, pool: asyncpg.Pool, config: Config, portal: Portal,
                 notify_dm: Notify, background: Background) -> None:
        self.pool = pool
        self.config = config
        self.portal = portal
        self.notify_dm = notify_dm
        self.background = background
        self._deadline_changed = asyncio.Event()
        # Called with a conversation's ID when it becomes active or ends: events held in its
        # rooms until then can now be handled.
        self.on_change: Callable[[int], Awaitable[None]] | None = None
        self.matchmaker = Matchmaker(pool, config, self._matched)
        # Called (in the background) with a conversation's ID once it has ended: question
        # mode ends the asker's watch.
        self.on_end: list[Callable[[int], Awaitable[None]]] = []
        # Where a user goes when queued again after a conversation, within its transaction
        # (conn, conversation ID, user): True/False when it queued them (or could not),
        # None to leave them to the chat queue. (Question mode: discussers go back to
        # theirs.)
        self.requeue_as: Callable[[object, int, str], Awaitable[bool | None]] | None = None
        # Asked before a conversation whose sides have both joined becomes active (with the
        # conversation, and whether its invite deadline has passed): True holds it back for
        # now. (Question mode: until the asker is in the watch room, or the deadline.)
        self.activation_gates: list[Callable[[Conversation, bool], Awaitable[bool]]] = []
        # The invite timer's longest sleep: a match made by another process (several
        # processes) does not wake it, so it looks again this often.
        self.invite_timer_max_wait = 60.0

    @property
    def fallback_after(self) -> float:
        return self.config["bridge.matching.fallback_after"]

    async def enqueue(self, user_id: str) -> bool:
        """Queue the user (with their stored preferences) and look for their partner; False
        when they were already waiting or chatting."""
        return await self.matchmaker.arrive(user_id, self.fallback_after)

    async def preferences_changed(self, user_id: str) -> bool:
        """The user changed their interests or language: if waiting, match on the new ones
        (keeping their place in the queue). True when they were waiting."""
        if not await queue.refresh(self.pool, user_id, self.fallback_after):
            return False
        await self.matchmaker.claim(user_id)
        return True

    async def match(self) -> list[int]:
        """Look for partners for every waiter due a look (the match timer's work; also run
        at start-up for whatever a crash left undone)."""
        return await self.matchmaker.sweep()

    async def _matched(self, conversation_id: int) -> None:
        self.background.spawn(self.open(conversation_id), f"open {conversation_id}")
        self._deadline_changed.set()

    async def run_match_timer(self) -> None:
        await self.matchmaker.run_timer()

    async def open(self, conversation_id: int) -> None:
        delay = 0.5
        while True:
            try:
                delivered = await self.portal.open(conversation_id)
                break
            except Exception as e:
                if not is_transient(e):
                    log.exception("Conversation %d: opening failed", conversation_id)
                    delivered = False
                    break
                if delay > 16:
                    raise  # the invite deadline will end it
                # The homeserver or database is briefly away; opening is safe to repeat.
                log.warning("Conversation %d: opening interrupted (%s), retrying", conversation_id, e)
                await asyncio.sleep(delay)
                delay *= 2
        if not delivered:
            await self.expire(conversation_id, INVITE_FAILED)

    async def joined(self, conversation_id: int, side: int) -> bool:
        """A user joined their room; True when the conversation became active."""
        async with self.pool.acquire() as conn, conn.transaction():
            # Both joins may arrive at once (different rooms): serialise them on the
            # conversation so one of them sees the other.
            await conversations.lock(conn, conversation_id)
            both_in = await conversations.mark_joined(conn, conversation_id, side)
        if not both_in:
            return False
        return await self.activate(conversation_id)

    async def activate(self, conversation_id: int, deadline_passed: bool = False) -> bool:
        """Both are in: greet both rooms, THEN let relaying start, so the greeting comes
        before anything the first to join wrote while waiting."""
        conv = await conversations.get(self.pool, conversation_id)
        if conv is None or conv.state != "opening":
            return False
        for gate in self.activation_gates:
            if await gate(conv, deadline_passed):
                return False
        await self.portal.greet(conv)
        if not await conversations.activate(self.pool, conversation_id):
            return False
        if self.on_change:
            await self.on_change(conversation_id)
        return True

    async def end(self, conversation_id: int, reason: str, ended_by: str | None,
                  requeue: list[str] = ()) -> bool:
        """End a conversation (idempotent), queue `requeue` again, then clean up its rooms."""
        async with self.pool.acquire() as conn, conn.transaction():
            ended = await conversations.end(conn, conversation_id, reason, ended_by)
            if ended:
                await recent_pairs.remember(conn, conversation_id,
                                            self.config["bridge.matching.rematch_cooldown"])
                requeued = [user_id for user_id in requeue
                            if await self._requeue(conn, conversation_id, user_id)]
        if not ended:
            return False
        log.info("Conversation %d ended: %s", conversation_id, reason)
        metrics.conversation_ended(reason)
        if self.on_change:
            await self.on_change(conversation_id)
        self.background.spawn(self.portal.close(conversation_id), f"close {conversation_id}")
        for listener in self.on_end:
            self.background.spawn(listener(conversation_id), f"ended {conversation_id}")
        for user_id in requeued:
            await self.matchmaker.claim(user_id)
        return True

    async def _requeue(self, conn, conversation_id: int, user_id: str) -> bool:
        if self.requeue_as is not None:
            queued = await self.requeue_as(conn, conversation_id, user_id)
            if queued is not None:
                return queued
        return await queue.enqueue(conn, user_id, self.fallback_after)

    async def leave(self, conversation_id: int, user_id: str, left_at: datetime) -> None:
        """The user left their room (at `left_at`, by their homeserver): end the chat and look
        for someone new for them, also when the partner ended it in the same moment."""
        if (await self.end(conversation_id, LEFT, user_id, requeue=[user_id])
                or await self.requeue_late_leaver(conversation_id, user_id, left_at)):
            await self.notify_dm(user_id, "requeued", f"left {conversation_id}")

    async def requeue_late_leaver(self, conversation_id: int, user_id: str,
                                  left_at: datetime) -> bool:
        """The conversation had ended before the user's leave was handled: queue them again
        when they left to rematch (left_to_rematch). True when queued."""
        async with self.pool.acquire() as conn, conn.transaction():
            # Serialised with the ending and with the partner's own late leave.
            await conversations.lock(conn, conversation_id)
            conv = await conversations.get(conn, conversation_id)
            if conv is None or not left_to_rematch(conv, user_id, left_at):
                return False
            if not await self._requeue(conn, conversation_id, user_id):
                return False  # already waiting or chatting again
        log.info("Conversation %d: side left as it ended; queued again", conversation_id)
        await self.matchmaker.claim(user_id)
        return True

    async def expire(self, conversation_id: int, reason: str = INVITE_TIMEOUT) -> None:
        """An invite went unanswered: drop the absent side(s), queue the present one again."""
        conv = await conversations.get(self.pool, conversation_id)
        if conv is None or conv.state != "opening":
            return
        if all(s.joined_at for s in conv.sides):
            # Both made it in time after all.
            await self.activate(conversation_id, deadline_passed=True)
            return
        present = [s.user_id for s in conv.sides if s.joined_at is not None]
        if await self.end(conversation_id, reason, None, requeue=present):
            for side in conv.sides:
                if side.joined_at is None:
                    await self.notify_dm(side.user_id, "invite_expired", f"expired {conv.id}")

    async def run_invite_timer(self) -> None:
        """Expire unanswered invites when their deadline passes (deadlines live in the
        database, so they survive restarts)."""
        while True:
            self._deadline_changed.clear()
            try:
                for conversation_id in await conversations.expired_invites(self.pool):
                    await self.expire(conversation_id)
                delay = await conversations.seconds_to_next_deadline(self.pool)
            except Exception as e:
                if not is_transient(e):
                    log.exception("Invite timer failed")
                delay = 1.0
            try:
                await asyncio.wait_for(self._deadline_changed.wait(), timeout=min(
                    self.invite_timer_max_wait, 60.0 if delay is None else delay + 0.05))
            except asyncio.TimeoutError:
                pass

    async def resume(self, min_age: float = 0.0) -> None:
        """After a restart: finish opening and closing whatever a crash interrupted. With
        min_age, conversations matched more recently are left alone (several processes:
        another live one may be opening them right now; the invite timer ends what no one
        finishes)."""
        for conversation_id in await conversations.unfinished(self.pool, min_age):
            conv = await conversations.get(self.pool, conversation_id)
            if conv.state == "opening" and all(s.joined_at for s in conv.sides):
                await self.activate(conversation_id)
            elif conv.state == "opening":
                self.background.spawn(self.open(conversation_id), f"open {conversation_id}")
            elif conv.state == "ended":
                self.background.spawn(self.portal.close(conversation_id), f"close {conversation_id}")
        await self.match()
