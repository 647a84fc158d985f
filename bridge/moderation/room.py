"""The moderation room: made by the bot at first start (private, encrypted when encryption is
allowed: evidence is sensitive) or named by bridge.moderation_room; the admins are invited.
Reports and automatic suspensions are posted there; moderators give their commands there."""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

import asyncpg
from mautrix.appservice import AppService, IntentAPI
from mautrix.errors import MatrixRequestError
from mautrix.types import RoomCreatePreset

from bridge.config import Config
from bridge.store import bridge_state

log = logging.getLogger("bridge.moderation")

STATE_KEY = "moderation_room"
ROOM_NAME = "Stranger Bridge moderation"
# (room ID, message key, cause, values): Handler.reply, which encrypts when the room is.
Reply = Callable[..., Awaitable[None]]


class ModerationRoom:
    def __init__(self, appservice: AppService, pool: asyncpg.Pool, config: Config,
                 reply: Reply) -> None:
        self.appservice = appservice
        self.pool = pool
        self.config = config
        self.reply = reply
        self.room_id: str | None = None

    @property
    def bot(self) -> IntentAPI:
        return self.appservice.intent

    async def start(self, encrypted: bool) -> str | None:
        """Find, join or make the room, and invite any admin not in it yet."""
        admins = self.config["bridge.admins"]
        configured = self.config["bridge.moderation_room"]
        if configured:
            room_id = await self.bot.join_room(configured)
        else:
            room_id = await bridge_state.get(self.pool, STATE_KEY)
            if room_id is None and admins:
                room_id = await self._create(encrypted)
        self.room_id = room_id
        if room_id is None:
            log.warning("No moderation room (bridge.admins is empty): reports are filed, "
                        "but no one is told")
            return None
        await self._invite_admins(room_id, admins)
        log.info("Moderation room %s", room_id)
        return room_id

    async def _create(self, encrypted: bool) -> str:
        initial_state = [{"type": "m.room.history_visibility", "state_key": "",
                          "content": {"history_visibility": "invited"}},
                         {"type": "m.room.guest_access", "state_key": "",
                          "content": {"guest_access": "forbidden"}}]
        if encrypted:
            initial_state.append({"type": "m.room.encryption", "state_key": "",
                                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
        # No invitees here: createRoom fails whole when one invitee's server is unreachable.
        room_id = await self.bot.create_room(preset=RoomCreatePreset.PRIVATE, name=ROOM_NAME,
                                             initial_state=initial_state)
        await bridge_state.put(self.pool, STATE_KEY, room_id)
        log.info("Created the moderation room %s (encrypted: %s)", room_id, encrypted)
        return room_id

    async def _invite_admins(self, room_id: str, admins: list[str]) -> None:
        try:
            members = set(await self.bot.get_joined_members(room_id))
        except MatrixRequestError as e:
            log.warning("Cannot list the moderation room's members: %s", e)
            members = set()
        for admin in admins:
            if admin in members:
                continue
            try:
                await self.bot.invite_user(room_id, admin)
            except MatrixRequestError as e:
                # Already invited, or their server is away: said, not fatal.
                log.info("Inviting %s to the moderation room: %s", admin, e)

    async def post(self, key: str, cause: str, **values: str) -> None:
        if self.room_id is None:
            log.warning("No moderation room: %s not posted", key)
            return
        await self.reply(self.room_id, key, cause, **values)
