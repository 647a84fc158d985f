"""Encryption devices for ghosts: each ghost in an encrypted relay room gets its own device.

Why not encrypt the ghosts' messages with the bot's device, as many bridges do? Because
clients then warn on every message ("the sender does not match the owner of the device"),
strict clients (MSC4153) hide them, and the bot would have to sit in every chat room as a
third member. A ghost of its own device is attributed correctly, needs no bot in the room,
and is as fresh as the ghost: new for every conversation, logged out (deleted) at its end,
so nothing at the crypto level links two conversations.

With several processes, a ghost's device is used only by the process holding its lock
(bridge/cluster/device_locks.py): taken before the device is loaded, let go once it is
stopped, when another process asks for it.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import asyncpg
from mautrix.appservice import AppService
from mautrix.util.async_db import Database

from bridge.background import Background
from bridge.cluster.device_locks import DeviceLocks
from bridge.config import Config
from bridge.encryption import device_inbox
from bridge.encryption.crypto import Crypto
from bridge.encryption.crypto_store import RoomStates
from bridge.state_store import TrimmedStateStore

log = logging.getLogger("bridge.encryption.ghost_devices")

GHOST_DEVICE_NAME = "Stranger"


class GhostDevices:
    def __init__(self, appservice: AppService, config: Config, state_store: TrimmedStateStore,
                 pool: asyncpg.Pool, db: Database, *, locks: DeviceLocks | None = None,
                 background: Background | None = None) -> None:
        self.appservice, self.config, self.state_store = appservice, config, state_store
        self.pool, self.db = pool, db
        self.locks, self.background = locks, background  # several processes
        # Told of a device just taken (to hand it what waited for it: device_inbox).
        self.on_taken: Callable[[str, Crypto], Awaitable[None]] | None = None
        self._devices: dict[str, Crypto] = {}
        self._starting: dict[str, asyncio.Lock] = {}
        self._forgetting: set[str] = set()
        self._letting_go: set[str] = set()

    async def get(self, ghost_id: str) -> Crypto:
        """The ghost's device, started on first use (or first use after a restart: the device
        ID and keys are in the crypto store, so the same device comes back)."""
        if (device := self._devices.get(ghost_id)) is not None:
            return device
        lock = self._starting.setdefault(ghost_id, asyncio.Lock())
        async with lock:
            if (device := self._devices.get(ghost_id)) is None:
                device = await self._take(ghost_id)
        self._starting.pop(ghost_id, None)
        return device

    async def _take(self, ghost_id: str) -> Crypto:
        if self.locks is not None:
            await self.locks.acquire(ghost_id)  # another process may have to let go first
        try:
            intent = self.appservice.intent.user(ghost_id)
            await intent.ensure_registered()
            device = Crypto(self.appservice, self.config, self.state_store, self.pool,
                            self.db, intent=intent, device_name=GHOST_DEVICE_NAME)
            await device.start()
        except BaseException:
            if self.locks is not None:
                await self.locks.release(ghost_id)
            raise
        self._devices[ghost_id] = device
        if self.on_taken is not None:
            try:  # (held already: what is stored meanwhile wakes us again)
                await self.on_taken(ghost_id, device)
            except Exception as e:  # left waiting for the next notice
                log.warning("Could not hand %s's device what waited for it: %s", ghost_id, e)
        return device

    def release_requested(self, ghost_id: str) -> None:
        """Another process needs the ghost's device: let go of it once it is idle."""
        if ghost_id in self._letting_go or self.background is None:
            return
        self._letting_go.add(ghost_id)
        self.background.spawn(self._let_go(ghost_id), "let a device go")

    async def _let_go(self, ghost_id: str) -> None:
        try:
            lock = self._starting.setdefault(ghost_id, asyncio.Lock())
            async with lock:
                device = self._devices.pop(ghost_id, None)
                if device is not None:
                    await device.stop()  # after the uses under way; state written back
                await self.locks.release(ghost_id)
            self._starting.pop(ghost_id, None)
        finally:
            self._letting_go.discard(ghost_id)

    def lost(self) -> None:
        """The device locks are gone (their connection died): another process may take any
        of our devices now, so none is used here from this moment."""
        devices, self._devices = self._devices, {}
        for device in devices.values():
            device.abandon()
            if self.background is not None:
                self.background.spawn(device.stop(), "stop a device let go")

    def running(self, ghost_id: str) -> Crypto | None:
        """The ghost's device if it is running now (never starts or brings one back)."""
        return self._devices.get(ghost_id)

    async def find(self, ghost_id: str, device_id: str) -> Crypto | None:
        """The ghost's device with this ID (started if it is only stored, e.g. after a
        restart), or None when the ghost has no such device (never had, or forgotten)."""
        device = self._devices.get(ghost_id)
        if device is None:
            if ghost_id in self._forgetting or await self._stored_device(ghost_id) != device_id:
                return None
            device = await self.get(ghost_id)
        return device if device.device_id == device_id else None

    async def is_encrypted(self, ghost_id: str, room_id: str) -> bool:
        """Whether the ghost's room is encrypted (read as the ghost, who is in it)."""
        if await self.state_store.has_encryption_info_cached(room_id):
            return await self.state_store.is_encrypted(room_id)
        intent = self.appservice.intent.user(ghost_id)
        device = self._devices.get(ghost_id)
        if device is not None:
            return await device.is_encrypted(room_id)
        await RoomStates(self.state_store, intent, self.pool).fetch(room_id)
        return await self.state_store.is_encrypted(room_id)

    async def forget(self, ghost_id: str) -> None:
        """The conversation is over: delete the ghost's device and its keys (after a restart
        the device is brought back first, only to be logged out properly)."""
        if ghost_id not in self._devices and await self._stored_device(ghost_id) is None:
            return  # its room was never encrypted
        device = await self.get(ghost_id)
        self._devices.pop(ghost_id, None)
        self._forgetting.add(ghost_id)  # late to-device messages must not bring it back
        try:
            await device.stop(forget=True)
        finally:
            self._forgetting.discard(ghost_id)
            if self.locks is not None:
                await self.locks.release(ghost_id)
        if self.locks is not None:
            await device_inbox.forget(self.pool, ghost_id)

    async def _stored_device(self, ghost_id: str) -> str | None:
        return await self.db.fetchval(
            "SELECT device_id FROM crypto_account WHERE account_id = $1", ghost_id)

    async def stop(self) -> None:
        """Stop every device (their locks go with the locks' connection, after this)."""
        devices, self._devices = list(self._devices.values()), {}
        await asyncio.gather(*(device.stop() for device in devices), return_exceptions=True)
