"""Encryption devices for ghosts: each ghost in an encrypted relay room gets its own device.

Why not encrypt the ghosts' messages with the bot's device, as many bridges do? Because
clients then warn on every message ("the sender does not match the owner of the device"),
strict clients (MSC4153) hide them, and the bot would have to sit in every chat room as a
third member. A ghost of its own device is attributed correctly, needs no bot in the room,
and is as fresh as the ghost: new for every conversation, logged out (deleted) at its end,
so nothing at the crypto level links two conversations.
"""
from __future__ import annotations

import asyncio
import logging

import asyncpg
from mautrix.appservice import AppService
from mautrix.util.async_db import Database

from bridge.config import Config
from bridge.encryption.crypto import Crypto
from bridge.encryption.crypto_store import RoomStates
from bridge.state_store import TrimmedStateStore

log = logging.getLogger("bridge.encryption.ghost_devices")

GHOST_DEVICE_NAME = "Stranger"


class GhostDevices:
    def __init__(self, appservice: AppService, config: Config, state_store: TrimmedStateStore,
                 pool: asyncpg.Pool, db: Database) -> None:
        self.appservice, self.config, self.state_store = appservice, config, state_store
        self.pool, self.db = pool, db
        self._devices: dict[str, Crypto] = {}
        self._starting: dict[str, asyncio.Lock] = {}
        self._forgetting: set[str] = set()

    async def get(self, ghost_id: str) -> Crypto:
        """The ghost's device, started on first use (or first use after a restart: the device
        ID and keys are in the crypto store, so the same device comes back)."""
        if (device := self._devices.get(ghost_id)) is not None:
            return device
        lock = self._starting.setdefault(ghost_id, asyncio.Lock())
        async with lock:
            if (device := self._devices.get(ghost_id)) is None:
                intent = self.appservice.intent.user(ghost_id)
                await intent.ensure_registered()
                device = Crypto(self.appservice, self.config, self.state_store, self.pool,
                                self.db, intent=intent, device_name=GHOST_DEVICE_NAME)
                await device.start()
                self._devices[ghost_id] = device
        self._starting.pop(ghost_id, None)
        return device

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

    async def _stored_device(self, ghost_id: str) -> str | None:
        return await self.db.fetchval(
            "SELECT device_id FROM crypto_account WHERE account_id = $1", ghost_id)

    async def stop(self) -> None:
        devices, self._devices = list(self._devices.values()), {}
        await asyncio.gather(*(device.stop() for device in devices), return_exceptions=True)
