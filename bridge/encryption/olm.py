"""mautrix's OlmMachine and PgCryptoStore, made cheaper per relayed message.

Per message, mautrix 0.21 reads and writes the whole megolm session: decrypting one event
took seven queries (the inbound session; the message index; the whole session written back,
re-pickled, to record one new index in its ratchet bookkeeping; the sender's device; three
for the sender's cross-signing trust), encrypting one two (read the outbound session, write
it back). Each query also paid a second round trip: asyncpg's reset of the connection as it
goes back to the pool. Measured by bench/crypto.py: 14 round trips per decryption, 4 per
encryption; now 1 and 1.

What changes here, narrowly, each where it is overridden:
- the pool's reset does only what matters here (keep_session_state);
- a device's megolm sessions are cached in memory (BridgeCryptoStore);
- after decrypting, only the inbound session's ratchet bookkeeping is written (not a new
  pickle), by the same statement as the next message's index check;
- the sender's device keys are cached per process until they are stored again;
- the sender's trust is not looked up when the configured minimum cannot be missed
  (BridgeOlmMachine.resolve_trust).

What does not change: the message index check (a replayed index with another event ID or
timestamp is refused, checked in PostgreSQL for every message, so it holds across restarts),
the device key check (a session whose keys do not match the sender's device raises
VerificationError), the outbound session's state written before its ciphertext leaves (a
restart never reuses a message index), and the trust check whenever it can matter.
"""
from __future__ import annotations

import copy
import weakref
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass

from mautrix.crypto import (InboundGroupSession, OlmMachine, OutboundGroupSession,
                            PgCryptoStore)
from mautrix.types import DeviceIdentity, EncryptedEvent, Event, TrustState
from mautrix.util.async_db import Database, Scheme

from bridge.database import keep_session_state

# Inbound sessions kept in memory per device. A ghost's device sees one room and one partner
# (a session per ~100 messages and per client device); the bot's sees every DM.
MAX_CACHED_SESSIONS = 512
# Users whose device keys are kept in memory, per database (so per process).
MAX_CACHED_USERS = 4096
# For crypto_database(): the pool arguments that go with this module.
POOL_ARGS = {"reset": keep_session_state}


class _Devices:
    """Device keys by (user, identity key), for every store on one database (the table has no
    account column: the bot's and the ghosts' devices share it). Every write to crypto_device
    in this process goes through some BridgeCryptoStore.put_devices, except delete_account
    (bridge/encryption/crypto_store.py) deleting a ghost's own device keys as its device goes for good, which
    closes its store after: BridgeCryptoStore.close forgets them; and crypto_store.forget_user
    (`!forget`), which calls forget_cached_devices."""

    def __init__(self) -> None:
        self.users: OrderedDict[str, dict[str, DeviceIdentity]] = OrderedDict()
        self.generation = 0  # a read that saw it change is not cached

    def forget(self, user_id: str) -> None:
        self.users.pop(user_id, None)
        self.generation += 1


_devices_by_db: "weakref.WeakKeyDictionary[Database, _Devices]" = weakref.WeakKeyDictionary()


def forget_cached_devices(db: Database, user_id: str) -> None:
    """A user's device keys were deleted behind the stores' backs (crypto_store.forget_user)."""
    if (devices := _devices_by_db.get(db)) is not None:
        devices.forget(user_id)


@dataclass(eq=False)
class _Inbound:
    session: InboundGroupSession
    meta: tuple  # what is stored with it besides ratchet_safety (_session_meta)
    dirty: bool = False  # ratchet_safety changed since it was last written


