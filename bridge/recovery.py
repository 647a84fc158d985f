"""Recovery: what the homeserver's push alone cannot promise after a fault.

1. Deliveries the homeserver never makes. Synapse's appservice recoverer has a race
   (LAB.md): when it finds no transaction left it marks the appservice up, and an event
   persisted in that instant is stored as a transaction nothing sends until the next
   failure. It can only happen at the end of a recovery, i.e. after the bridge started,
   refused a transaction (database away), or after the homeserver itself was away. For a
   while after each of those ("suspect" time) the bridge checks, before handling an event
   of a user in their chat room or DM, the homeserver's history for earlier events of that
   user it never received, and handles those first (so order is kept). When the suspect
   time is over it reads the latest history of every live room and DM in use, to adopt
   trailing events that have no later event to reveal them. Everything is keyed by event
   ID in the inbox, so an event adopted here and delivered later is handled once.
2. Waking up. When the database or the homeserver was away, the bridge notices it is back
   within half a second, wakes rooms that were backing off, and pings the homeserver so it
   re-sends refused transactions at once instead of on its backoff timer.
3. Cleanup that failed. Closing a conversation's rooms can fail while the homeserver or
   database is away; ended conversations still not cleaned up a while later are closed
   again (closing is idempotent).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import asyncpg
from mautrix.api import Method, Path
from mautrix.appservice import AppService, IntentAPI
from mautrix.errors import MatrixConnectionError, MatrixError, MatrixRequestError

from bridge.config import Config
from bridge.dispatcher import Dispatcher, is_transient
from bridge.intake import well_formed
from bridge.portal import Portal
from bridge.store import conversations, inbox, users

log = logging.getLogger("bridge.recovery")

# How long after a fault (start-up, a refused transaction, a backlog delivery, the
# homeserver away) events are checked against the homeserver's history.
SUSPECT_SECONDS = 15.0
# A recovery is under way (and its end is when the race can strand an event) when the
# homeserver re-sends a transaction the bridge had recorded, or delivers events this old
# (its retry queue after an outage the bridge did not notice; a busy homeserver delivers
# late too, hence not less).
BACKLOG_AGE_MS = 10000
# How many of the sender's earlier events are compared (a stranded transaction holds what
# was persisted in a few milliseconds).
HISTORY_EVENTS = 10
# The catch-up leaves younger events alone: they may simply be on their way. Rooms where
# it saw some are looked at again a little later (a few times at most).
ADOPT_MIN_AGE_MS = 3000
RECHECK_SECONDS = 5.0
RECHECK_ROUNDS = 3
# DM rooms with inbox activity this recent are caught up too.
ACTIVE_DM_SECONDS = 600
WATCH_INTERVAL = 0.25
SWEEP_INTERVAL = 30.0
CLEANUP_GRACE_SECONDS = 120.0


def _age_ms(event: dict) -> float:
    """How long ago the homeserver got the event (its own measure when it gives one)."""
    unsigned = event.get("unsigned")
    age = unsigned.get("age") if isinstance(unsigned, dict) else None
    if isinstance(age, (int, float)):
        return age
    ts = event.get("origin_server_ts")
    return time.time() * 1000 - ts if isinstance(ts, (int, float)) else float("inf")


class Recovery:
    def __init__(self, appservice: AppService, pool: asyncpg.Pool, config: Config,
                 portal: Portal, dispatcher: Dispatcher) -> None:
        self.appservice = appservice
        self.pool = pool
        self.config = config
        self.portal = portal
        self.dispatcher = dispatcher
        self._suspect_until = 0.0
        self._reopened = asyncio.Event()
        self._catching_up = False
        self._watchers: dict[str, asyncio.Task] = {}
        self._young_rooms: set[str] = set()
        self._settled = asyncio.Condition()
        self._checked_through = 0  # inbox seq up to which events came in during suspect time
        # Whether this process retries failed cleanups (several processes: the leader only).
        self.sweeping = True
        # The module's constants, per instance (tests shorten them).
        self.suspect_seconds = SUSPECT_SECONDS
        self.adopt_min_age_ms = ADOPT_MIN_AGE_MS
        self.recheck_seconds = RECHECK_SECONDS
        # Counters, for logs, tests and benchmarks.
        self.adopted_before = 0  # found by the check before handling an event
        self.adopted_trailing = 0  # found by the catch-up after suspect time
        self.catch_ups = 0
        self.suspect_since_start("start-up")

    # -- suspect time -----------------------------------------------------------------------

    def suspect_since_start(self, reason: str) -> None:
        until = time.monotonic() + getattr(self, "suspect_seconds", SUSPECT_SECONDS)
        if until > self._suspect_until:
            if self._suspect_until < time.monotonic():
                log.debug("Checking deliveries against history (%s)", reason)
            self._suspect_until = until
        self._reopened.set()

    def end_suspect_time_in(self, seconds: float) -> None:
        """Let suspect time end sooner (tests)."""
        self._suspect_until = time.monotonic() + seconds
        self._reopened.set()

    async def caught_up(self, after: int) -> None:
        """Wait until a catch-up after the `after`-th is done and suspect time is over
        (tests, benchmarks)."""
        async with self._settled:
            await self._settled.wait_for(lambda: self.catch_ups > after and not self.suspect)

    @property
    def suspect(self) -> bool:
        return self._catching_up or time.monotonic() < self._suspect_until

    # -- hooks: intake and dispatcher ---------------------------------------------------------

    def on_transaction(self, events: list[dict], recorded: bool, already_known: int = 0) -> None:
        """Every transaction the homeserver delivered (recorded False: we answered 503;
        already_known: how many of its events the inbox had)."""
        if not recorded:
            self.suspect_since_start("refused a transaction")
            self._watch("database")
            return
        if already_known and already_known == len(events):
            self.suspect_since_start("a transaction delivered again")
            return
        for event in events:
            unsigned = event.get("unsigned")
            age = unsigned.get("age") if isinstance(unsigned, dict) else None
            if isinstance(age, (int, float)) and age > BACKLOG_AGE_MS:
                self.suspect_since_start("backlog delivery")
                return

    def on_transient(self, error: BaseException) -> None:
        """A room's handling failed for a while: something is away."""
        self.suspect_since_start("transient failure")
        if isinstance(error, (MatrixRequestError, MatrixConnectionError, asyncio.TimeoutError)):
            self._watch("homeserver")
        else:
            self._watch("database")

    # -- 1. deliveries never made ------------------------------------------------------------

    async def missed_before(self, seq: int, event: dict) -> list[tuple[int, dict]]:
        """The dispatcher's precheck: earlier events of the same user in this room that the
        homeserver has but never delivered, recorded and returned oldest first."""
        if not (self.suspect or seq <= self._checked_through):
            return []
        sender, room_id = event.get("sender"), event["room_id"]
        if sender == self.config.bot_mxid or self.config.is_ghost(sender):
            return []
        reader = await self._reader(room_id, sender)
        if reader is None:
            return []
        path = Path.v3.rooms[room_id].context[event["event_id"]]
        data = await self._read(reader, path, {
            "limit": str(2 * HISTORY_EVENTS),  # split evenly before and after the event
            "filter": json.dumps({"senders": [sender], "lazy_load_members": True})})
        adopted = await self._adopt(room_id, data.get("events_before") if data else None, seq)
        if adopted:
            self.adopted_before += len(adopted)
            log.warning("Room %s: %d earlier event(s) were never delivered before this one; "
                        "handling them first", room_id, len(adopted))
        return adopted

    async def catch_up(self, only: set[str] | None = None) -> int:
        """Adopt trailing undelivered events of every live chat room and DM in use (or of
        the rooms in `only`)."""
        rooms: list[tuple[str, str, IntentAPI]] = [
            (side.room_id, side.user_id, self.portal.ghost(side.ghost_id))
            for side in await conversations.live_sides(self.pool)]
        for room_id in await inbox.recently_active_rooms(self.pool, ACTIVE_DM_SECONDS, 1000):
            owner = await users.owner_of_dm_room(self.pool, room_id)
            if owner is not None:
                rooms.append((room_id, owner, self.appservice.intent))
        if only is not None:
            rooms = [room for room in rooms if room[0] in only]
        if self.dispatcher.partitions is not None:  # several processes: each its own rooms
            owned = set(await self.dispatcher.owned([room[0] for room in rooms]))
            rooms = [room for room in rooms if room[0] in owned]
        limit = asyncio.Semaphore(4)
        young_rooms: set[str] = set()

        async def one(room_id: str, sender: str, reader: IntentAPI) -> int:
            async with limit:
                data = await self._read(reader, Path.v3.rooms[room_id].messages, {
                    "dir": "b", "limit": str(HISTORY_EVENTS),
                    "filter": json.dumps({"senders": [sender], "lazy_load_members": True})})
                young: list[dict] = []
                adopted = await self._adopt(room_id, data.get("chunk") if data else None, None,
                                            young=young)
                if young:
                    young_rooms.add(room_id)
                if adopted:
                    self.adopted_trailing += len(adopted)
                    log.warning("Room %s: %d trailing event(s) were never delivered; adopted "
                                "them from history", room_id, len(adopted))
                    self.dispatcher.kick([room_id])
                return len(adopted)

        found = sum(await asyncio.gather(*(one(*room) for room in rooms)))
        self.catch_ups += 1
        self._young_rooms = young_rooms
        log.info("Caught up with %d room(s): %d event(s) adopted", len(rooms), found)
        return found

    async def _reader(self, room_id: str, sender: str) -> IntentAPI | None:
        """Who of ours can read this room's history, when it is a room we relay for sender."""
        side = await conversations.side_by_room(self.pool, room_id)
        if side is not None:
            if side.user_id == sender and side.live:
                return self.portal.ghost(side.ghost_id)
            return None
        if await users.get_by_dm_room(self.pool, room_id, sender):
            return self.appservice.intent
        return None

    async def _read(self, reader: IntentAPI, path: Any, query: dict[str, str]) -> dict | None:
        try:
            data = await reader.api.request(Method.GET, path, query_params=query)
        except MatrixError as e:
            if is_transient(e):
                raise
            # Not ours to read (any more), or the event is unknown: nothing to adopt.
            log.debug("History read %s refused: %s", path, e)
            return None
        return data if isinstance(data, dict) else None

    async def _adopt(self, room_id: str, newest_first: object, before_seq: int | None,
                     young: list[dict] | None = None) -> list[tuple[int, dict]]:
        """Of these events (newest first), the ones newer than the newest the bridge has
        accounted for: recorded in the inbox, returned oldest first with their seq.
        With `young`, events too recent to be called undelivered are put there instead."""
        if not isinstance(newest_first, list):
            return []
        events = [{**e, "room_id": e.get("room_id", room_id)} for e in newest_first
                  if isinstance(e, dict) and isinstance(e.get("event_id"), str)]
        if not events:
            return []
        accounted = await inbox.known(self.pool, [e["event_id"] for e in events], before_seq)
        missing = []
        for event in events:
            if event["event_id"] in accounted:
                break
            if event["room_id"] != room_id or not well_formed(event):  # as the intake would
                continue
            if young is not None and _age_ms(event) < self.adopt_min_age_ms:
                young.append(event)
            else:
                missing.append(event)
        if not missing:
            return []
        missing.reverse()
        async with self.pool.acquire() as conn, conn.transaction():
            await inbox.record(conn, missing)
        return await inbox.unhandled_by_id(self.pool, [e["event_id"] for e in missing])

    async def run(self) -> None:
        """Catch up whenever suspect time ends; also retry failed cleanups."""
        sweeper = asyncio.create_task(self._sweep_forever(), name="cleanup sweeper")
        try:
            while True:
                while (remaining := self._suspect_until - time.monotonic()) > 0:
                    self._reopened.clear()
                    try:  # until suspect time ends (it may be extended meanwhile)
                        await asyncio.wait_for(self._reopened.wait(), remaining)
                    except asyncio.TimeoutError:
                        pass
                self._reopened.clear()
                self._catching_up = True
                try:
                    # Events that came in during suspect time are checked however late
                    # they are handled (the dispatcher may lag behind a backlog).
                    self._checked_through = max(self._checked_through,
                                                await inbox.max_seq(self.pool))
                    await self.catch_up()
                    # (and those that came in while it ran: it may have missed them)
                    self._checked_through = await inbox.max_seq(self.pool)
                except Exception as e:
                    if not is_transient(e):
                        log.exception("Catching up failed")
                    else:
                        log.warning("Catching up failed (%s); trying again later", e)
                        self.suspect_since_start("catch-up failed")
                finally:
                    self._catching_up = False
                    async with self._settled:
                        self._settled.notify_all()
                rounds = 0
                while (self._young_rooms and rounds < RECHECK_ROUNDS
                       and self._suspect_until <= time.monotonic()):
                    rounds += 1
                    await asyncio.sleep(self.recheck_seconds)
                    try:
                        await self.catch_up(only=self._young_rooms)
                    except Exception as e:
                        log.warning("Catching up again failed (%s)", e)
                        break
                if self._suspect_until <= time.monotonic():
                    await self._reopened.wait()
        finally:
            sweeper.cancel()
            for task in list(self._watchers.values()):
                task.cancel()

    # -- 2. waking up -------------------------------------------------------------------------

    def _watch(self, what: str) -> None:
        if what not in self._watchers:
            self._watchers[what] = asyncio.create_task(self._until_back(what),
                                                       name=f"watch {what}")

    async def _until_back(self, what: str) -> None:
        try:
            started = time.monotonic()
            while True:
                try:
                    if what == "database":
                        await self.pool.fetchval("SELECT 1")
                    else:
                        await self.appservice.intent.api.request(Method.GET, Path.versions,
                                                                 retry_count=0)
                    break
                except Exception as e:
                    if not is_transient(e):
                        log.warning("Checking whether the %s is back failed: %s", what, e)
                        return
                await asyncio.sleep(WATCH_INTERVAL)  # polling something that is down
            if time.monotonic() - started > WATCH_INTERVAL:
                log.info("The %s is back", what)
            self.dispatcher.wake()
            self.suspect_since_start(f"{what} back")
            await self.ping()  # it re-sends what we refused now, not on its backoff timer
        finally:
            self._watchers.pop(what, None)

    async def ping(self, attempts: int = 6) -> bool:
        """The appservice ping: the homeserver calls us back, and (Synapse) retries the
        transactions it holds for us at once. Right after a restart its first call back may
        land on a connection it kept to our previous process and fail: try again soon."""
        path = Path.v1.appservice[self.config["appservice.id"]].ping
        delay = 0.25
        for attempt in range(attempts):
            try:
                await self.appservice.intent.api.request(Method.POST, path, {}, retry_count=0)
                return True
            except Exception as e:
                if attempt == attempts - 1:
                    log.warning("Homeserver did not answer the appservice ping: %s", e)
                    return False
                log.debug("Appservice ping failed (%s); again in %.2fs", e, delay)
            await asyncio.sleep(delay)  # a retry backoff
            delay *= 2
        return False

    # -- 3. cleanup that failed -----------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            if not self.sweeping:
                continue
            try:
                await self.sweep()
            except Exception as e:
                if not is_transient(e):
                    log.exception("Cleanup sweep failed")

    async def sweep(self, grace: float = CLEANUP_GRACE_SECONDS) -> int:
        stale = await conversations.stale_unclosed(self.pool, grace)
        for conversation_id in stale:
            log.info("Conversation %d: cleaning up again", conversation_id)
            try:
                await self.portal.close(conversation_id)
            except Exception as e:
                if not is_transient(e):
                    log.exception("Conversation %d: cleanup failed", conversation_id)
                    continue
                log.warning("Conversation %d: cleanup failed again (%s)", conversation_id, e)
        return len(stale)
