"""A conversation's two rooms and ghosts: open them, greet, say goodbye and clean up.

Every step can be repeated: after a crash, start-up calls open() and close() again for
whatever the database says is unfinished.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Callable

import asyncpg
from mautrix.appservice import AppService, IntentAPI
from mautrix.errors import MatrixRequestError
from mautrix.types import EventType, MessageType, RoomCreatePreset, TextMessageEventContent

from bridge import messages
from bridge.config import Config
from bridge.encryption.crypto import Crypto
from bridge.encryption.ghost_devices import GhostDevices
from bridge.store import conversations, users
from bridge.store.conversations import Conversation, Side

log = logging.getLogger("bridge.portal")

# Reasons a conversation ends, as stored in conversations.end_reason.
LEFT, NEXT, STOP, INVITE_TIMEOUT, INVITE_FAILED = (
    "left", "next", "stop", "invite_timeout", "invite_failed")
# Ended by the user's !report or !block, or because a restriction on them started (the
# partner sees only "Stranger has disconnected.", as for any leave).
REPORTED, BLOCKED, RESTRICTED = "reported", "blocked", "restricted"


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

    def ghost(self, ghost_id: str) -> IntentAPI:
        return self.appservice.intent.user(ghost_id)

    async def notice(self, intent: IntentAPI, room_id: str, key: str, *, cause: str,
                     **values: str) -> str:
        content = TextMessageEventContent(
            msgtype=MessageType.NOTICE,
            body=messages.text(key, prefix=self.config["bridge.command_prefix"], **values))
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
        return await self.ghost(ghost_id).send_message_event(room_id, etype, content, txn_id=txn)

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
        """Create each side's room with its ghost and invite the user. False when an invite
        could not be delivered at all (the caller ends the conversation)."""
        conv = await conversations.get(self.pool, conversation_id)
        if conv is None or conv.state != "opening":
            return True
        for side in conv.sides:
            room_id = side.room_id
            if room_id is None:
                room_id = await self._create_room(conv, side)
                # Opening can take long (a slow homeserver): the conversation may have ended
                # meanwhile (invite deadline, a !stop), its cleanup finding no room to clean.
                # The room is recorded now, so whichever of us reads second cleans it up.
                now = await conversations.get(self.pool, conversation_id)
                if now is not None and now.state != "opening":
                    log.info("Conversation %d ended while opening: side %d room abandoned",
                             conv.id, side.side)
                    await self._close_side(now, now.sides[side.side])
                    return True
            if side.joined_at is None:
                try:
                    await self.ghost(side.ghost_id).invite_user(
                        room_id, side.user_id, extra_content={"is_direct": True})
                except MatrixRequestError as e:
                    log.warning("Conversation %d: invite to side %d failed: %s",
                                conv.id, side.side, e)
                    return False
        return True

    async def _create_room(self, conv: Conversation, side: Side) -> str:
        ghost = self.ghost(side.ghost_id)
        await ghost.ensure_registered()
        # This side's ghost is new and only ever joins this side's room: a room it is in
        # already is one whose creation a crash interrupted before it was recorded
        # (createRoom has no transaction ID). Reuse it rather than leave it orphaned.
        joined = await ghost.get_joined_rooms()
        if joined:
            await conversations.set_room(self.pool, conv.id, side.side, joined[0])
            log.info("Conversation %d: side %d room %s (recovered)", conv.id, side.side, joined[0])
            return joined[0]
        await ghost.set_displayname(self.config["bridge.ghost_displayname"], check_current=False)
        initial_state = [{"type": "m.room.history_visibility", "state_key": "",
                          "content": {"history_visibility": "invited"}},
                         {"type": "m.room.guest_access", "state_key": "",
                          "content": {"guest_access": "forbidden"}}]
        if await self.should_encrypt(side.user_id):
            # The ghost's device (and its keys) must exist before the user can encrypt to it.
            await self.ghost_devices.get(side.ghost_id)
            initial_state.append({"type": "m.room.encryption", "state_key": "",
                                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
        # No invitees here: createRoom fails whole when the invitee's server is unreachable.
        room_id = await ghost.create_room(
            preset=RoomCreatePreset.PRIVATE,
            is_direct=True,
            initial_state=initial_state,
            # The user may turn encryption on later (their client offers it in a DM).
            power_level_override={"events": {**DEFAULT_EVENT_POWER, "m.room.encryption": 0}},
        )
        await conversations.set_room(self.pool, conv.id, side.side, room_id)
        log.info("Conversation %d: side %d room %s", conv.id, side.side, room_id)
        return room_id

    async def greet(self, conv: Conversation) -> None:
        for side in conv.sides:
            # Shared tags, or that the match fell back on this side's interests / language.
            key, values = messages.chat_opened(conv.shared_tags, side.interests_unmet,
                                               side.language_unmet)
            await self.notice(self.ghost(side.ghost_id), side.room_id, key, cause=conv.id,
                              **values)

    # -- closing ----------------------------------------------------------------------------

    async def close(self, conversation_id: int) -> None:
        """Say goodbye in each room still open and take the ghost out of it."""
        conv = await conversations.get(self.pool, conversation_id)
        if conv is None or conv.state != "ended":
            return
        for side in conv.sides:
            if side.closed_at is None:
                await self._close_side(conv, side)
                await conversations.mark_closed(self.pool, conv.id, side.side)
        if self.on_closed:
            self.on_closed([s.room_id for s in conv.sides if s.room_id],
                           [s.ghost_id for s in conv.sides])

    async def _close_side(self, conv: Conversation, side: Side) -> None:
        """Goodbye, the ghost out of the room, and its encryption device deleted: every path
        that closes a side (an ended conversation, a room abandoned while opening) ends here."""
        if side.room_id is not None:
            await self._leave_side(conv, side)
        if self.ghost_devices:
            # Also when the room was never recorded: the device is made before the room.
            await self.ghost_devices.forget(side.ghost_id)

    async def _leave_side(self, conv: Conversation, side: Side) -> None:
        ghost = self.ghost(side.ghost_id)
        partner = conv.partner_of(side)
        try:
            if side.joined_at is None:
                # Take back an invite nobody accepted, so it doesn't linger in their client.
                await ghost.kick_user(side.room_id, side.user_id, reason="The invite expired")
            elif conv.ended_by == side.user_id and conv.end_reason in (NEXT, STOP, REPORTED,
                                                                       BLOCKED):
                await self.notice(ghost, side.room_id, "you_left", cause=conv.id)
            elif conv.ended_by == partner.user_id:
                await self.notice(ghost, side.room_id, "partner_left", cause=conv.id)
            elif conv.end_reason in (INVITE_TIMEOUT, INVITE_FAILED):
                await self.notice(ghost, side.room_id, "partner_no_show", cause=conv.id)
        except MatrixRequestError as e:
            # The user may have left already (or rejected the invite): no one to tell.
            if e.http_status >= 500 or e.http_status == 429:
                raise
            log.info("Conversation %d: closing side %d: %s", conv.id, side.side, e)
        try:
            # Whatever became of the goodbye, the ghost must not stay in the room.
            await ghost.leave_room(side.room_id)
        except MatrixRequestError as e:
            if e.http_status >= 500 or e.http_status == 429:
                raise
            log.info("Conversation %d: leaving side %d: %s", conv.id, side.side, e)
