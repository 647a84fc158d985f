"""Hands the inbox's events to the handler in order, one worker per room.

Events of one room are handled strictly in arrival order (relaying must keep the order
in which a user wrote); rooms are independent, so they run concurrently. An event stays
in the inbox until it is handled, so a crash or restart just picks up where it stopped.
"""
from __future__ import annotations

import asyncio
import logging
from enum import Enum
from typing import Awaitable, Callable

import asyncpg
from mautrix.errors import MatrixConnectionError, MatrixRequestError

from bridge.metrics import definitions as metrics
from bridge.store import inbox, room_partitions

log = logging.getLogger("bridge.dispatcher")



def is_transient(error: BaseException) -> bool:
    """Will trying again later help? (database or homeserver briefly away, or rate limited)"""
    if isinstance(error, MatrixRequestError):
        return error.http_status >= 500 or error.http_status == 429
    return isinstance(error, (OSError, asyncio.TimeoutError, MatrixConnectionError,
                              asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                              # A database restart: "terminating connection due to
                              # administrator command", "the database system is starting
                              # up"; also serialization failures and too many connections.
                              asyncpg.exceptions.OperatorInterventionError,
                              asyncpg.exceptions.TransactionRollbackError,
                              asyncpg.exceptions.InsufficientResourcesError))


class Outcome(Enum):
    DONE = "done"  # handled: never to be seen again
    WAIT = "wait"  # cannot be handled yet (e.g. the partner has not joined): kick the room later


