"""Claiming partners: one short transaction per claim, safe with several bridge processes.

A newcomer is first offered the longest-waiting partner who will have them, in one
transaction (the usual case under load: no queueing at all), shared with the newcomers who
arrived in the same moment (bridge.matching.batcher), each served in turn. Otherwise they join the queue
and a claim is made for them; the match timer claims again when something changes for a
waiter by itself (their preference window closes, a cooldown with someone waiting expires).
Because every newcomer looks for their partner, a queue left by claims holds nobody who
could be paired; the policy (bridge.matching) gives the partner.

Why no match is ever missed: a claim that finds nobody but skipped a locked candidate tries
again shortly; one that finds nobody and skipped nothing proves that every compatible
waiter who joins later will see this one when they look.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Awaitable, Callable

import asyncpg

from bridge.config import Config
from bridge.dispatcher import is_transient
from bridge.matching import policy
from bridge.matching import claim, queue
from bridge.matching.batcher import Batcher
from bridge.metrics import definitions as metrics
from bridge.store import conversations, recent_pairs

log = logging.getLogger("bridge.matching.matchmaker")

# How long a claim keeps retrying while other claims hold its candidates, before leaving
# the waiter to the timer.
CLAIM_PATIENCE_SECONDS = 2.0
GIVE_UP_RECHECK_SECONDS = 0.5
SWEEP_BATCH = 200
# The timer also polls this often, for deadlines set by other bridge processes.
TIMER_POLL_SECONDS = 5.0
# Newcomers paired in one transaction at most, and such transactions running at once per
# process (one in the database while the next gathers).
ARRIVAL_BATCH = 64
ARRIVAL_BATCHES = 2


class _Retry(Exception):
    """This attempt saw a state other claims are changing; roll back and try again."""


class Matchmaker:
    def __init__(self, pool: asyncpg.Pool, config: Config,
                 on_matched: Callable[[int], Awaitable[None]]) -> None:
        self.pool = pool
        self.config = config
        self.on_matched = on_matched
        self.wake = asyncio.Event()  # an earlier check time was set: the timer recomputes
        # Claims that found their only candidates locked by another claim (and tried again):
        # how often claims meet, here or in another process sharing the database.
        self.contended = 0
        self._timer_runs_at = 0.0  # loop time of the timer's next run (0: not running)
        # Newcomers arriving while others are being paired are paired together next, in one
        # transaction (its round trips and commit cost more than a match's own work).
        self._arrivals: Batcher[tuple[str, float], int | bool | None] = Batcher(
            self._pair_newcomers, max_size=ARRIVAL_BATCH, concurrency=ARRIVAL_BATCHES)

    async def arrive(self, user_id: str, fallback_after: float) -> bool:
        """A user starts looking: pair them at once with the longest-waiting partner who
        will have them, or queue them and claim. False when they were already waiting or
        chatting. (The first try is only a short cut, one transaction for the usual match;
        when it finds nobody free, queueing and claiming decide, with their guarantees.)"""
        arrived = time.monotonic()
        outcome = await self._arrivals.submit((user_id, fallback_after))
        if outcome is not None:
            if outcome is not False:  # paired on arrival, never queued
                metrics.waited(time.monotonic() - arrived)
            return outcome is not False  # a conversation's ID, or False: an unknown user
        if not await queue.enqueue(self.pool, user_id, fallback_after):
            return False
        await self.claim(user_id)
        return True

    async def _pair_newcomers(self, arrivals: list[tuple[str, float]]) -> list[int | bool | None]:
        """The short cut for a batch of arrivals, in one transaction: for each in turn, the
        longest-waiting partner who will have them (as if they came one after the other).
        Per arrival: the new conversation's ID, None when they take the queue's way, False
        for an unknown user."""
        outcomes: list[int | bool | None] = [None] * len(arrivals)
        first: dict[str, int] = {}
        for i, (user_id, _) in enumerate(arrivals):
            first.setdefault(user_id, i)  # (the same user twice: the queue tells them apart)
        pairs: list[tuple[policy.Waiter, policy.Waiter]] = []
        created: list[int] = []
        waited: dict[str, float] = {}  # partners taken from the queue: how long they waited
        async with self.pool.acquire() as conn:
            try:
                async with claim.transaction(conn):
                    known = await claim.lock_newcomers(conn, list(first))
                    newcomers = []
                    for user_id, i in first.items():
                        me = known.get(user_id)
                        if me is None:
                            outcomes[i] = False
                        elif not me.has_preferences or arrivals[i][1] <= 0:
                            newcomers.append(policy.Waiter(user_id, me.seq, me.tags, me.lang,
                                                             True))
                        else:
                            newcomers.append(me)
                    pairs = [(me, partner) for me, partner in
                             await self._find_partners(conn, newcomers) if partner is not None]
                    if pairs:
                        created, waited = await conversations.create_from_queue(
                            conn, [self._conversation(me, partner) for me, partner in pairs],
                            self.config["bridge.invite_timeout"])
            except asyncpg.UniqueViolationError:
                # One of them was just paired by another process, or a partner's row was
                # stale: queueing sorts out which, for each.
                created = []
        for (me, partner), conversation_id in zip(pairs, created):
            outcomes[first[me.user_id]] = conversation_id
            log.info("Matched conversation %d", conversation_id)
            metrics.matched(*(waited[u] for u in (me.user_id, partner.user_id) if u in waited))
            # Here rather than by each caller, so a caller that gave up still has its match
            # opened; one failing must not keep the batch's other matches from opening.
            try:
                await self.on_matched(conversation_id)
            except Exception:
                log.exception("Conversation %d: starting to open it failed", conversation_id)
        for user_id, i in first.items():  # the same unknown user twice: False for both
            if outcomes[i] is False:
                for j, (other, _) in enumerate(arrivals):
                    if other == user_id:
                        outcomes[j] = False
        return outcomes

    @staticmethod
    async def _find_partners(conn, newcomers: list[policy.Waiter]
                             ) -> list[tuple[policy.Waiter, policy.Waiter | None]]:
        """Each newcomer's partner (or None), locked, as if they had looked one after the
        other: a look-up for all, again for those whose find an earlier one took."""
        decided: list[tuple[policy.Waiter, policy.Waiter | None]] = []
        taken: set[str] = set()
        pending = list(zip(newcomers, await claim.lock_partners(conn, newcomers, taken)))
        while pending:
            done, pending, again = policy.accept_in_order(pending, taken)
            decided += done
            if again:
                found = await claim.lock_partners(conn, [pending[i][0] for i in again], taken)
                for i, partner in zip(again, found):
                    pending[i] = (pending[i][0], partner)
        return decided

    async def claim(self, user_id: str) -> int | None:
        """Pair the waiter with their partner now; the new conversation's ID, or None when
        there is nobody for them (or another claim holds them and will decide)."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + CLAIM_PATIENCE_SECONDS
        backoff = 0.002
        while True:
            try:
                created = await self._attempt(user_id)
            except _Retry:
                if loop.time() >= give_up_at:
                    log.warning("Claim for a waiter kept meeting contention; the timer retries")
                    await claim.check_soon(self.pool, user_id, GIVE_UP_RECHECK_SECONDS)
                    self._check_in(GIVE_UP_RECHECK_SECONDS)
                    return None
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 0.05)
                continue
            if created is None:
                return None
            conversation_id, waited = created
            log.info("Matched conversation %d", conversation_id)
            metrics.matched(*waited.values())
            await self.on_matched(conversation_id)
            return conversation_id

    async def _attempt(self, user_id: str) -> tuple[int, dict[str, float]] | None:
        partner = None
        async with self.pool.acquire() as conn:
            try:
                async with claim.transaction(conn):
                    locked = await claim.lock_self(conn, user_id)
                    if locked is None:
                        return None
                    me, window_closed = locked
                    if window_closed:
                        await claim.widen(conn, user_id)
                        me = policy.Waiter(me.user_id, me.seq, me.tags, me.lang, True)
                    probes = policy.probes(me)
                    partner = await claim.lock_partner(conn, me, probes)
                    if partner is None:
                        if await claim.any_candidate(conn, me, probes):
                            self.contended += 1
                            raise _Retry
                        self._check_in(await claim.settle(conn, user_id))
                        return None
                    # The partner's row is its latest version: re-check it under the lock.
                    if not policy.compatible(me, partner):
                        raise _Retry
                    return await self._create(conn, me, partner)
            except asyncpg.UniqueViolationError:
                # One of them is in a live conversation already: their waiting row is stale.
                await claim.drop_stale(conn, [user_id] + ([partner.user_id] if partner else []))
                raise _Retry

    def _check_in(self, seconds: float | None) -> None:
        """A waiter is due a look in `seconds`: wake the timer if that is before its next
        run (not on every settled claim: under load that would keep it spinning)."""
        loop = asyncio.get_running_loop()
        if seconds is not None and loop.time() + seconds < self._timer_runs_at - 0.01:
            self.wake.set()

    def _conversation(self, me: policy.Waiter, partner: policy.Waiter
                      ) -> conversations.NewConversation:
        # Side 0 is whoever has waited longer.
        first, second = sorted((me, partner), key=lambda w: w.seq)
        return conversations.NewConversation(
            first.user_id, second.user_id, self.config.ghost_mxid(), self.config.ghost_mxid(),
            policy.shared_tags(first, second),
            (policy.unmet(first, second), policy.unmet(second, first)))

    async def _create(self, conn, me: policy.Waiter, partner: policy.Waiter
                      ) -> tuple[int, dict[str, float]]:
        """The new conversation's ID, and how long each of the two had waited."""
        [conversation_id], waited = await conversations.create_from_queue(
            conn, [self._conversation(me, partner)], self.config["bridge.invite_timeout"])
        return conversation_id, waited

    async def sweep(self) -> list[int]:
        """Claim for every waiter due a look, longest-waiting first."""
        created: list[int] = []
        seen: set[str] = set()
        while True:
            due = [u for u in await claim.due(self.pool, SWEEP_BATCH) if u not in seen]
            if not due:
                return created
            for user_id in due:
                seen.add(user_id)
                conversation_id = await self.claim(user_id)
                if conversation_id is not None:
                    created.append(conversation_id)

    async def run_timer(self) -> None:
        """Release expired cooldowns and claim for due waiters, when their time comes (the
        times live in the database, so they survive restarts)."""
        while True:
            self.wake.clear()
            try:
                await recent_pairs.release_expired(self.pool)
                await self.sweep()
                waits = [await claim.seconds_to_next_check(self.pool),
                         await recent_pairs.seconds_to_next_expiry(self.pool)]
                delay = min([w for w in waits if w is not None], default=TIMER_POLL_SECONDS)
            except Exception as e:
                if not is_transient(e):
                    log.exception("Match timer failed")
                delay = 1.0
            delay = min(delay, TIMER_POLL_SECONDS) + 0.02
            self._timer_runs_at = asyncio.get_running_loop().time() + delay
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass
