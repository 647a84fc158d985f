"""A conversation's two rooms and ghosts: open them, greet, say goodbye and clean up.

Every step can be repeated: after a crash, start-up calls open() and close() again for
whatever the database says is unfinished.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Awaitable, Callable

import asyncpg
from mautrix.api import Method, Path
from mautrix.appservice import AppService, IntentAPI
from mautrix.client import ClientAPI
from mautrix.errors import MatrixConnectionError, MatrixRequestError, MUserInUse
from mautrix.types import (EncryptionAlgorithm, EventType, Membership,
                           RoomEncryptionStateEventContent)

from bridge.i18n import messages
from bridge.config import Config
from bridge.encryption.crypto import Crypto
from bridge.encryption.ghost_devices import GhostDevices
from bridge.group_calls import GROUP_CALL_STATE_TYPES
from bridge.i18n.notices import language_of_room, notice_content
from bridge.store import calls as call_ids
from bridge.store import conversations, room_partitions, users
from bridge.store.conversations import Conversation, Side

log = logging.getLogger("bridge.portal")

# Reasons a conversation ends, as stored in conversations.end_reason.
LEFT, NEXT, STOP, INVITE_TIMEOUT, INVITE_FAILED = (
    "left", "next", "stop", "invite_timeout", "invite_failed")
# ...and those safety imposes: the user's !report or !block, a restriction (ban, policy
# list, server list), a flood. The partner sees only "Stranger has disconnected.".
REPORTED, BLOCKED, RESTRICTED, FLOODED = "reported", "blocked", "restricted", "flooded"


# Synapse's default power needed per state event (createRoom's override replaces the whole
# "events" map, so it is spelled out).
DEFAULT_EVENT_POWER = {
    "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
    "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
    "m.room.server_acl": 100, "m.room.encryption": 100,
}


def txn_id(kind: str, *parts: object) -> str:
    """A transaction ID derived from what caused the send, so a repeated send (after a crash,
    or a retried transaction) is deduplicated by the homeserver instead of sent twice."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:40]
    return f"sb-{kind}-{digest}"


class Portal:
    def __init__(self, appservice: AppService, pool: asyncpg.Pool, config: Config) -> None:
        self.appservice = appservice
        self.pool = pool
        self.config = config
        # Told (room IDs, ghost IDs) once a conversation is fully closed, to drop caches.
        self.on_closed: Callable[[list[str], list[str]], None] | None = None
        # Set when bridge.encryption.allow: the bot's device (to see whether a user's DM is
        # encrypted) and the ghosts' own devices (for encrypted chat rooms).
        self.bot_crypto: Crypto | None = None
        self.ghost_devices: GhostDevices | None = None
        # A notice each side gets before its greeting, (key, values) or None: question
        # mode's question. Awaited before the conversation becomes active.
        self.opening_notice: (Callable[[Conversation], Awaitable[tuple[str, dict] | None]]
                              | None) = None
        # Several processes (bridge/cluster/): a partition this process owns, for a new
        # conversation's rooms (so this process goes on handling them, with both ghosts'
        # encryption devices, which it made). None: one process.
        self.choose_partition: Callable[[int], int] | None = None

    def ghost(self, ghost_id: str) -> IntentAPI:
        return self.appservice.intent.user(ghost_id)

    async def language(self, room_id: str) -> str:
        """The language of the user this chat room is for."""
        return await language_of_room(self.pool, room_id, self.config["bridge.default_language"])

    async def notice(self, intent: IntentAPI, room_id: str, key: str, *, cause: str,
                     **values: messages.Value) -> str:
        """The ghost says `key` in its room, in the language of that room's user."""
        content = notice_content(await self.language(room_id), key,
                                 prefix=self.config["bridge.command_prefix"], **values)
        return await self.send(intent.mxid, room_id, "m.room.message", content.serialize(),
                               txn_id(key, room_id, cause))

    async def send(self, ghost_id: str, room_id: str, event_type: str, content: dict,
                   txn: str) -> str:
        """Send as the ghost, encrypted with the ghost's own device when the room is."""
        etype = EventType.find(event_type, EventType.Class.MESSAGE)
        if self.ghost_devices and await self.ghost_devices.is_encrypted(ghost_id, room_id):
            device = await self.ghost_devices.get(ghost_id)
            _, content = await device.encrypt(room_id, event_type, content)
            etype = EventType.ROOM_ENCRYPTED
        # The plain client call: the ghost made this room and keeps its top power level, so
        # IntentAPI's checks (membership, then power levels and the create event: two
        # look-ups per room) would only cost the homeserver requests.
        return await ClientAPI.send_message_event(self.ghost(ghost_id), room_id, etype, content,
                                                  txn_id=txn)

    async def redact(self, ghost_id: str, room_id: str, event_id: str, txn: str) -> str:
        """Redact the ghost's own event (never encrypted: the homeserver applies it). The
        transaction ID makes a repeat after a crash a no-op, like send()."""
        response = await self.ghost(ghost_id).api.request(
            Method.PUT, Path.v3.rooms[room_id].redact[event_id][txn], content={})
        return response["event_id"]

    async def should_encrypt(self, user_id: str) -> bool:
        """bridge.encryption.default: true/false, or auto: like the user's own DM with the bot
        (encrypted there means their client does E2EE; plain may mean it cannot)."""
        if self.ghost_devices is None:
            return False
        default = self.config["bridge.encryption.default"]
        if isinstance(default, bool):
            return default
        user = await users.get(self.pool, user_id)
        return bool(user and user.dm_room_id and self.bot_crypto
                    and await self.bot_crypto.is_encrypted(user.dm_room_id))

    # -- opening ----------------------------------------------------------------------------

    async def open(self, conversation_id: int) -> bool:
        """Create each side's room with its ghost, inviting the user. False when an invite
        could not be delivered at all (the caller ends the conversation)."""
        conv = await conversations.get(self.pool, conversation_id)
        if conv is None or conv.state != "opening":
            return True
        # Both sides at once; each is allowed to finish before an error is raised, so a
        # retry never runs alongside a side still being opened.
        results = await asyncio.gather(*(self._open_side(conv, side) for side in conv.sides),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return all(results)

    async def _open_side(self, conv: Conversation, side: Side) -> bool:
        room_id, invited = side.room_id, False
        if room_id is None:
            created = await self._create_room(conv, side)
            if created is None:
                return True  # the conversation ended first: nothing was made
            room_id, invited = created
            # Opening can take long (a slow homeserver): the conversation may have ended
            # meanwhile (invite deadline, a !stop), its cleanup finding no room to clean.
            # The room is recorded now, so whichever of us reads second cleans it up (and
            # takes back the invite).
            now = await conversations.get(self.pool, conv.id)
            if now is not None and now.state != "opening":
                log.info("Conversation %d ended while opening: side %d room abandoned",
                         conv.id, side.side)
                await self._close_side(now, now.sides[side.side])
                return True
        if side.joined_at is None and not invited:
            try:
                await self.ghost(side.ghost_id).invite_user(
                    room_id, side.user_id, extra_content={"is_direct": True})
            except MatrixRequestError as e:
                log.warning("Conversation %d: invite to side %d failed: %s",
                            conv.id, side.side, e)
                return False
        return True

    async def register_ghost(self, ghost: IntentAPI) -> bool:
        """Register the ghost; True when it was new just now, so it cannot be in any room
        yet (False after an earlier attempt, in this process or before a crash)."""
        store = self.appservice.state_store
        if await store.is_registered(ghost.mxid):
            return False
        try:
            await ghost.api.request(Method.POST, Path.v3.register, {
                "username": ghost.localpart, "type": "m.login.application_service",
                "inhibit_login": True}, query_params={"kind": "user"})
            fresh = True
        except MUserInUse:
            fresh = False
        await store.registered(ghost.mxid)
        return fresh

    async def _create_room(self, conv: Conversation, side: Side) -> tuple[str, bool] | None:
        """This side's room: (its ID, whether the user is invited already), or None when
        the conversation ended before the room was made."""
        ghost = self.ghost(side.ghost_id)
        if not await self.register_ghost(ghost):
            # This side's ghost is new and only ever joins this side's room: a room it is in
            # already is one whose creation an earlier attempt did not record (createRoom
            # has no transaction ID). Reuse it rather than leave it orphaned.
            joined = await ghost.get_joined_rooms()
            if joined:
                await self._place(conv, joined[0])
                await conversations.set_room(self.pool, conv.id, side.side, joined[0])
                log.info("Conversation %d: side %d room %s (recovered)",
                         conv.id, side.side, joined[0])
                return joined[0], False
        initial_state = [{"type": "m.room.history_visibility", "state_key": "",
                          "content": {"history_visibility": "invited"}},
                         {"type": "m.room.guest_access", "state_key": "",
                          "content": {"guest_access": "forbidden"}}]
        # The creator's membership carries its profile: named before the room is made.
        naming = ghost.set_displayname(self.config["bridge.ghost_displayname"],
                                       check_current=False)
        encrypted = await self.should_encrypt(side.user_id)
        if encrypted:
            # The ghost's device (and its keys) must exist before the user can encrypt to it.
            await asyncio.gather(naming, self.ghost_devices.get(side.ghost_id))
            initial_state.append({"type": "m.room.encryption", "state_key": "",
                                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
        else:
            await naming
        now = await conversations.get(self.pool, conv.id)
        if now is None or now.state != "opening":
            # Ended meanwhile (its cleanup may have run already): no room, no invite.
            log.info("Conversation %d ended before side %d's room was made", conv.id, side.side)
            await self._close_side(now or conv, side)
            return None
        store = self.appservice.state_store
        try:
            # Not retried by mautrix: createRoom has no transaction ID, so a retry after a
            # failure that made the room (its invite refused, a lost answer) makes another.
            created = await ghost.api.request(Method.POST, Path.v3.createRoom, {
                "preset": "private_chat", "is_direct": True, "invite": [side.user_id],
                "initial_state": initial_state,
                # The user may turn encryption on later (their client offers it in a DM), and
                # may start an Element Call: it is not relayed, but they are told so (calls.py).
                "power_level_content_override": {"events": {
                    **DEFAULT_EVENT_POWER, "m.room.encryption": 0,
                    **{t: 0 for t in GROUP_CALL_STATE_TYPES}}},
            }, retry_count=0)
            room_id, invited = created["room_id"], True
            await store.set_membership(room_id, side.user_id, Membership.INVITE)
        except (MatrixRequestError, MatrixConnectionError, asyncio.TimeoutError) as e:
            # createRoom makes the room, then invites: an invite the user's homeserver
            # refused (or could not be reached for) fails the call but leaves the room.
            joined = await ghost.get_joined_rooms()
            if not joined:
                raise
            log.warning("Conversation %d: side %d room made, but not its invite: %s",
                        conv.id, side.side, e)
            room_id, invited = joined[0], False
        # Known from the start, so sending needs no look-up; a change arrives as a state
        # event in a transaction (Crypto.handle_state).
        store.encryption[room_id] = (RoomEncryptionStateEventContent(
            algorithm=EncryptionAlgorithm.MEGOLM_V1) if encrypted else None)
        await self._place(conv, room_id)
        await conversations.set_room(self.pool, conv.id, side.side, room_id)
        log.info("Conversation %d: side %d room %s", conv.id, side.side, room_id)
        return room_id, invited

    async def _place(self, conv: Conversation, room_id: str) -> None:
        """Several processes: the room goes in its conversation's partition (chosen by the
        first side placed; a resumed opening keeps it). Events recorded before this are
        handled where the room ID hashes to, each in turn (inbox.partition)."""
        if self.choose_partition is not None:
            partition = await room_partitions.claim(self.pool, conv.id,
                                                    self.choose_partition(conv.id))
            await room_partitions.put(self.pool, room_id, partition)

    async def greet(self, conv: Conversation) -> None:
        first = await self.opening_notice(conv) if self.opening_notice else None
        for side in conv.sides:
            if first is not None:
                await self.notice(self.ghost(side.ghost_id), side.room_id, first[0],
                                  cause=conv.id, **first[1])
            # Shared tags, or that the match fell back on this side's interests / language.
            key, values = messages.chat_opened(conv.shared_tags, side.interests_unmet,
                                               side.language_unmet)
            await self.notice(self.ghost(side.ghost_id), side.room_id, key, cause=conv.id,
                              **values)

    # -- closing ----------------------------------------------------------------------------

    async def close(self, conversation_id: int) -> None:
        """Say goodbye in each room still open, then take the ghosts out."""
        conv = await conversations.get(self.pool, conversation_id)
        if conv is None or conv.state != "ended":
            return
        closing = [side for side in conv.sides if side.closed_at is None]
        told = [t for t in [await self._goodbye(conv, side) for side in closing] if t is not None]
        if told:
            # A user told their partner left may be leaving in the same moment. Their leave
            # reaches us only while a ghost is still in their room (a homeserver sends an
            # appservice the events of rooms its users are in): stay a moment, counted from
            # the first goodbye (a close resumed after a restart waits only what is left).
            await asyncio.sleep(max(0.0, self.config["bridge.goodbye_linger"] - max(told)))
        for side in closing:
            await self._close_side(conv, side, goodbye_said=True)
            await conversations.mark_closed(self.pool, conv.id, side.side)
        await call_ids.forget(self.pool, conv.id)  # no call event is relayed any more
        if self.choose_partition is not None:
            await room_partitions.forget(self.pool, [s.room_id for s in conv.sides if s.room_id])
        if self.on_closed:
            self.on_closed([s.room_id for s in conv.sides if s.room_id],
                           [s.ghost_id for s in conv.sides])

    async def _close_side(self, conv: Conversation, side: Side, goodbye_said: bool = False) -> None:
        """Goodbye, the ghost out of the room, and its encryption device deleted: every path
        that closes a side (an ended conversation, a room abandoned while opening) ends here."""
        if side.room_id is not None:
            if not goodbye_said:
                await self._goodbye(conv, side)
            await self._ghost_leaves(conv, side)
        if self.ghost_devices:
            # Also when the room was never recorded: the device is made before the room.
            await self.ghost_devices.forget(side.ghost_id)

    async def _goodbye(self, conv: Conversation, side: Side) -> float | None:
        """Tell the side why the chat ended. When told that the partner left, the moment is
        recorded (a leave of theirs stamped before it was a leave to rematch) and the seconds
        since it are returned."""
        if side.room_id is None:
            return None
        ghost = self.ghost(side.ghost_id)
        partner = conv.partner_of(side)
        try:
            if side.joined_at is None:
                # Take back an invite nobody accepted, so it doesn't linger in their client.
                reason = messages.text("invite_expired_reason", await self.language(side.room_id))
                await ghost.kick_user(side.room_id, side.user_id, reason=reason)
            elif conv.ended_by == side.user_id and conv.end_reason in (NEXT, STOP, REPORTED,
                                                                       BLOCKED):
                await self.notice(ghost, side.room_id, "you_left", cause=conv.id)
            elif conv.ended_by == partner.user_id:
                await self.notice(ghost, side.room_id, "partner_left", cause=conv.id)
                return await conversations.mark_goodbye(self.pool, conv.id, side.side)
            elif conv.end_reason in (INVITE_TIMEOUT, INVITE_FAILED):
                await self.notice(ghost, side.room_id, "partner_no_show", cause=conv.id)
        except MatrixRequestError as e:
            # The user may have left already (or rejected the invite): no one to tell.
            if e.http_status >= 500 or e.http_status == 429:
                raise
            log.info("Conversation %d: closing side %d: %s", conv.id, side.side, e)
        return None

    async def _ghost_leaves(self, conv: Conversation, side: Side) -> None:
        ghost = self.ghost(side.ghost_id)
        try:
            # Whatever became of the goodbye, the ghost must not stay in the room.
            await ghost.leave_room(side.room_id)
        except MatrixRequestError as e:
            if e.http_status >= 500 or e.http_status == 429:
                raise
            log.info("Conversation %d: leaving side %d: %s", conv.id, side.side, e)