_WRITE_BOOKKEEPING = """
UPDATE crypto_megolm_inbound_session SET ratchet_safety=$1
WHERE session_id=$2 AND account_id=$3 AND session IS NOT NULL
"""
# mautrix's PgCryptoStore._validate_message_index_query, with the bookkeeping write alongside.
_VALIDATE_INDEX_AND_WRITE_BOOKKEEPING = """
WITH bookkeeping AS (
    UPDATE crypto_megolm_inbound_session SET ratchet_safety=$6
    WHERE session_id=$2 AND account_id=$7 AND session IS NOT NULL
)
INSERT INTO crypto_message_index (sender_key, session_id, "index", event_id, timestamp)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (sender_key, session_id, "index") DO UPDATE SET sender_key=excluded.sender_key
RETURNING event_id, timestamp
"""


def _session_meta(room_id: str, sender_key: str, session: InboundGroupSession) -> tuple:
    """What put_group_session stores about a session besides its ratchet bookkeeping."""
    return (room_id, sender_key, session.signing_key, tuple(session.forwarding_chain),
            session.received_at, session.max_age, session.max_messages, session.is_scheduled)


class BridgeCryptoStore(PgCryptoStore):
    """PgCryptoStore with the device's megolm sessions cached in memory.

    Why a cache is safe: a device's keys are used by this process only, through this one
    object (one Crypto per device: the bot's, and GhostDevices keeps one per ghost).
    mautrix relies on that already: it keeps the device's Olm account and Olm sessions in
    memory (PgCryptoStore._account, _olm_cache), and a second process on the same device
    would corrupt them. Every write to this account's megolm rows goes through the methods
    below, which drop the cached copy before and after writing (a row read while a write
    was under way is not cached: the generation counters). The message index
    (crypto_message_index) is not cached: it is checked in PostgreSQL for every message.
    """

    def __init__(self, account_id: str, pickle_key: str, db: Database, *,
                 user_id: str | None = None) -> None:
        """`user_id`: the device's user, when the account ID is not it (the bot's devices in
        cluster mode, one per process: crypto.bot_account_id)."""
        super().__init__(account_id, pickle_key, db)
        self.user_id = user_id or account_id
        self._inbound: OrderedDict[str, _Inbound] = OrderedDict()  # by session ID
        self._inbound_generation = 0
        self._outbound: dict[str, OutboundGroupSession] = {}
        self._outbound_generation = 0
        self._devices = _devices_by_db.setdefault(db, _Devices())

    async def delete(self) -> None:
        self._forget_outbound(*self._outbound)
        try:
            await super().delete()
        finally:
            self._forget_outbound(*self._outbound)

    async def flush(self) -> None:
        """Write the ratchet bookkeeping still held back (Crypto.stop closes the store)."""
        for session_id, entry in list(self._inbound.items()):
            await self._write_bookkeeping(session_id, entry)

    async def close(self) -> None:
        """Flush, then forget the cached copies: the device stops, or is gone for good
        (Crypto.stop(forget=True) deletes its rows with delete_account, bypassing the store,
        its own user's device keys included)."""
        await super().close()
        self._forget_inbound(*self._inbound)
        self._forget_outbound(*self._outbound)
        self._devices.forget(self.user_id)

    # -- inbound megolm sessions -------------------------------------------------------------
    # mautrix writes a session back after every decryption (_ratchet_session), only to record
    # the new message index in its ratchet bookkeeping (ratchet_safety). That write is held
    # back and made by the same statement as the next message's index check (one round trip
    # instead of two), or on close, or when the session leaves the cache. A crash loses at
    # most the last message's bookkeeping per session, which errs on the safe side: it only
    # lets mautrix ratchet or delete keys later (ratchet_keys_on_decrypt,
    # delete_fully_used_keys_on_decrypt, both off in the bridge), never sooner; and the
    # message index itself (replay protection) is never held back.

    def _forget_inbound(self, *session_ids: str) -> None:
        self._inbound_generation += 1
        for session_id in session_ids:
            self._inbound.pop(session_id, None)

    async def _write_bookkeeping(self, session_id: str, entry: _Inbound) -> None:
        if not entry.dirty:
            return
        entry.dirty = False
        try:
            await self.db.execute(_WRITE_BOOKKEEPING, entry.session.ratchet_safety.json(),
                                  session_id, self.account_id)
        except BaseException:
            entry.dirty = True
            raise

    async def get_group_session(self, room_id, session_id) -> InboundGroupSession | None:
        if (entry := self._inbound.get(session_id)) is not None:
            self._inbound.move_to_end(session_id)
            # The row is looked up by room too: a session of another room is not found.
            return entry.session if entry.meta[0] == room_id else None
        generation = self._inbound_generation
        session = await super().get_group_session(room_id, session_id)  # raises if withheld
        if session is not None and generation == self._inbound_generation:
            self._inbound[session_id] = _Inbound(session, _session_meta(
                room_id, session.sender_key, session))
            while len(self._inbound) > MAX_CACHED_SESSIONS:
                oldest_id, oldest = next(iter(self._inbound.items()))
                if oldest.dirty:
                    await self._write_bookkeeping(oldest_id, oldest)
                elif self._inbound.get(oldest_id) is oldest:
                    del self._inbound[oldest_id]
        return session

    async def put_group_session(self, room_id, sender_key, session_id,
                                session: InboundGroupSession) -> None:
        entry = self._inbound.get(session_id)
        if (entry is not None and entry.session is session
                and entry.meta == _session_meta(room_id, sender_key, session)):
            # The cached session itself, changed only in its ratchet bookkeeping: mautrix's
            # _ratchet_session after a decryption. Its key material is unchanged (decrypting
            # only advances libolm's cache of the latest ratchet; what the session can decrypt
            # is the same): no new pickle, and the bookkeeping is written with the next index
            # check (see above).
            entry.dirty = True
            return
        # Anything else (a new or re-sent key, a ratcheted copy) is written whole, as mautrix
        # does; the next read caches it.
        self._forget_inbound(session_id)
        try:
            await super().put_group_session(room_id, sender_key, session_id, session)
        finally:
            self._forget_inbound(session_id)

    async def validate_message_index(self, sender_key, session_id, event_id, index: int,
                                     timestamp: int) -> bool:
        entry = self._inbound.get(session_id)
        if entry is None or not entry.dirty or self.db.scheme != Scheme.POSTGRES:
            return await super().validate_message_index(sender_key, session_id, event_id,
                                                         index, timestamp)
        # mautrix's own check (same insert, same comparison), plus the held-back bookkeeping.
        entry.dirty = False
        try:
            row = await self.db.fetchrow(
                _VALIDATE_INDEX_AND_WRITE_BOOKKEEPING, sender_key, session_id, index, event_id,
                timestamp, entry.session.ratchet_safety.json(), self.account_id)
        except BaseException:
            entry.dirty = True
            raise
        return row["event_id"] == event_id and row["timestamp"] == timestamp

    async def redact_group_session(self, room_id, session_id, reason: str) -> None:
        self._forget_inbound(session_id)
        try:
            await super().redact_group_session(room_id, session_id, reason)
        finally:
            self._forget_inbound(session_id)

    async def redact_group_sessions(self, room_id, sender_key, reason: str) -> list:
        self._forget_inbound()
        redacted = await super().redact_group_sessions(room_id, sender_key, reason)
        self._forget_inbound(*redacted)
        return redacted

    async def redact_expired_group_sessions(self) -> list:
        self._forget_inbound()
        redacted = await super().redact_expired_group_sessions()
        self._forget_inbound(*redacted)
        return redacted

    async def redact_outdated_group_sessions(self) -> list:
        self._forget_inbound()
        redacted = await super().redact_outdated_group_sessions()
        self._forget_inbound(*redacted)
        return redacted

    # -- outbound megolm sessions ------------------------------------------------------------
    # Still written after every message (update_outbound_group_session), before its
    # ciphertext is returned: only the read is saved.

    def _forget_outbound(self, *room_ids: str) -> None:
        self._outbound_generation += 1
        for room_id in room_ids:
            self._outbound.pop(room_id, None)

    async def get_outbound_group_session(self, room_id) -> OutboundGroupSession | None:
        if (session := self._outbound.get(room_id)) is not None:
            return session
        generation = self._outbound_generation
        session = await super().get_outbound_group_session(room_id)
        if session is not None and generation == self._outbound_generation:
            self._outbound[room_id] = session
        return session

    async def add_outbound_group_session(self, session: OutboundGroupSession) -> None:
        self._forget_outbound(session.room_id)
        try:
            await super().add_outbound_group_session(session)
        finally:
            self._forget_outbound(session.room_id)
        self._outbound[session.room_id] = session

    async def update_outbound_group_session(self, session: OutboundGroupSession) -> None:
        try:
            await super().update_outbound_group_session(session)
        except BaseException:
            # Not stored: read it back as stored next time, as mautrix would (the index just
            # used was never sent, so using it again is harmless).
            self._forget_outbound(session.room_id)
            raise

    async def remove_outbound_group_session(self, room_id) -> None:
        self._forget_outbound(room_id)
        try:
            await super().remove_outbound_group_session(room_id)
        finally:
            self._forget_outbound(room_id)

    async def remove_outbound_group_sessions(self, rooms: list) -> None:
        self._forget_outbound(*rooms)
        try:
            await super().remove_outbound_group_sessions(rooms)
        finally:
            self._forget_outbound(*rooms)

    # -- device keys -------------------------------------------------------------------------

    async def find_device_by_key(self, user_id, identity_key) -> DeviceIdentity | None:
        cache = self._devices
        if (device := cache.users.get(user_id, {}).get(identity_key)) is not None:
            cache.users.move_to_end(user_id)
            return copy.copy(device)
        generation = cache.generation
        device = await super().find_device_by_key(user_id, identity_key)
        if device is not None and generation == cache.generation:
            cache.users.setdefault(user_id, {})[identity_key] = copy.copy(device)
            cache.users.move_to_end(user_id)
            while len(cache.users) > MAX_CACHED_USERS:
                cache.users.popitem(last=False)
        return device

    async def put_devices(self, user_id, devices) -> None:
        self._devices.forget(user_id)
        try:
            await super().put_devices(user_id, devices)
        finally:
            self._devices.forget(user_id)


