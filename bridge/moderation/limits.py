"""Rate limits with their state: message and invite buckets in this process's memory (with
several bridge processes each counts on its own), and the cooldowns on starting a chat (churn,
after a flood) in PostgreSQL, so a restart does not lift them. The arithmetic is ratelimit.py."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import asyncpg

from bridge.moderation import ratelimit
from bridge.moderation.ratelimit import (Bucket, BucketState, ChurnLimits, ChurnState, Flood,
                                         FloodState, LinkHold)
from bridge.store.conversations import Conversation

# Past this many users tracked, idle ones (full buckets: nothing to remember) are forgotten.
PRUNE_AT = 10_000


class Limits:
    def __init__(self, pool: asyncpg.Pool, config) -> None:
        self.pool = pool
        r = "bridge.rate_limits."
        self.messages = Bucket(config[r + "messages.burst"], config[r + "messages.per_minute"] / 60)
        self.tolerance = config[r + "messages.flood_tolerance"]
        self.flood_cooldown = timedelta(seconds=config[r + "flood_cooldown"])
        self.invites = Bucket(config[r + "invites.burst"], config[r + "invites.per_hour"] / 3600)
        self.churn = ChurnLimits(config[r + "churn.free"], config[r + "churn.window"],
                                 config[r + "churn.cooldown"], config[r + "churn.max_cooldown"],
                                 config[r + "churn.forgive_after"])
        self.links = LinkHold(config["bridge.links.hold_messages"],
                              config["bridge.links.hold_seconds"])
        self._floods: dict[str, FloodState] = {}
        self._invites: dict[str, BucketState] = {}

    # -- in memory ----------------------------------------------------------------------------

    def message(self, user_id: str, now: float | None = None) -> Flood:
        """A chat message from this user: relay it, or not (and what then)."""
        now = time.monotonic() if now is None else now
        verdict, self._floods[user_id] = ratelimit.on_message(
            self.messages, self.tolerance, self._floods.get(user_id, FloodState()), now)
        if len(self._floods) > PRUNE_AT:
            self._floods = {u: s for u, s in self._floods.items()
                            if s.dropped or s.bucket is None
                            or not ratelimit.is_full(self.messages, s.bucket, now)}
        return verdict

    def invite(self, user_id: str, now: float | None = None) -> bool:
        """The user invited the bot (a new DM): True when within the limit."""
        now = time.monotonic() if now is None else now
        allowed, self._invites[user_id] = ratelimit.take(self.invites,
                                                         self._invites.get(user_id), now)
        if len(self._invites) > PRUNE_AT:
            self._invites = {u: s for u, s in self._invites.items()
                             if not ratelimit.is_full(self.invites, s, now)}
        return allowed

    # -- in the database ----------------------------------------------------------------------

    async def start(self, user_id: str, now: datetime | None = None) -> tuple[str, datetime] | None:
        """The user asks for a new partner (!start, !next). None when they may; else (why:
        'flood_cooldown' or 'too_fast', until when). Allowed starts count towards the churn
        limit."""
        now = now or datetime.now(timezone.utc)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT window_start, starts, level, blocked_until, flood_until
                     FROM start_limits WHERE user_id = $1 FOR UPDATE""", user_id)
            if row is not None and row["flood_until"] is not None and now < row["flood_until"]:
                return "flood_cooldown", row["flood_until"]
            state = ChurnState(row["window_start"], row["starts"], row["level"],
                               row["blocked_until"]) if row else ChurnState()
            until, new = ratelimit.on_start(self.churn, state, now)
            if new != state:
                await conn.execute(
                    """INSERT INTO start_limits (user_id, window_start, starts, level,
                                                 blocked_until)
                       VALUES ($1, $2, $3, $4, $5)
                       ON CONFLICT (user_id) DO UPDATE SET window_start = $2, starts = $3,
                         level = $4, blocked_until = $5""",
                    user_id, new.window_start, new.count, new.level, new.blocked_until)
        return None if until is None else ("too_fast", until)

    async def flooded(self, user_id: str, now: datetime | None = None) -> datetime:
        """The user's chat ended for flooding: no !start until the returned time."""
        until = (now or datetime.now(timezone.utc)) + self.flood_cooldown
        await self.pool.execute(
            """INSERT INTO start_limits (user_id, flood_until) VALUES ($1, $2)
               ON CONFLICT (user_id) DO UPDATE SET flood_until = $2""", user_id, until)
        return until

    async def link_wait(self, conv: Conversation,
                        now: datetime | None = None) -> tuple[int, float] | None:
        """None when links may pass in this conversation; else (messages, seconds) to go."""
        if self.links.messages == 0 and self.links.seconds == 0:
            return None
        now = now or datetime.now(timezone.utc)
        joined = [s.joined_at for s in conv.sides if s.joined_at is not None]
        started = max(joined) if joined else now
        relayed = await self.pool.fetchval(
            """SELECT count(*) FROM (SELECT 1 FROM relayed WHERE conversation_id = $1
                                     LIMIT $2) AS enough""", conv.id, self.links.messages)
        return ratelimit.link_wait(self.links, relayed, (now - started).total_seconds())
