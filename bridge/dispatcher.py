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

from bridge.store import inbox

log = logging.getLogger("bridge.dispatcher")



def is_transient(error: BaseException) -> bool:
    """Will trying again later help? (database or homeserver briefly away, or rate limited)"""
    if isinstance(error, MatrixRequestError):
        return error.http_status >= 500 or error.http_status == 429
    return isinstance(error, (OSError, asyncio.TimeoutError, MatrixConnectionError,
                              asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                              asyncpg.CannotConnectNowError))


class Outcome(Enum):
    DONE = "done"  # handled: never to be seen again
    WAIT = "wait"  # cannot be handled yet (e.g. the partner has not joined): kick the room later


class Dispatcher:
    def __init__(self, pool: asyncpg.Pool, handle: Callable[[dict], Awaitable[Outcome]],
                 *, retry_max_delay: float = 30.0) -> None:
        self.pool = pool
        self.handle = handle
        self.retry_max_delay = retry_max_delay
        self._workers: dict[str, asyncio.Task] = {}
        self._dirty: set[str] = set()
        self._stopping = False

    def kick(self, room_ids: set[str] | list[str]) -> None:
        """There may be new events for these rooms: make sure each has a worker."""
        if self._stopping:
            return
        for room_id in room_ids:
            self._dirty.add(room_id)
            if room_id not in self._workers:
                task = asyncio.create_task(self._work(room_id), name=f"room {room_id}")
                self._workers[room_id] = task

    async def kick_all_pending(self) -> None:
        self.kick(await inbox.rooms_with_pending(self.pool))

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

    async def _drain(self, room_id: str) -> None:
        delay = 0.5
        while not self._stopping:
            try:
                batch = await inbox.pending(self.pool, room_id)
                if not batch:
                    return
                for seq, event in batch:
                    if self._stopping:
                        return
                    outcome = await self._handle_one(event)
                    if outcome is Outcome.WAIT:
                        return
                    await inbox.mark_handled(self.pool, seq)
                delay = 0.5
            except Exception as e:
                if not is_transient(e):
                    raise
                # The database or homeserver is away: the event stays in the inbox; retry.
                log.warning("Room %s: transient failure (%s), retrying in %.1fs", room_id, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_delay)

    async def _handle_one(self, event: dict) -> Outcome:
        try:
            return await self.handle(event)
        except Exception as e:
            if is_transient(e):
                raise
            # A bug or a hostile event must not wedge the room: log it and move on.
            log.exception("Failed to handle %s in %s", event.get("event_id"), event.get("room_id"))
            return Outcome.DONE

    async def stop(self, timeout: float = 10.0) -> None:
        """Let in-flight events finish, then stop taking new ones."""
        self._stopping = True
        workers = list(self._workers.values())
        if workers:
            done, pending = await asyncio.wait(workers, timeout=timeout)
            for task in pending:
                task.cancel()
