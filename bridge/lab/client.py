"""A Matrix client for tests and benchmarks, built on matrix-nio.

It syncs in the background and keeps *every* raw event it receives (timeline, state, invite
state, ephemeral, account data, to-device, presence) in one in-memory log, so a test can wait
for what it expects. Separately it keeps everything the client ever received, for the whole
test and after its chats end: every JSON response body whole (each /sync with its room
summaries, device lists and key counts; /keys/query; every other answer), every decrypted
room event and every decrypted to-device payload (``received()``), so a test can scan all of
it for leaked identifiers (tests/e2e/anonymity.py).

``login(encrypted=True)`` gives the client a real E2EE device (nio with ``matrix-nio[e2e]``,
its own store): it uploads its keys, tracks device lists, encrypts what it sends and
decrypts what it gets. ``Seen.source`` stays the raw event as received; ``Seen.decrypted``
is nio's decryption, which ``type``, ``content`` and ``body`` show when there is one.
"""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
from nio import (AsyncClient, AsyncClientConfig, JoinError, MegolmEvent, RoomCreateError,
                 RoomLeaveError, RoomPreset, RoomSendError, SyncError)

from .synapse import LabUser

SYNC_TIMEOUT_MS = 30000
# Synapse's default timeline limit is 10: more events between two syncs would leave a gap.
SYNC_FILTER = {"room": {"timeline": {"limit": 1000}}}


class LabClientError(RuntimeError):
    def __init__(self, message: str, errcode: str | None = None):
        super().__init__(message)
        self.errcode = errcode


@dataclass
class Seen:
    """One raw event as received, where it was found, and nio's parsed object when it has one."""

    index: int
    room_id: str | None  # None for to-device, presence and global account data
    section: str  # timeline | state | invite | ephemeral | account_data | to_device | presence
    source: dict[str, Any]
    event: Any = None
    decrypted: dict[str, Any] | None = None  # nio's decryption of an m.room.encrypted event
    decrypted_later: bool = False  # keys came late: a decrypted copy was logged after it
    at: float = field(default_factory=time.monotonic)  # when this client logged it

    type = property(lambda self: (self.decrypted or self.source).get("type"))
    raw_type = property(lambda self: self.source.get("type"))
    sender = property(lambda self: self.source.get("sender"))
    event_id = property(lambda self: self.source.get("event_id"))
    state_key = property(lambda self: self.source.get("state_key"))

    @property
    def undecryptable(self) -> bool:
        return self.raw_type == "m.room.encrypted" and self.decrypted is None

    @property
    def content(self) -> dict[str, Any]:
        content = (self.decrypted or self.source).get("content")
        return content if isinstance(content, dict) else {}

    @property
    def body(self) -> str | None:
        return self.content.get("body")

    @property
    def membership(self) -> str | None:
        return self.content.get("membership") if self.type == "m.room.member" else None

    def short(self) -> str:
        where = f"{self.room_id} " if self.room_id else ""
        detail = self.membership or (repr(self.body)[:60] if self.body is not None else "")
        return f"#{self.index} {self.section} {where}{self.type} from {self.sender} {detail}".rstrip()


@dataclass
class Received:
    """One thing the client received: a response body, or a decryption of something in one."""

    what: str  # "GET /_matrix/client/v3/sync", "decrypted room event", "decrypted to-device"
    body: Any


class _RecordingAsyncClient(AsyncClient):
    """Keeps the raw JSON of every response (nio otherwise only parses it), the last /sync
    apart for the event log."""

    last_sync_body: dict[str, Any] | None = None
    received: list[Received]

    async def parse_body(self, transport_response: aiohttp.ClientResponse) -> dict[Any, Any]:
        body = await super().parse_body(transport_response)
        copied = copy.deepcopy(body)  # nio's parsing must not alter our copy
        self.received.append(Received(
            f"{transport_response.method} {transport_response.url.path}", copied))
        if transport_response.url.path.endswith("/sync"):
            self.last_sync_body = copied
        return body

    def record_decrypted_to_device(self) -> None:
        """Keep every Olm payload this device decrypts (room keys, forwarded keys, dummies
        and types nio ignores), as decrypted: nio keeps only what it understands."""
        olm = self.olm
        if olm is None:
            return
        verify = olm._verify_olm_payload

        def recording_verify(sender: str, payload: dict[Any, Any]) -> bool:
            self.received.append(Received("decrypted to-device", copy.deepcopy(payload)))
            return verify(sender, payload)

        olm._verify_olm_payload = recording_verify  # type: ignore[method-assign]


