"""Which encryption devices this process may use: one exclusive advisory lock per device.

A device's Olm account, its Olm sessions and its megolm sessions live in memory while it is
used (mautrix keeps them there, and bridge/encryption/olm.py caches more): two processes
using one device would each move its ratchets on their own, and one would send a message
index twice or decrypt with a session the other replaced. So a process loads a device only
while it holds the device's lock, and lets go of it only after the device is stopped (its
state written back, its caches dropped). The lock lives on a PostgreSQL connection of its
own: a process killed with -9, or cut off, loses every lock with it, at once for the server.

A process that needs a device another holds (a timer's notice in a room whose conversation
lives elsewhere; a partition that moved) asks for it on CHANNEL; the holder stops the device
when it is idle, unlocks, and says so; the asker takes it. Conversations are kept in one
partition (0011_cluster_devices), so this is rare: the owner of a conversation's rooms holds
both ghosts' devices.

Keys are the first 32 bits of the MD5 of the device's name: two devices whose names collide
share a lock, which only makes them wait for each other.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Callable

import asyncpg

from bridge.cluster.ownership import KEEPALIVE

log = logging.getLogger("bridge.cluster.devices")

NAMESPACE = 0x5344  # ("SD"); the partitions' locks are under ownership.NAMESPACE
CHANNEL = "stranger_bridge_devices"
ASK_AGAIN_SECONDS = 0.5  # a request lost (the holder was between connections) is repeated
ACQUIRE_TIMEOUT = 30.0


class DeviceBusy(TimeoutError):  # transient, like any timeout: the event is handled again
    """Another process kept the device past the timeout."""


def lock_key(name: str) -> int:
    return int.from_bytes(hashlib.md5(name.encode("utf-8")).digest()[:4], "big", signed=True)


class DeviceLocks:
    def __init__(self, uri: str, instance: str, *,
                 release_requested: Callable[[str], None],
                 lost: Callable[[], None],
                 stored: Callable[[str], None] | None = None) -> None:
        self.uri, self.instance = uri, instance
        self.release_requested = release_requested  # another process asks for this device
        self.lost = lost  # the connection died: every lock is gone, stop using every device
        self.stored = stored  # a to-device message for this device waits in device_inbox
        self.held: set[str] = set()
        self._conn: asyncpg.Connection | None = None
        self._op = asyncio.Lock()  # one statement at a time on the connection
        self._released: dict[str, asyncio.Event] = {}

    async def start(self) -> None:
        async with self._op:
            await self._connected()

    async def stop(self) -> None:
        """Every lock goes with the connection (the devices are stopped by then)."""
        conn, self._conn = self._conn, None
        self.held.clear()
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 5)
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError,
                    asyncpg.InterfaceError):
                conn.terminate()

    async def acquire(self, name: str, timeout: float = ACQUIRE_TIMEOUT) -> None:
        """Hold the device's lock, asking its holder to let go if another process has it.
        Raises DeviceBusy after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        asked = False
        while name not in self.held:
            released = self._released.setdefault(name, asyncio.Event())
            released.clear()
            async with self._op:
                conn = await self._connected()
                if await conn.fetchval("SELECT pg_try_advisory_lock($1::int, $2::int)",
                                       NAMESPACE, lock_key(name)):
                    self.held.add(name)
                    break
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"release {name}")
            if not asked:
                log.debug("Waiting for another process to hand over the device of %s", name)
                asked = True
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._released.pop(name, None)
                raise DeviceBusy(f"another process keeps the device of {name}")
            try:
                await asyncio.wait_for(released.wait(), min(ASK_AGAIN_SECONDS, remaining))
            except asyncio.TimeoutError:
                pass
        self._released.pop(name, None)

    async def release(self, name: str) -> None:
        """Let go of the device (stopped by now) and tell whoever waits for it."""
        if name not in self.held:
            return
        self.held.discard(name)
        async with self._op:
            conn = self._conn
            if conn is None or conn.is_closed():
                return  # the lock went with the connection
            try:
                await conn.execute("SELECT pg_advisory_unlock($1::int, $2::int)",
                                   NAMESPACE, lock_key(name))
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"released {name}")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("Could not unlock the device of %s (%s): its lock goes with the "
                            "connection", name, e)
                conn.terminate()

    async def notify_stored(self, db, name: str) -> None:
        """Wake the device's holder: something waits for it in device_inbox."""
        await db.execute("SELECT pg_notify($1, $2)", CHANNEL, f"stored {name}")

    # -- the connection ------------------------------------------------------------------

    async def _connected(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        conn = await asyncpg.connect(self.uri, timeout=10, server_settings={
            "application_name": f"stranger-bridge devices {self.instance}"[:63], **KEEPALIVE})
        try:
            await conn.add_listener(CHANNEL, self._on_notice)
            conn.add_termination_listener(self._terminated)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        return conn

    def _terminated(self, conn) -> None:
        if conn is self._conn:
            self._conn = None
            if self.held:
                log.warning("Lost the device locks' connection: %d device(s) let go",
                            len(self.held))
                self.held.clear()
                self.lost()

    def _on_notice(self, _conn, _pid, _channel, payload: str) -> None:
        what, _, name = payload.partition(" ")
        if what == "release" and name in self.held:
            self.release_requested(name)
        elif what == "released" and (event := self._released.get(name)) is not None:
            event.set()
        elif what == "stored" and self.stored is not None:
            self.stored(name)
