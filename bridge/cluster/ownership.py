"""Which partitions of rooms this process owns, and whether it leads.

Each process holds, on a PostgreSQL connection of its own (not the pool's: advisory locks
and LISTEN belong to a session):
- the shared advisory lock MEMBER: the live processes are those holding it;
- an exclusive advisory lock per partition it owns, up to its fair share
  (partitions / live processes, give or take one), taking free ones and giving back extra ones;
- the exclusive advisory lock LEADER, if it won it: the leader runs what must run once
  (timers, start-up resumption, pruning).
PostgreSQL drops a session's locks when its connection ends: a process killed with -9 loses
them at once, a vanished machine once TCP keepalive gives up on it (KEEPALIVE below), and
the others take them over at their next balance: every BALANCE_SECONDS, and at once when a
process says on MEMBERS_CHANNEL that it joined or gave partitions back.

A partition changes hands only when no event of it is being handled: the giver stops
handling first (`losing`), then unlocks; the taker locks first, then looks for the pending
events of what it took (`gained`).
"""
from __future__ import annotations

import asyncio
import logging
import zlib
from typing import Awaitable, Callable

import asyncpg

from bridge.cluster import notices
from bridge.metrics import definitions as metrics

log = logging.getLogger("bridge.cluster")

NAMESPACE = 0x5342  # first key of every advisory lock of ours ("SB"); partitions are 0..N-1
MEMBER = 1_000_000
LEADER = 1_000_001
BALANCE_SECONDS = 1.0
# The server closes a session whose client stopped answering after 5 + 3 x 2 = 11 seconds,
# so a vanished machine's partitions are free again after that.
KEEPALIVE = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2",
             "tcp_keepalives_count": "3"}
_LOCKS = f"""SELECT objid::int AS key, count(DISTINCT pid) AS holders FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 2
               AND classid = {NAMESPACE}::oid
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
             GROUP BY objid"""  # (advisory locks are per database; pg_locks shows them all)


