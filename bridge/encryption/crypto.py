"""End-to-end encryption devices (the bot's, and each ghost's): mautrix's OlmMachine, keys
in PostgreSQL. Each device's ID is kept in the crypto store, so restarts reuse it. Room
events always come through appservice transactions; what differs is the rest:

- classic mode (`bridge.encryption.appservice: false`), for a stock homeserver with no
  experimental flags: the device is made with the appservice login type and long-polls
  /sync as itself for to-device messages (room keys), device list changes and its one-time
  key count only.
- appservice mode (`true`): the device is made with MSC4190 (PUT /devices as the
  appservice, no access token of its own; requests name it with MSC3202's device_id
  parameter) and those three arrive in the appservice transactions (MSC2409/MSC4203
  to-device, MSC3202 device lists and key counts), routed here by device_events.py. No
  /sync per device: one connection for the whole bridge, however many ghosts.

Where their state lives (the crypto_* tables, room state) is crypto_store.py. Each device's
keys are under an account ID in the crypto store: its user's ID, except the bot's devices in
cluster mode, one per process (bot_account_id). The bot's cross-signing keys are kept, so all
its devices are signed by one key: cross_signing.py.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
from mautrix.api import Method, Path
from mautrix.appservice import AppService, IntentAPI
from mautrix.client import Client
from mautrix.client.syncer import SyncStream
from mautrix.crypto import RejectKeyShare
from mautrix.crypto.cross_signing_key import CrossSigningSeeds
from mautrix.errors import (DecryptionError, EncryptionError, MatrixRequestError,
                            MNotFound, MUnknownToken, SessionNotFound)
from mautrix.types import (DeviceLists, DeviceOTKCount, EncryptedEvent,
                           EncryptedMegolmEventContent, EventType, Filter, LoginType, Membership,
                           PresenceState, RoomKeyWithheldCode, StateEvent, ToDeviceEvent,
                           TrustState)
from mautrix.util.async_db import Database

from bridge.config import Config, ConfigError
from bridge.dispatcher import is_transient
from bridge.encryption import cross_signing
from bridge.encryption.crypto_store import RoomStates, delete_account
from bridge.encryption.olm import BridgeCryptoStore, BridgeOlmMachine
from bridge.encryption.pickle_key import PickleKeyError
from bridge.state_store import TrimmedStateStore

log = logging.getLogger("bridge.encryption.crypto")

DEVICE_NAME = "Stranger Bridge"
# A room key often arrives a moment after its event (to-device messages take another path).
KEY_WAIT_SECONDS = 10.0
# How long of that before the sender's device is asked for the key (see _wait_for_key).
KEY_REQUEST_AFTER = 2.0
# A homeserver sends at most ~100 to-device messages per /sync: enough for any backlog.
MAX_CATCH_UP_SYNCS = 50
# No rooms, no presence, no account data: to-device, device lists and OTK counts remain.
SYNC_FILTER = Filter.deserialize({"room": {"rooms": []}, "presence": {"not_types": ["*"]},
                                  "account_data": {"not_types": ["*"]}})


def bot_account_id(config: Config) -> str:
    """Where the bot's device keys are in the crypto store. One process: the bot's ID, as
    always (an existing deployment keeps its device). Cluster mode: one device per process,
    named by bridge.instance, which must then be set and stay the same across restarts (the
    default, host name and process ID, would make a new device at every start). mautrix's
    PgCryptoStore uses the account ID only as the key of its account rows, never as a user
    ID (that is the client's mxid)."""
    if not config["bridge.cluster.enabled"]:
        return config.bot_mxid
    if not config["bridge.instance"]:
        raise ConfigError("bridge.instance", "must be set in cluster mode with encryption: it "
                                             "names this process's bot device (a different, "
                                             "stable name per process, e.g. bridge-2)")
    return f"{config.bot_mxid}/{config['bridge.instance']}"


def bot_device_name(config: Config) -> str:
    """The bot device's display name (shown in clients' device lists)."""
    if not config["bridge.cluster.enabled"] or not config["bridge.instance"]:
        return DEVICE_NAME
    return f"{DEVICE_NAME} ({config['bridge.instance']})"


class MisconfiguredMode(RuntimeError):
    """The encryption mode in the config does not match the registration."""


class DeviceMoved(TimeoutError):  # transient, like any timeout: the caller tries again
    """The device was stopped (let go to another process, or the bridge is stopping)."""


class Undecryptable(Exception):
    """An encrypted event that will never decrypt (malformed, replayed, wrong room...)."""


class Crypto:
    """One device: the bot's (DMs), or a ghost's (its relay room, for one conversation)."""

    def __init__(self, appservice: AppService, config: Config, state_store: TrimmedStateStore,
                 pool: asyncpg.Pool, db: Database, *, intent: IntentAPI | None = None,
                 device_name: str = DEVICE_NAME, account_id: str | None = None) -> None:
        """`intent`: the device's user (default the bot); `account_id`: where its keys are
        in the crypto store (default its user's ID; the bot's: bot_account_id)."""
        self.appservice, self.config, self.cache, self.pool = appservice, config, state_store, pool
        intent = intent or appservice.intent
        self.intent, self.device_name = intent, device_name
        self.rooms = RoomStates(state_store, intent, pool)
        self.store = BridgeCryptoStore(account_id or intent.mxid,
                                       config["bridge.encryption.pickle_key"], db,
                                       user_id=intent.mxid)
        self.client = Client(mxid=intent.mxid, base_url=config["homeserver.address"],
                             client_session=appservice.http_session, state_store=state_store,
                             log=logging.getLogger("mau.crypto.client"), default_retry_count=4)
        self.machine = BridgeOlmMachine(self.client, self.store, self.rooms)
        levels = config["bridge.encryption.verification_levels"]
        self.min_receive_trust = TrustState.parse(levels["receive"])
        self.machine.min_receive_trust = self.min_receive_trust
        self.machine.send_keys_min_trust = TrustState.parse(levels["send"])
        self.machine.share_keys_min_trust = TrustState.parse(levels["share"])
        self.machine.allow_key_share = self._allow_key_share
        self.appservice_mode: bool = config["bridge.encryption.appservice"]
        self._sync_task: asyncio.Task | None = None
        self._cancellable = self._stopping = self._relogin = False
        # Uses under way (encrypting, decrypting, a to-device message): stop() waits for
        # them, so a device let go to another process is never used here after.
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def abandon(self) -> None:
        """Not to be used here any more, from now (stop() still closes it)."""
        self._stopping = True

    @contextlib.asynccontextmanager
    async def _use(self):
        if self._stopping:
            raise DeviceMoved(f"the device of {self.intent.mxid} is stopped here")
        self._busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()

    async def start(self) -> None:
        await self.store.open()
        known_device = await self.store.get_device_id()
        await self._login(known_device)
        await self.machine.load()
        if not known_device:
            await self.store.put_device_id(self.client.device_id)
        own = await self.client.query_keys([self.client.mxid])
        device = own.device_keys.get(self.client.mxid, {}).get(self.client.device_id)
        signed = False
        if not self.machine.account.shared or device is None or not device.keys:
            # New, or the homeserver lost its keys (deleted by an admin, re-created by our
            # login): upload them; the device keeps its identity either way.
            self.machine.account.shared = False
            await self.machine.share_keys()
        elif ssk := own.self_signing_keys.get(self.client.mxid):
            signed = bool(set(ssk.keys) & set(device.signatures.get(self.client.mxid, {})))
        if self.config["bridge.encryption.self_sign"] and not signed:
            # Clients following MSC4153 (Element's "exclude insecure devices") ignore devices
            # their owner did not cross-sign: sign ours, once.
            try:
                if self.is_bot:
                    await cross_signing.sign_own_device(
                        self.machine, self.pool, self.config["bridge.encryption.pickle_key"],
                        self.appservice.as_token)
                else:
                    await self._cross_sign()
                log.info("Cross-signed %s's device %s", self.client.mxid, self.client.device_id)
            except PickleKeyError:
                raise
            except Exception as e:  # e.g. keys set up before: replacing them needs UIA
                log.warning("Could not cross-sign %s's device %s (%s); some clients will "
                            "warn about it, encryption still works", self.client.mxid,
                            self.client.device_id, e)
        if not self.appservice_mode:
            filter_id = await self.client.create_filter(SYNC_FILTER)
            self._sync_task = asyncio.create_task(self._sync_loop(filter_id), name="crypto sync")
        elif known_device:  # (a new device has nothing waiting for it)
            await self._catch_up(await self.client.create_filter(SYNC_FILTER))
        log.info("Encryption ready: %s device %s (%s)", self.client.mxid, self.client.device_id,
                 "reused" if known_device else "new")

    async def _cross_sign(self) -> None:
        """A ghost's device (the only device of its user): make cross-signing keys and sign
        the device with them, three requests; the keys are not kept. mautrix's
        generate_recovery_key also puts the keys into secret storage under a new recovery
        key, five more requests per device (two per encrypted chat) for a key that nobody
        would keep. Its two steps are private in mautrix: the version range in
        pyproject.toml pins them, and the e2e tests check the signature."""
        await self.machine._publish_cross_signing_keys(CrossSigningSeeds.generate().to_keys())
        await self.machine.sign_own_device(self.machine.own_identity)

    @property
    def device_id(self) -> str:
        return self.client.device_id

    @property
    def account_id(self) -> str:
        """Where this device's keys are in the crypto store (crypto_*.account_id)."""
        return self.store.account_id

    @property
    def is_bot(self) -> bool:
        return self.client.mxid == self.config.bot_mxid

    async def _login(self, device_id: str | None) -> None:
        self.client.api.token = self.appservice.as_token
        if self.appservice_mode:
            # MSC4190: the appservice creates the device (or renames it, when it exists) and
            # acts as it with its own token; a homeserver refuses the appservice login then.
            try:
                await self.client.create_device_msc4190(device_id=device_id or "",
                                                        initial_display_name=self.device_name)
            except MNotFound as e:  # the homeserver does not let us create devices
                raise MisconfiguredMode(
                    "bridge.encryption.appservice is true but the homeserver did not let the "
                    "appservice create a device: regenerate the registration (-g) so it has "
                    "io.element.msc4190, and reload it in the homeserver") from e
            return
        # The AS token authenticates the appservice login; the device's own token replaces it.
        try:
            await self.client.login(login_type=LoginType.APPSERVICE,
                                    device_name=self.device_name,
                                    device_id=device_id or None, store_access_token=True)
        except MatrixRequestError as e:
            if e.errcode != "M_APPSERVICE_LOGIN_UNSUPPORTED":
                raise
            raise MisconfiguredMode(
                "the registration enables io.element.msc4190 (appservice-mode encryption) "
                "but bridge.encryption.appservice is false: set it to true, or regenerate "
                "the registration (-g) and reload it in the homeserver") from e

    async def stop(self, *, forget: bool = False) -> None:
        """Finish handling the current sync (so no room key is lost), then stop. `forget`:
        the device is done for good (a ghost whose conversation ended): log it out, which
        deletes it and its keys on the homeserver, and delete its keys here."""
        self._stopping = True
        try:
            await asyncio.wait_for(self._idle.wait(), KEY_WAIT_SECONDS + 5)
        except asyncio.TimeoutError:
            log.warning("%s's device stops with uses still under way", self.intent.mxid)
        task, self._sync_task = self._sync_task, None
        if task is not None:
            if self._cancellable:
                task.cancel()
            if not (await asyncio.wait([task], timeout=15))[0]:
                task.cancel()
        if forget:
            try:
                if self.appservice_mode:  # MSC4190: deleting the device needs no password
                    await self.client.api.request(Method.DELETE,
                                                  Path.v3.devices[self.client.device_id])
                else:
                    await self.client.logout()  # deletes the device it was made for
            except Exception as e:
                log.warning("Could not delete %s's device: %s", self.client.mxid, e)
            # (A ghost's account ID is its user's ID: its device keys and cross-signing keys
            # go too. A bot device of a cluster has its own: only its account's rows go.)
            await delete_account(self.store.db, self.account_id)
        await self.store.close()

    async def _catch_up(self, filter_id: str) -> None:
        """Appservice mode: Synapse drops the to-device messages (room keys) of an appservice
        it believes down, e.g. while the bridge restarts (element-hq/synapse#14710), but they
        stay in the device's inbox. Read that inbox once as the device (MSC3202 device_id
        masquerading), so a key sent while we were away is not lost. What transactions
        delivered before comes again too and is refused by Olm as a replay, harmlessly; the
        token stored at the end tells the homeserver it may delete what was read."""
        since = await self.store.get_next_batch()
        for _ in range(MAX_CATCH_UP_SYNCS):
            data = await self.client.sync(since=since, timeout=0, filter_id=filter_id,
                                          set_presence=PresenceState.OFFLINE)
            await self._handle_sync(data)
            since = data["next_batch"]
            await self.store.put_next_batch(since)
            if not (data.get("to_device") or {}).get("events"):
                break

    async def _sync_loop(self, filter_id: str) -> None:
        delay = 1.0
        while not self._stopping:
            try:
                self._cancellable = True  # waiting on the homeserver: nothing half done
                if self._relogin:
                    await self._login(self.client.device_id)
                    self._relogin = False
                data = await self.client.sync(
                    since=await self.store.get_next_batch(), timeout=30000,
                    filter_id=filter_id, set_presence=PresenceState.OFFLINE)
                self._cancellable = False
                await self._handle_sync(data)
                # Only now: a crash while handling sees the same to-device messages again.
                await self.store.put_next_batch(data["next_batch"])
                delay = 1.0
            except MUnknownToken:
                log.warning("The bot device's access token was revoked; logging in again")
                self._relogin = True
            except Exception as e:
                self._cancellable = True
                log.warning("Crypto sync failed (%s); retrying in %.0fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60)

    async def _handle_sync(self, data: dict[str, Any]) -> None:
        work = []
        if changed := (data.get("device_lists") or {}).get("changed"):
            work.append(self.handle_device_lists(changed))
        for raw in (data.get("to_device") or {}).get("events", []):
            try:
                evt = ToDeviceEvent.deserialize(raw)
            except Exception:
                log.warning("Skipped a malformed to-device event")
                continue
            evt.source = SyncStream.TO_DEVICE
            work.append(self.handle_to_device(evt))
        if (counts := data.get("device_one_time_keys_count")) is not None:
            work.append(self.handle_otk_count(counts))
        for step in work:  # in order, each on its own: one bad message must not stop the rest
            try:
                await step
            except Exception:
                log.exception("Crypto sync handling failed")

    # What /sync (classic mode) or a transaction (appservice mode) brings for this device.

    async def handle_to_device(self, evt: ToDeviceEvent) -> None:
        async with self._use():
            if evt.type == EventType.TO_DEVICE_ENCRYPTED:  # room keys, in Olm
                await self.machine.handle_to_device_event(evt)
            elif evt.type == EventType.ROOM_KEY_REQUEST:
                await self.machine.handle_room_key_request(evt)

    async def handle_otk_count(self, counts: dict) -> None:
        """Upload more one-time keys when the homeserver says few are left."""
        async with self._use():
            await self.machine.handle_otk_count(
                DeviceOTKCount(signed_curve25519=counts.get("signed_curve25519", 0)))

    async def handle_device_lists(self, changed: list[str]) -> None:
        """Refetch the keys of tracked users whose devices changed (the device list store
        is shared by every device of the bridge, so one device does it for all)."""
        await self.machine.handle_device_lists(DeviceLists(changed=changed))

    async def is_encrypted(self, room_id: str, intent: IntentAPI | None = None) -> bool:
        """`intent`: someone who is in the room (default the bot), to read its state."""
        await self.rooms.fetch(room_id, intent)
        return await self.cache.get_encryption_info(room_id) is not None

    async def handle_state(self, event: dict) -> None:
        """Keep the room cache current: call with every state event from a transaction,
        in room order, before anything else handles it."""
        if event.get("type") not in ("m.room.member", "m.room.encryption"):
            return
        try:
            await self.cache.update_state(evt := StateEvent.deserialize(event))
        except Exception:
            return
        user = evt.state_key if evt.type == EventType.ROOM_MEMBER else None
        # Cache only: no request per membership change in rooms the bot cannot read.
        if (user and user != self.config.bot_mxid and not self.config.is_ghost(user)
                and await self.cache.is_encrypted(evt.room_id)):
            # Someone came or went: the next message gets a new session (only members read).
            await self.machine.handle_member_event(evt)

    async def decrypt(self, event: dict, timeout: float = KEY_WAIT_SECONDS) -> dict | None:
        """The event with type and content decrypted, or None when its key has not come within
        `timeout` seconds. Raises Undecryptable for events that never will decrypt."""
        async with self._use():
            return await self._decrypt(event, timeout)

    async def _decrypt(self, event: dict, timeout: float) -> dict | None:
        try:
            evt = EncryptedEvent.deserialize(event)
        except Exception as e:
            raise Undecryptable(f"malformed encrypted event: {e}") from e
        if not isinstance(evt.content, EncryptedMegolmEventContent):
            raise Undecryptable("not a megolm event")
        try:
            try:
                result = await self.machine.decrypt_megolm_event(evt)
            except SessionNotFound as e:
                if not await self._wait_for_key(evt, e.session_id, timeout):
                    return None
                result = await self.machine.decrypt_megolm_event(evt)
        except SessionNotFound:
            return None
        except DecryptionError as e:
            raise Undecryptable(f"{type(e).__name__}: {e}") from e
        except Exception as e:  # plaintext that mautrix cannot parse, e.g. non-object content
            if is_transient(e):  # e.g. the sender's device keys could not be fetched: retry
                raise
            raise Undecryptable(f"undecodable payload: {e}") from e
        if (trust := result["mautrix"]["trust_state"]) < self.min_receive_trust:
            raise Undecryptable(f"sender device trust {trust} is below the configured minimum")
        content = result.content.serialize()  # SerializableAttrs or Obj: both serialize
        return {**event, "type": str(result.type), "content": content}

    async def _wait_for_key(self, evt: EncryptedEvent, session_id: str, timeout: float) -> bool:
        """A key usually comes a moment after its message. When it does not, ask the sender's
        device for it: if its to-device message was lost on the way, clients such as
        Element's send a key again to a device they had shared it with. Then wait the rest."""
        first = min(KEY_REQUEST_AFTER, timeout)
        if await self.machine.wait_for_session(evt.room_id, session_id, first):
            return True
        try:
            await self.machine.request_room_key(
                evt.room_id, evt.content.sender_key, session_id,
                {evt.sender: [evt.content.device_id or "*"]}, timeout=0)  # 0: do not wait here
        except Exception as e:  # best effort: the wait below still works without it
            log.warning("Could not request the key of a message in %s: %s", evt.room_id, e)
        return await self.machine.wait_for_session(evt.room_id, session_id, timeout - first)

    async def encrypt(self, room_id: str, event_type: str, content: dict,
                      intent: IntentAPI | None = None) -> tuple[str, dict]:
        """("m.room.encrypted", content) to send into the room; shares a megolm session with
        every member's devices first when needed. `intent`: a member (default the bot)."""
        async with self._use():
            return await self._encrypt(room_id, event_type, content, intent)

    async def _encrypt(self, room_id: str, event_type: str, content: dict,
                       intent: IntentAPI | None) -> tuple[str, dict]:
        await self.rooms.fetch(room_id, intent)
        etype = EventType.find(event_type, EventType.Class.MESSAGE)
        try:
            encrypted = await self.machine.encrypt_megolm_event(room_id, etype, content)
        except EncryptionError:  # no session yet, or it expired, or membership changed
            members = await self._members(room_id, intent or self.intent)
            # No await between the check and the call: only one share per room at a time.
            if self.machine.is_sharing_group_session(room_id):
                await self.machine.wait_group_session_share(room_id)
            else:
                await self.machine.share_group_session(room_id, members)
            encrypted = await self.machine.encrypt_megolm_event(room_id, etype, content)
        return "m.room.encrypted", encrypted.serialize()

    async def _members(self, room_id: str, intent: IntentAPI) -> list[str]:
        if not await self.cache.has_full_member_list(room_id):
            await intent.get_members(room_id)  # every membership, cached from now on
        return [user_id for user_id in await self.cache.get_members(room_id)  # join + invite
                if user_id != self.config.bot_mxid and not self.config.is_ghost(user_id)]

    async def _allow_key_share(self, device, request) -> bool:
        """A member's device asks for a room key (e.g. a device added later)."""
        if not self.config["bridge.encryption.allow_key_sharing"]:
            return False
        if await self.machine.resolve_trust(device) < self.machine.share_keys_min_trust:
            raise RejectKeyShare(f"untrusted device {device.device_id}",
                                 RoomKeyWithheldCode.UNVERIFIED, "Your device is not trusted")
        await self._members(request.room_id, self.intent)  # fills the cache
        member = await self.cache.get_member(request.room_id, device.user_id)
        if member is None or member.membership != Membership.JOIN:
            raise RejectKeyShare(f"{device.user_id} is not in {request.room_id}",
                                 RoomKeyWithheldCode.UNAUTHORIZED, "You're not in that room")
        return True