class LabClient:
    def __init__(self, user: LabUser, client: AsyncClient):
        self.user = user
        self.nio = client
        self.display_name = ""  # set by whoever gave the user one (BridgedLab.client)
        self.log: list[Seen] = []
        self.sync_error: object | None = None  # last failure of the sync loop, for diagnostics
        self._cond = asyncio.Condition()
        self._sync_task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._own_store: str | None = None  # a temporary E2EE store removed on close

    @classmethod
    async def login(cls, user: LabUser, store_path: str | None = None,
                    encrypted: bool = False) -> "LabClient":
        """Use the user's existing access token and device (no password login).
        `encrypted`: an E2EE device, its keys in `store_path` (a new temporary directory
        when not given); its keys are uploaded on the first sync."""
        own_store = encrypted and not store_path
        if own_store:
            store_path = tempfile.mkdtemp(prefix="labclient-")
        config = AsyncClientConfig(encryption_enabled=encrypted, store_sync_tokens=False,
                                   max_timeouts=5, max_limit_exceeded=0,
                                   request_timeout=SYNC_TIMEOUT_MS / 1000 + 30)
        client = _RecordingAsyncClient(user.homeserver.client_url, user.user_id,
                                       device_id=user.device_id, store_path=store_path or "",
                                       config=config)
        client.received = []
        client.restore_login(user.user_id, user.device_id, user.access_token)
        client.record_decrypted_to_device()
        lab_client = cls(user, client)
        lab_client._own_store = store_path if own_store else None
        return lab_client

    @property
    def user_id(self) -> str:
        return self.user.user_id

    # ---- syncing and the event log ----

    async def start_syncing(self) -> None:
        """Run one immediate sync (so the log holds the current state on return), then long-poll."""
        if self._sync_task is not None:
            return
        await self._sync_once(timeout_ms=0)
        self._sync_task = asyncio.create_task(self._sync_loop(), name=f"sync {self.user_id}")

    async def _sync_loop(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._sync_once(SYNC_TIMEOUT_MS)
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # homeserver restarting, connection reset, ...
                self.sync_error = exc
                await asyncio.sleep(delay)  # retry backoff, not a wait for data
                delay = min(delay * 2, 5.0)

    async def _sync_once(self, timeout_ms: int) -> None:
        self.nio.last_sync_body = None  # type: ignore[attr-defined]
        resp = await self.nio.sync(timeout=timeout_ms, sync_filter=SYNC_FILTER)
        if isinstance(resp, SyncError):
            raise LabClientError(f"sync failed: {resp.message}", resp.status_code)
        body = self.nio.last_sync_body  # type: ignore[attr-defined]
        if body:
            await self._record(body, self._nio_events(resp))
        if self.nio.olm is not None:
            await self._crypto_upkeep()

    async def _crypto_upkeep(self) -> None:
        """What nio's sync_forever does between syncs: keys up, device lists, Olm sessions;
        then a second chance for events whose room key came in a later sync."""
        if self.nio.should_upload_keys:
            await self.nio.keys_upload()
        if self.nio.should_query_keys:
            await self.nio.keys_query()
        if self.nio.should_claim_keys:
            await self.nio.keys_claim(self.nio.get_users_for_key_claiming())
        await self.nio.send_to_device_messages()
        late = []
        for seen in self.log:
            if (seen.undecryptable and not seen.decrypted_later
                    and isinstance(seen.event, MegolmEvent)):
                try:
                    decrypted = self.nio.decrypt_event(seen.event)
                except Exception:  # still no key (nio raises EncryptionError)
                    continue
                if not isinstance(decrypted, MegolmEvent) and hasattr(decrypted, "source"):
                    seen.decrypted_later = True
                    late.append((seen, decrypted))
        if late:
            async with self._cond:
                for seen, decrypted in late:
                    self.log.append(Seen(len(self.log), seen.room_id, seen.section, seen.source,
                                         decrypted, decrypted.source))
                self._cond.notify_all()

    @staticmethod
    def _nio_events(resp: Any) -> dict[str, Any]:
        # nio's parsed objects by event ID (where it will later put decrypted events).
        found: dict[str, Any] = {}
        for rooms in (resp.rooms.join, resp.rooms.leave):
            for info in rooms.values():
                for ev in list(info.timeline.events) + list(info.state):
                    event_id = getattr(ev, "event_id", None)
                    if event_id:
                        found[event_id] = ev
        return found

    async def _record(self, body: dict[str, Any], parsed: dict[str, Any]) -> None:
        new: list[tuple[str | None, str, dict[str, Any]]] = []

        def add(room_id: str | None, section: str, events: Any) -> None:
            for ev in events or []:
                if isinstance(ev, dict):
                    new.append((room_id, section, ev))

        rooms = body.get("rooms") or {}
        for room_id, info in (rooms.get("invite") or {}).items():
            add(room_id, "invite", (info.get("invite_state") or {}).get("events"))
        for kind in ("join", "leave"):
            for room_id, info in (rooms.get(kind) or {}).items():
                add(room_id, "state", (info.get("state") or {}).get("events"))
                add(room_id, "timeline", (info.get("timeline") or {}).get("events"))
                add(room_id, "ephemeral", (info.get("ephemeral") or {}).get("events"))
                add(room_id, "account_data", (info.get("account_data") or {}).get("events"))
        add(None, "to_device", (body.get("to_device") or {}).get("events"))
        add(None, "presence", (body.get("presence") or {}).get("events"))
        add(None, "account_data", (body.get("account_data") or {}).get("events"))
        if changed := (body.get("device_lists") or {}).get("changed"):
            # Whose devices changed: lets a test wait for someone's new device to be known.
            add(None, "device_lists", [{"type": "device_lists", "changed": changed}])
        if not new:
            return
        async with self._cond:
            for room_id, section, source in new:
                nio_event = parsed.get(source.get("event_id", ""))
                clear = (nio_event.source if getattr(nio_event, "decrypted", False)
                         and source.get("type") == "m.room.encrypted" else None)
                self.log.append(Seen(len(self.log), room_id, section, source, nio_event, clear))
            self._cond.notify_all()

    def mark(self) -> int:
        """Position in the log; pass as ``since`` to wait only for events after this point."""
        return len(self.log)

    async def wait_for_event(self, predicate: Callable[[Seen], bool], timeout: float = 30,
                             since: int = 0, description: str = "event") -> Seen:
        """First logged event at or after *since* that matches; wakes on each sync, no polling."""
        if self._sync_task is None:
            await self.start_syncing()
        pos = since

        async def scan() -> Seen:
            nonlocal pos
            async with self._cond:
                while True:
                    while pos < len(self.log):
                        seen = self.log[pos]
                        pos += 1
                        if predicate(seen):
                            return seen
                    await self._cond.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            recent = "\n  ".join(s.short() for s in self.log[-10:]) or "(nothing)"
            error = f"; last sync error: {self.sync_error!r}" if self.sync_error else ""
            raise TimeoutError(f"{self.user_id}: no matching {description} within {timeout}s "
                               f"({len(self.log)} events seen{error}). Last ones:\n  {recent}"
                               ) from None

    async def wait_for_invite(self, predicate: Callable[[Seen], bool] | None = None,
                              timeout: float = 30, since: int = 0) -> str:
        """Room ID of an invite for this user; *predicate* sees the invite's member event."""
        def match(s: Seen) -> bool:
            return (s.section == "invite" and s.membership == "invite"
                    and s.state_key == self.user_id and (predicate is None or predicate(s)))
        seen = await self.wait_for_event(match, timeout, since, description="invite")
        assert seen.room_id is not None
        return seen.room_id

    async def wait_for_message(self, room_id: str, body: str | None = None,
                               sender: str | None = None, timeout: float = 30,
                               since: int = 0) -> Seen:
        def match(s: Seen) -> bool:
            return (s.room_id == room_id and s.section == "timeline" and s.type == "m.room.message"
                    and (body is None or s.body == body)
                    and (sender is None or s.sender == sender))
        return await self.wait_for_event(match, timeout, since,
                                         description=f"message {body!r} in {room_id}")

    def events_in(self, room_id: str) -> list[dict[str, Any]]:
        """Every raw event dict received for *room_id*, in any section, in arrival order."""
        return [s.source for s in self.log if s.room_id == room_id]

    def decrypted_events_in(self, room_id: str) -> list[dict[str, Any]]:
        """The decrypted form of every encrypted event received for *room_id*."""
        return [s.decrypted for s in self.log if s.room_id == room_id and s.decrypted]

    def received(self) -> list[Received]:
        """Everything this client received since it logged in, kept after it closes: every
        response body whole, then every room event as decrypted (decrypted to-device
        payloads are among the first, where they came in)."""
        return list(self.nio.received) + [  # type: ignore[attr-defined]
            Received("decrypted room event", s.decrypted) for s in self.log if s.decrypted]

    @property
    def identity_keys(self) -> dict[str, str]:
        """This device's curve25519 and ed25519 keys ({} without encryption)."""
        return dict(self.nio.olm.account.identity_keys) if self.nio.olm is not None else {}

    # ---- actions ----

    async def join(self, room_id: str, attempts: int = 8) -> None:
        # Right after a federated invite the join can be refused with M_FORBIDDEN "not
        # invited": the invite has not reached every part of the server yet. Retry.
        delay = 0.1
        for attempt in range(attempts):
            resp = await self.nio.join(room_id)
            if not isinstance(resp, JoinError):
                return
            if resp.status_code != "M_FORBIDDEN" or attempt == attempts - 1:
                raise LabClientError(f"{self.user_id} join {room_id}: {resp.message}",
                                     resp.status_code)
            await asyncio.sleep(delay)
            delay *= 2

    async def create_dm(self, user_id: str, encrypted: bool = False) -> str:
        """A DM the way clients make one: trusted_private_chat, is_direct, invitee listed."""
        initial_state = []
        if encrypted:
            initial_state.append({"type": "m.room.encryption", "state_key": "",
                                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
        resp = await self.nio.room_create(preset=RoomPreset.trusted_private_chat, is_direct=True,
                                          invite=[user_id], initial_state=initial_state)
        if isinstance(resp, RoomCreateError):
            raise LabClientError(f"{self.user_id} createRoom: {resp.message}", resp.status_code)
        return resp.room_id

    async def send_text(self, room_id: str, body: str, formatted_body: str | None = None,
                        reply_to: str | None = None,
                        mentions: list[str] | dict[str, Any] | None = None,
                        msgtype: str = "m.text") -> str:
        content: dict[str, Any] = {"msgtype": msgtype, "body": body}
        if formatted_body is not None:
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = formatted_body
        if reply_to is not None:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        if mentions is not None:
            content["m.mentions"] = mentions if isinstance(mentions, dict) else {"user_ids": mentions}
        return await self.send_raw(room_id, "m.room.message", content)

    async def send_raw(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        resp = await self.nio.room_send(room_id, event_type, content,
                                        ignore_unverified_devices=True)
        if isinstance(resp, RoomSendError):
            raise LabClientError(f"{self.user_id} send {event_type} to {room_id}: "
                                 f"{resp.message}", resp.status_code)
        return resp.event_id

    async def leave(self, room_id: str) -> None:
        resp = await self.nio.room_leave(room_id)
        if isinstance(resp, RoomLeaveError):
            raise LabClientError(f"{self.user_id} leave {room_id}: {resp.message}",
                                 resp.status_code)

    async def api(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """Raw client-server call (``path`` from ``/_matrix/...``) for anything not wrapped here."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.user.access_token}"})
        url = self.user.homeserver.client_url + path
        data = None if body is None else json.dumps(body)
        async with self._session.request(method, url, data=data) as resp:
            result = await resp.json(content_type=None)
            self.nio.received.append(  # type: ignore[attr-defined]
                Received(f"{method} {path.split('?')[0]}", copy.deepcopy(result)))
            if resp.status != 200:
                raise LabClientError(f"{method} {path}: HTTP {resp.status} {result}",
                                     (result or {}).get("errcode"))
            return result

    async def close(self) -> None:
        task, self._sync_task = self._sync_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.nio.close()
        if self._own_store:
            shutil.rmtree(self._own_store, ignore_errors=True)
