"""Applying restrictions: whether a user may chat at all, and stopping those a new rule
restricts (their live chat ends, they leave the queue, their DM says why).

restriction_for() is the one place that asks "is this user restricted?" on this branch; at
merge it becomes the combined check (moderation's restriction_of with these sources)."""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Awaitable, Callable

import asyncpg

from bridge import messages
from bridge.matching import queue
from bridge.moderation.policy_lists import Rule, policy_restriction
from bridge.moderation.restriction import Restriction, strictest
from bridge.moderation.servers import ServerLists, server_restriction
from bridge.portal import RESTRICTED
from bridge.store import conversations

log = logging.getLogger("bridge.moderation")

# conversations.end_reason of a chat ended because a user became restricted.


async def restriction_for(db, config, user_id: str,
                          now: datetime | None = None) -> Restriction | None:
    """What keeps this user from the bridge now, if anything: the config's server lists and
    the policy lists followed."""
    now = now or datetime.now(timezone.utc)
    return strictest([server_restriction(ServerLists.from_config(config), user_id),
                      await policy_restriction(db, config, user_id)], now)


def statement(restriction: Restriction, prefix: str) -> dict[str, str]:
    """The values of the `restricted` messages: what, why (when a reason was given), until."""
    def text(key: str, **values: str) -> str:
        return messages.text(key, prefix=prefix, **values)
    until = (text("restriction_forever") if restriction.until is None else
             text("restriction_until",
                  until=restriction.until.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")))
    reason = text("restriction_reason", reason=restriction.reason) if restriction.reason else ""
    return {"what": text(f"restriction_{restriction.kind}"), "reason": reason, "until": until}


Notify = Callable[..., Awaitable[None]]  # (user_id, message key, cause, **values)


class Enforcer:
    """Stops restricted users: used when a policy rule starts to apply, and at start-up."""

    def __init__(self, pool: asyncpg.Pool, config, pairing, notify_dm: Notify) -> None:
        self.pool = pool
        self.config = config
        self.pairing = pairing
        self.notify_dm = notify_dm

    async def active_users(self) -> list[str]:
        """Everyone chatting or waiting."""
        return sorted(set(await conversations.live_user_ids(self.pool))
                      | set(await queue.waiting_user_ids(self.pool)))

    async def stop(self, user_id: str, restriction: Restriction, cause: str) -> bool:
        """End the user's live chat (their partner sees them disconnect, as after a leave)
        and take them out of the queue. True when there was something to stop."""
        stopped = False
        side = await conversations.live_side_of(self.pool, user_id)
        if side is not None:
            stopped = await self.pairing.end(side.conversation_id, RESTRICTED, user_id)
        stopped = await queue.dequeue(self.pool, user_id) or stopped
        if stopped:
            log.info("Stopped a restricted user (%s, %s)", restriction.kind, restriction.source)
            key = "restricted_chat_ended" if side is not None else "restricted"
            await self.notify_dm(user_id, key, f"restricted {cause}",
                                 **statement(restriction, self.config["bridge.command_prefix"]))
        return stopped

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
            restriction = await restriction_for(self.pool, self.config, user_id, now)
            if restriction is not None and await self.stop(user_id, restriction,
                                                           f"start {now.isoformat()}"):
                stopped.append(user_id)
        return stopped
