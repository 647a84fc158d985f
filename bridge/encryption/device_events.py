"""Appservice-mode encryption: what a transaction carries for our devices, to each device.

With `bridge.encryption.appservice: true` the homeserver puts into each transaction the
to-device messages for our users' devices (MSC2409/MSC4203: room keys, key requests), the
users whose device lists changed and our devices' one-time key counts (MSC3202). A
to-device message is sent once and dropped by the homeserver when the transaction is
acknowledged, so everything here is handled (room keys stored) BEFORE the transaction is
answered; a failure worth retrying fails the transaction, and the homeserver sends it again.

With several processes (`routing`), a message for a device this process does not hold (a
ghost's in a conversation another process handles, another process's bot device) is stored
in device_inbox before the answer, and the holder is woken to take it.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Awaitable, Callable

import asyncpg

from mautrix.client.syncer import SyncStream
from mautrix.types import EventType, ToDeviceEvent

from bridge.background import Background
from bridge.dispatcher import is_transient
from bridge.encryption import device_inbox
from bridge.encryption.crypto import Crypto
from bridge.encryption.ghost_devices import GhostDevices

log = logging.getLogger("bridge.encryption.device_events")

# Unstable names first: Synapse sends only those today.
TO_DEVICE_KEYS = ("de.sorunome.msc2409.to_device", "to_device")
DEVICE_LISTS_KEYS = ("org.matrix.msc3202.device_lists", "device_lists")
OTK_COUNT_KEYS = ("org.matrix.msc3202.device_one_time_keys_count", "device_one_time_keys_count")
# How long a transaction may wait for encryption to finish starting before it is refused
# (and then retried by the homeserver).
READY_TIMEOUT = 60.0
# A to-device message the bot sends its own device at start, to see that the homeserver
# really delivers them to us (registration flags and homeserver settings right).
DELIVERY_CHECK = EventType.find("org.strangerbridge.delivery_check", EventType.Class.TO_DEVICE)
DELIVERY_CHECK_TIMEOUT = 30.0
RESEND_EVERY = 10.0


class NotReady(TimeoutError):  # transient, like any timeout: the homeserver retries
    """Encryption is not running yet: the transaction must be retried later."""


def _first(body: dict, keys: tuple[str, ...], kind: type):
    """The field under its first name present, or an empty `kind` when absent or malformed."""
    for key in keys:
        if key in body:
            return body[key] if isinstance(body[key], kind) else kind()
    return kind()


def _is_to_device(raw: object) -> bool:
    return (isinstance(raw, dict) and isinstance(raw.get("content"), dict)
            and all(isinstance(raw.get(k), str) and raw.get(k)
                    for k in ("type", "sender", "to_user_id", "to_device_id")))


def has_device_events(body: dict) -> bool:
    return bool(_first(body, TO_DEVICE_KEYS, list) or _first(body, DEVICE_LISTS_KEYS, dict)
                or _first(body, OTK_COUNT_KEYS, dict))


class DeviceEvents:
    def __init__(self) -> None:
        self.bot: Crypto | None = None
        self.ghosts: GhostDevices | None = None
        self.ready = asyncio.Event()
        self._checks: dict[str, asyncio.Future] = {}
        # Several processes: where messages for devices held elsewhere wait, and how their
        # holder is woken (device_inbox.name() of the device).
        self.pool: asyncpg.Pool | None = None
        self.wake_holder: Callable[[str], Awaitable[None]] | None = None
        self.background: Background | None = None
        self._draining: dict[str, asyncio.Lock] = {}

    def start(self, bot: Crypto, ghosts: GhostDevices) -> None:
        self.bot, self.ghosts = bot, ghosts
        self.ready.set()

    @property
    def routing(self) -> bool:
        return self.pool is not None

    def held(self, user_id: str, device_id: str) -> Crypto | None:
        """The device, if this process holds it now (never starts one)."""
        if user_id == self.bot.client.mxid:
            return self.bot if self.bot.device_id == device_id else None
        device = self.ghosts.running(user_id)
        return device if device is not None and device.device_id == device_id else None

    async def _ours(self, user_id: str, device_id: str) -> bool:
        """Whether the device is one of the bridge's (the bot's devices: one per process)."""
        return bool(await self.pool.fetchval(
            """SELECT 1 FROM crypto_account WHERE device_id = $1
               AND (account_id = $2 OR starts_with(account_id, $2 || '/'))""",
            device_id, user_id))

    async def _elsewhere(self, user_id: str, device_id: str, kind: str, payload: dict) -> None:
        """Keep it for the device's holder (whoever takes the device next, if none)."""
        if not await self._ours(user_id, device_id):
            log.debug("%s for %s's device %s, which we do not have: dropped", kind, user_id,
                      device_id)
            return
        await device_inbox.store(self.pool, user_id, device_id, kind, payload)
        await self.wake_holder(device_inbox.name(user_id, device_id))

    def stored(self, name: str) -> None:
        """Something waits in device_inbox for this device: take it, if it is ours now."""
        parsed = device_inbox.parse_name(name)
        if parsed is None or not self.ready.is_set():
            return
        if (device := self.held(*parsed)) is not None and self.background is not None:
            self.background.spawn(self.take_stored(parsed[0], device), "stored to-device")

    async def take_stored(self, user_id: str, device: Crypto) -> None:
        """Handle what waits for the device (it is held here), in order, once."""
        name = device_inbox.name(user_id, device.device_id)
        lock = self._draining.setdefault(name, asyncio.Lock())
        try:
            async with lock:
                await device_inbox.drain(self.pool, user_id, device.device_id,
                                         lambda kind, payload: self._stored(device, kind,
                                                                            payload))
        finally:
            if not lock.locked():
                self._draining.pop(name, None)

    async def _stored(self, device: Crypto, kind: str, payload: dict) -> None:
        if kind == device_inbox.OTK_COUNT:
            await self._guard("one-time key count", device.handle_otk_count(payload["counts"]))
        else:
            await self._to_device(payload["event"], payload.get("bot_counts", False))

    async def find(self, user_id: str, device_id: str) -> Crypto | None:
        """The device, or None for one we do not have (e.g. a ghost's deleted device)."""
        if user_id == self.bot.client.mxid:
            return self.bot if self.bot.device_id == device_id else None
        return await self.ghosts.find(user_id, device_id)

    async def handle(self, body: dict) -> None:
        """Handle every device event of a transaction body, in order. Raises on failures
        worth retrying (the database or homeserver away, encryption not started yet);
        anything else bad is logged and skipped, so one bad message cannot wedge the
        transaction for ever."""
        if not has_device_events(body):
            return
        try:
            await asyncio.wait_for(self.ready.wait(), READY_TIMEOUT)
        except asyncio.TimeoutError:
            raise NotReady("encryption has not started") from None
        changed = _first(body, DEVICE_LISTS_KEYS, dict).get("changed")
        if isinstance(changed, list) and (users := [u for u in changed if isinstance(u, str)]):
            await self._guard("device list changes", self.bot.handle_device_lists(users))
        # (The start-up check's message tells whether key counts come with it: MSC3202.)
        bot_counts = bool(_first(body, OTK_COUNT_KEYS, dict).get(self.bot.client.mxid))
        for raw in _first(body, TO_DEVICE_KEYS, list):
            await self._to_device(raw, bot_counts)
        for user_id, devices in _first(body, OTK_COUNT_KEYS, dict).items():
            for device_id, count in devices.items() if isinstance(devices, dict) else ():
                if not isinstance(count, dict):
                    continue
                if self.routing:
                    if (device := self.held(user_id, device_id)) is None:
                        await self._elsewhere(user_id, device_id, device_inbox.OTK_COUNT,
                                              {"counts": count})
                        continue
                else:
                    device = await self.find(user_id, device_id)
                if device is not None:
                    await self._guard("one-time key count", device.handle_otk_count(count))

    async def check_delivery(self, timeout: float = DELIVERY_CHECK_TIMEOUT) -> bool:
        """Send the bot's device a to-device message and wait for it to come back in a
        transaction; False (and an error saying what to fix) when it does not."""
        nonce = secrets.token_hex(16)
        arrived = self._checks[nonce] = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            # Sent again now and then: Synapse drops an appservice's to-device messages while
            # it believes it down, which it may for a moment after a restart.
            while not arrived.done():
                if loop.time() >= deadline:
                    raise asyncio.TimeoutError
                await self.bot.client.send_to_device(DELIVERY_CHECK, {
                    self.bot.client.mxid: {self.bot.device_id: {"nonce": nonce}}})
                await asyncio.wait([arrived], timeout=min(RESEND_EVERY, deadline - loop.time()))
            if not arrived.result():
                log.error(
                    "Appservice-mode encryption is on (bridge.encryption.appservice: true) and "
                    "to-device messages arrive, but without one-time key counts: the "
                    "registration lacks org.matrix.msc3202 (and io.element.msc4190, for the "
                    "ghosts' devices). Run -g again, or set bridge.encryption.appservice: false")
                return False
            log.info("Appservice-mode encryption: the homeserver delivers to-device messages")
            return True
        except asyncio.TimeoutError:
            log.error(
                "Appservice-mode encryption is on (bridge.encryption.appservice: true) but no "
                "to-device message reached the bridge within %.0fs: encrypted rooms will not "
                "decrypt. The registration needs receive_ephemeral (or "
                "de.sorunome.msc2409.push_ephemeral), org.matrix.msc3202 and "
                "io.element.msc4190 (run -g again) and Synapse needs experimental_features "
                "msc2409_to_device_messages_enabled and msc3202_transaction_extensions; or set "
                "bridge.encryption.appservice: false", timeout)
            return False
        finally:
            self._checks.pop(nonce, None)

    async def _to_device(self, raw: object, bot_counts: bool = False) -> None:
        if not _is_to_device(raw):
            log.warning("Skipped a malformed to-device event")
            return
        user_id, device_id = raw["to_user_id"], raw["to_device_id"]
        if self.routing and self.held(user_id, device_id) is None:
            # (another process's start-up check included: it waits for it)
            await self._elsewhere(user_id, device_id, device_inbox.TO_DEVICE,
                                  {"event": raw, "bot_counts": bot_counts})
            return
        if raw["type"] == DELIVERY_CHECK.t and raw["sender"] == self.bot.client.mxid:
            if (check := self._checks.get(raw["content"].get("nonce"))) and not check.done():
                check.set_result(bot_counts)
            return
        device = (self.held(user_id, device_id) if self.routing
                  else await self.find(user_id, device_id))
        if device is None:
            log.debug("To-device %s for %s's device %s, which we do not have: dropped",
                      raw["type"], raw["to_user_id"], raw["to_device_id"])
            return
        try:
            evt = ToDeviceEvent.deserialize(raw)
        except Exception:
            log.warning("Skipped a malformed to-device event")
            return
        evt.source = SyncStream.TO_DEVICE
        await self._guard(f"to-device {raw['type']}",
                          device.handle_to_device(evt))

    @staticmethod
    async def _guard(what: str, step: Awaitable) -> None:
        try:
            await step
        except Exception as e:
            if is_transient(e):
                raise
            log.warning("Could not handle %s: %s: %s", what, type(e).__name__, e)