class Dispatcher:
    def __init__(self, pool: asyncpg.Pool, handle: Callable[[dict], Awaitable[Outcome]],
                 *, retry_max_delay: float = 30.0,
                 precheck: Callable[[int, dict], Awaitable[list[tuple[int, dict]]]] | None = None,
                 on_transient: Callable[[BaseException], None] | None = None) -> None:
        self.pool = pool
        self.handle = handle
        self.retry_max_delay = retry_max_delay
        # Earlier events of the room the homeserver never delivered (see recovery.py): they
        # are handled first, so order is kept. (seq, event) of the event about to be handled.
        self.precheck = precheck
        self.on_transient = on_transient
        self._wake = asyncio.Event()
        self._workers: dict[str, asyncio.Task] = {}
        self._dirty: set[str] = set()
        self._stopping = False
        # Several processes (bridge/cluster/): the number of partitions, whether this process
        # owns one now, and how the owner of another is woken ({room: partition}). Each
        # event is handled in the partition recorded with it (inbox.partition), by the
        # partition's owner, after the room's earlier events. None: one process does all.
        self.partitions: int | None = None
        self.owns_partition: Callable[[int], bool] | None = None
        self.kick_elsewhere: Callable[[dict[str, int]], None] | None = None
        self._handling: dict[str, int | None] = {}  # room -> partition of the event under way
        self._handled = asyncio.Condition()

    def kick(self, room_ids: set[str] | list[str],
             partitions: dict[str, int] | None = None) -> None:
        """There may be new events for these rooms: make sure each has a worker (or, for a
        room whose events are known to be another process's (`partitions`), that its
        owner is woken). A worker of a room that is not ours wakes its owner."""
        if self._stopping:
            return
        elsewhere = {}
        for room_id in room_ids:
            partition = (partitions or {}).get(room_id)
            if (partition is not None and self.owns_partition is not None
                    and not self.owns_partition(partition) and room_id not in self._workers):
                elsewhere[room_id] = partition
                continue
            self._dirty.add(room_id)
            if room_id not in self._workers:
                task = asyncio.create_task(self._work(room_id), name=f"room {room_id}")
                self._workers[room_id] = task
        if elsewhere and self.kick_elsewhere is not None:
            self.kick_elsewhere(elsewhere)

    async def kick_all_pending(self) -> None:
        if self.partitions is None:
            self.kick(await inbox.rooms_with_pending(self.pool))
            return
        # The others' rooms are theirs to look at.
        waiting = await inbox.next_partitions(self.pool, self.partitions)
        self.kick([room_id for room_id, partition in waiting.items()
                   if self.owns_partition(partition)])

    async def owned(self, room_ids: list[str]) -> list[str]:
        """Those of these rooms whose next events this process handles (all, with one)."""
        if self.partitions is None:
            return list(room_ids)
        now = await room_partitions.of_rooms(self.pool, room_ids, self.partitions)
        return [room_id for room_id in room_ids if self.owns_partition(now[room_id])]

    async def release(self, partitions: frozenset[int]) -> None:
        """These partitions are no longer ours (owns_partition() says so already): wait
        until none of their events is being handled here. A worker checks before each
        event, so the one under way finishes and is marked handled first."""
        async with self._handled:
            await self._handled.wait_for(
                lambda: not any(p in partitions for p in self._handling.values()))

    async def _done_handling(self, room_id: str) -> None:
        self._handling.pop(room_id, None)
        async with self._handled:
            self._handled.notify_all()

    async def _work(self, room_id: str) -> None:
        try:
            while room_id in self._dirty and not self._stopping:
                self._dirty.discard(room_id)
                await self._drain(room_id)
        finally:
            self._workers.pop(room_id, None)
            # A kick that landed after the last check gets a fresh worker.
            if room_id in self._dirty and not self._stopping:
                self.kick([room_id])

    def _ours(self, room_id: str, partition: int | None) -> bool:
        """Whether this process handles an event of `partition` now; if not, its owner is
        woken (it carries on from here)."""
        if self.owns_partition is None or partition is None:
            return True
        if self.owns_partition(partition):
            return True
        if self.kick_elsewhere is not None:
            self.kick_elsewhere({room_id: partition})
        return False

    async def _drain(self, room_id: str) -> None:
        delay = 0.5
        while not self._stopping:
            try:
                batch = await inbox.pending(self.pool, room_id, count=self.partitions)
                if not batch:
                    return
                handled_early: set[int] = set()
                for item in batch:
                    seq, event = item
                    if self._stopping:
                        return
                    if seq in handled_early:
                        continue
                    # No await between the check and the mark: release() sees it.
                    if not self._ours(room_id, item.partition):
                        return
                    self._handling[room_id] = item.partition
                    try:
                        if self.precheck is not None:
                            for early_seq, early in await self.precheck(seq, event):
                                if await self._handle_one(early) is Outcome.WAIT:
                                    return
                                await inbox.mark_handled(self.pool, early_seq)
                                handled_early.add(early_seq)
                        outcome = await self._handle_one(event, item.received_at)
                        if outcome is Outcome.WAIT:
                            return
                        await inbox.mark_handled(self.pool, seq)
                    finally:
                        await self._done_handling(room_id)
                delay = 0.5
            except Exception as e:
                if not is_transient(e):
                    raise
                # The database or homeserver is away: the event stays in the inbox; retry.
                log.warning("Room %s: transient failure (%s), retrying in %.1fs", room_id, e, delay)
                if self.on_transient is not None:
                    self.on_transient(e)
                wake = self._wake
                try:  # the backoff, cut short by wake() when what was away is back
                    await asyncio.wait_for(wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, self.retry_max_delay)

    def wake(self) -> None:
        """The database or homeserver is back: rooms backing off retry now."""
        self._wake.set()
        self._wake = asyncio.Event()

    async def _handle_one(self, event: dict, received_at: float | None = None) -> Outcome:
        timing = metrics.handling(received_at)  # (for the relay latency; None: not timed)
        try:
            return await self.handle(event)
        except Exception as e:
            if is_transient(e):
                raise
            # A bug or a hostile event must not wedge the room: log it and move on.
            log.exception("Failed to handle %s in %s", event.get("event_id"), event.get("room_id"))
            return Outcome.DONE
        finally:
            metrics.done_handling(timing)

    async def stop(self, timeout: float = 10.0) -> None:
        """Let in-flight events finish, then stop taking new ones."""
        self._stopping = True
        workers = list(self._workers.values())
        if workers:
            done, pending = await asyncio.wait(workers, timeout=timeout)
            for task in pending:
                task.cancel()
