"""Stopping those a new policy rule (or, at start-up, any source) restricts: their live chat
ends, they leave the queue, their DM says why. Whether a user is restricted at all is
restrictions.restriction_of, every source combined. `!forget` takes a user out of
everything the same way (withdraw), without the statement of reasons."""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Awaitable, Callable

import asyncpg

from bridge.matching import queue
from bridge.moderation.policy_lists import Rule
from bridge.moderation.restriction import Restriction
from bridge.moderation.restrictions import restriction_of
from bridge.moderation.statement import statement_values
from bridge.portal import RESTRICTED
from bridge.store import conversations

log = logging.getLogger("bridge.moderation")

Notify = Callable[..., Awaitable[None]]  # (user_id, message key, cause, **values)
# Why a user is taken out of everything, as the stoppers are told.
RESTRICTION, FORGET = "restriction", "forget"
# (user_id, why) -> True when something stopped.
Stopper = Callable[[str, str], Awaitable[bool]]


class Enforcer:
    """Stops restricted users: used when a policy rule starts to apply, and at start-up."""

    def __init__(self, pool: asyncpg.Pool, config, pairing, notify_dm: Notify) -> None:
        self.pool = pool
        self.config = config
        self.pairing = pairing
        self.notify_dm = notify_dm
        # Other ways of taking part (question mode: asking, waiting to discuss): who does,
        # and stopping a user there (True when something stopped).
        self.activities: list[Callable[[], Awaitable[list[str]]]] = []
        self.stoppers: list[Stopper] = []

    async def active_users(self) -> list[str]:
        """Everyone chatting or waiting (or asking, or waiting to discuss)."""
        users = set(await conversations.live_user_ids(self.pool)) | set(
            await queue.waiting_user_ids(self.pool))
        for activity in self.activities:
            users |= set(await activity())
        return sorted(users)

    async def stop(self, user_id: str, restriction: Restriction, cause: str,
                   tell_anyway: bool = False) -> bool:
        """End the user's live chat (their partner sees them disconnect, as after a leave)
        and take them out of the queue, telling them why (`tell_anyway`: also when there was
        nothing to stop, as for a moderator's new sanction). True when something stopped."""
        stopped, chatted = await self.withdraw(user_id, RESTRICTED, RESTRICTION)
        if stopped:
            log.info("Stopped a restricted user (%s, %s)", restriction.kind, restriction.source)
        if stopped or tell_anyway:
            key = "restricted_chat_ended" if chatted else "restricted"
            await self.notify_dm(user_id, key, f"restricted {cause}",
                                 **statement_values(restriction))
        return stopped

    async def withdraw(self, user_id: str, end_reason: str, why: str) -> tuple[bool, bool]:
        """Take the user out of everything: their live chat ends (`end_reason`; the partner
        sees them disconnect), they leave the queue, and each stopper lets them go (question
        mode: a waiting question withdrawn, a watch ended as if they had left it). Nothing
        is said to them. Returns (something stopped, a live chat was among it)."""
        stopped = False
        side = await conversations.live_side_of(self.pool, user_id)
        if side is not None:
            stopped = await self.pairing.end(side.conversation_id, end_reason, user_id)
        stopped = await queue.dequeue(self.pool, user_id) or stopped
        for stopper in self.stoppers:
            stopped = await stopper(user_id, why) or stopped
        return stopped, side is not None

    async def after_rule(self, rule: Rule) -> list[str]:
        """A policy rule now applies: stop everyone it bans. Returns who was stopped."""
        stopped = []
        for user_id in await self.active_users():
            if rule.applies_to(user_id) and await self.stop(user_id, rule.restriction(),
                                                            rule.event_id):
                stopped.append(user_id)
        return stopped

    async def enforce_all(self) -> list[str]:
        """Check everyone chatting or waiting (at start-up: the rules or the config may have
        changed while the bridge was down)."""
        stopped = []
        now = datetime.now(timezone.utc)
        for user_id in await self.active_users():
            restriction = await restriction_of(self.pool, self.config, user_id, now)
            if restriction is not None and await self.stop(user_id, restriction,
                                                           f"start {now.isoformat()}"):
                stopped.append(user_id)
        return stopped