_MEMBERS = f"""SELECT array_agg(pid) FROM pg_locks
               WHERE locktype = 'advisory' AND granted AND objsubid = 2
                 AND classid = {NAMESPACE}::oid AND objid = {MEMBER}::oid
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""


class Ownership:
    def __init__(self, uri: str, partitions: int, instance: str, *,
                 gained: Callable[[frozenset[int]], Awaitable[None]],
                 losing: Callable[[frozenset[int]], Awaitable[None]],
                 leading: Callable[[bool], Awaitable[None]],
                 woken: Callable[[list[str], dict[str, int]], None],
                 checked: Callable[[str], None] | None = None) -> None:
        self.uri = uri
        self.partitions = partitions
        self.instance = instance
        self.gained, self.losing, self.leading, self.woken = gained, losing, leading, woken
        self.checked = checked  # told what notices.CHECKS_CHANNEL says
        self.owned: frozenset[int] = frozenset()
        self._dropped: frozenset[int] = frozenset()  # owned until the connection died
        self.leader = False
        self.live = 0  # processes alive at the last balance
        self._conn: asyncpg.Connection | None = None
        self._nudge = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._balanced = asyncio.Condition()
        self.balances = 0
        # Where this process starts looking for free partitions: processes starting together
        # then rarely try the same ones.
        self._offset = zlib.crc32(instance.encode()) % partitions

    def owns_partition(self, partition: int) -> bool:
        return partition in self.owned

    async def start(self) -> None:
        """Join, take a share (and the lead if free), then keep balancing."""
        await self._connect()
        await self._balance()
        self._task = asyncio.create_task(self._run(), name="cluster ownership")

    async def stop(self) -> None:
        """Give everything back at once (the others take over now), then leave."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._give_up(unlock=True)
        if self._conn is not None:
            try:
                # Not live any more before saying so: the others' balance on our notice
                # must count us out, or they take our partitions only at their next one.
                await self._conn.execute(
                    f"SELECT pg_advisory_unlock_shared({NAMESPACE}, {MEMBER})")
                await self._conn.execute("SELECT pg_notify($1, $2)", notices.MEMBERS_CHANNEL,
                                         f"left {self.instance}")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pass
            await self._close()

    async def balanced(self, after: int) -> None:
        """Wait until a balance after the `after`-th has run (tests)."""
        async with self._balanced:
            await self._balanced.wait_for(lambda: self.balances > after)

    # -- the connection ------------------------------------------------------------------

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self.uri, timeout=10, server_settings={
            "application_name": f"stranger-bridge {self.instance}"[:63], **KEEPALIVE})
        try:
            await conn.add_listener(notices.CHANNEL, self._on_rooms)
            await conn.add_listener(notices.MEMBERS_CHANNEL, self._on_members)
            if self.checked is not None:
                await conn.add_listener(notices.CHECKS_CHANNEL,
                                        lambda _c, _p, _ch, room_id: self.checked(room_id))
            conn.add_termination_listener(self._terminated)
            await conn.execute(f"SELECT pg_advisory_lock_shared({NAMESPACE}, {MEMBER})")
            await conn.execute("SELECT pg_notify($1, $2)", notices.MEMBERS_CHANNEL,
                               f"joined {self.instance}")
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 5)
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError,
                    asyncpg.InterfaceError):
                conn.terminate()

    def _on_rooms(self, _conn, _pid, _channel, payload: str) -> None:
        mine = {room_id: partition for room_id, partition in notices.rooms(payload).items()
                if partition in self.owned}
        if mine:
            self.woken(list(mine), mine)

    def _on_members(self, _conn, _pid, _channel, _payload: str) -> None:
        self._nudge.set()

    def _terminated(self, conn) -> None:
        """The connection ended (and our locks with it, for the server): not one more event
        is started here, at once, before another process can take the rooms over."""
        if conn is self._conn:
            self._dropped, self.owned = self._dropped | self.owned, frozenset()
            self._nudge.set()

    # -- balancing -------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._nudge.wait(), BALANCE_SECONDS)
            except asyncio.TimeoutError:
                pass
            self._nudge.clear()
            try:
                if self._conn is None or self._conn.is_closed():
                    await self._give_up(unlock=False)
                    await self._connect()
                    log.info("Back in the cluster as %s", self.instance)
                await self._balance()
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError,
                    asyncpg.InterfaceError) as e:
                # Our locks went (or will go) with the connection: stop handling at once.
                log.warning("Lost the cluster connection (%s): giving up rooms and lead", e)
                await self._give_up(unlock=False)
                await self._close()
            except Exception:  # a bug must not stop the balancing for good
                log.exception("Balancing the cluster failed")

    async def _balance(self) -> None:
        conn = self._conn
        held = {row["key"]: row["holders"] for row in await conn.fetch(_LOCKS)}
        members = sorted(await conn.fetchval(_MEMBERS) or [])
        self.live = max(1, len(members))
        fair = self._share(members, conn.get_server_pid())
        if len(self.owned) > fair:
            extra = frozenset(sorted(self.owned)[fair:])
            await self._release(extra, unlock=True)
            # The others take them now rather than at their next balance.
            await conn.execute("SELECT pg_notify($1, $2)", notices.MEMBERS_CHANNEL,
                               f"gave {self.instance}")
        elif len(self.owned) < fair:
            free = [p for p in self._search_order() if p not in held and p not in self.owned]
            taken: set[int] = set()
            for partition in free:
                if len(self.owned) >= fair:
                    break
                if await conn.fetchval(f"SELECT pg_try_advisory_lock({NAMESPACE}, $1)",
                                       partition):
                    taken.add(partition)
                    # Owned from now: events recorded from here on wake us.
                    self.owned = self.owned | {partition}
            if taken:
                log.info("Took %d partition(s); %d owned of %d, %d process(es)", len(taken),
                         len(self.owned), self.partitions, self.live)
                await self.gained(frozenset(taken))  # their events waiting meanwhile
        if not self.leader and LEADER not in held:
            if await conn.fetchval(f"SELECT pg_try_advisory_lock({NAMESPACE}, {LEADER})"):
                self.leader = True
                log.info("Leading the cluster (timers, resumption, pruning)")
                await self.leading(True)
        metrics.CLUSTER_PARTITIONS.set(len(self.owned))
        metrics.CLUSTER_LEADER.set(1 if self.leader else 0)
        metrics.CLUSTER_PROCESSES.set(self.live)
        async with self._balanced:
            self.balances += 1
            self._balanced.notify_all()

    def _share(self, members: list[int], me: int) -> int:
        """An even share: partitions // live each, one more for the first partitions % live
        members (by backend PID, an order every process sees alike)."""
        if me not in members:
            return 0
        base, extra = divmod(self.partitions, len(members))
        return base + (1 if members.index(me) < extra else 0)

    def _search_order(self) -> list[int]:
        return [(self._offset + i) % self.partitions for i in range(self.partitions)]

    async def _release(self, partitions: frozenset[int], *, unlock: bool) -> None:
        # Not owned from now: no new handling starts; then wait for what is under way.
        self.owned = self.owned - partitions
        self._dropped = self._dropped - partitions
        await self.losing(partitions)
        if unlock and self._conn is not None and not self._conn.is_closed():
            for partition in sorted(partitions):
                await self._conn.execute(f"SELECT pg_advisory_unlock({NAMESPACE}, $1)",
                                         partition)
        log.info("Gave back %d partition(s); %d owned", len(partitions), len(self.owned))

    async def _give_up(self, *, unlock: bool) -> None:
        try:
            if self.owned or self._dropped:
                await self._release(self.owned | self._dropped, unlock=unlock)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass  # the connection is going: its locks go with it
        metrics.CLUSTER_PARTITIONS.set(len(self.owned))
        if self.leader:
            self.leader = False
            metrics.CLUSTER_LEADER.set(0)
            await self.leading(False)
            if unlock and self._conn is not None and not self._conn.is_closed():
                try:
                    await self._conn.execute(
                        f"SELECT pg_advisory_unlock({NAMESPACE}, {LEADER})")
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    pass