# Set while mautrix's decrypt_megolm_event runs in this task (resolve_trust is also used to
# decide whom to share keys with, where it must be resolved in full).
_decrypting: ContextVar[bool] = ContextVar("bridge_olm_decrypting", default=False)


class BridgeOlmMachine(OlmMachine):
    # The least trust a sender's device needs for its messages to be read
    # (bridge.encryption.verification_levels.receive; Crypto.decrypt refuses the rest).
    # Until told, trust is resolved in full.
    min_receive_trust: TrustState = TrustState.VERIFIED

    async def decrypt_megolm_event(self, evt: EncryptedEvent) -> Event:
        token = _decrypting.set(True)
        try:
            return await super().decrypt_megolm_event(evt)
        finally:
            _decrypting.reset(token)

    async def resolve_trust(self, device: DeviceIdentity, allow_fetch: bool = True) -> TrustState:
        if _decrypting.get() and self.min_receive_trust <= TrustState.UNVERIFIED:
            # Every level mautrix can resolve is at least UNVERIFIED except BLACKLISTED, which
            # comes only from the device's stored trust, as does VERIFIED (the cross-signing
            # chain gives levels in between). So when the minimum is UNVERIFIED or below, the
            # chain cannot change whether the message is read: skip its three queries (and,
            # once per user, a /keys/query), and answer the stored trust or the floor.
            if device.device_id != self.client.device_id and device.trust in (
                    TrustState.VERIFIED, TrustState.BLACKLISTED):
                return device.trust
            return TrustState.UNVERIFIED
        return await super().resolve_trust(device, allow_fetch)
