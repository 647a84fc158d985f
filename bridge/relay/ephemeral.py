"""Typing notifications and read receipts, mirrored into the partner's room by the ghost that
stands for the user.

They arrive in the appservice transactions (`receive_ephemeral` in the registration) and are
sent once; they are not worth storing (a lost one is corrected by the next), so they are
handled after the transaction is answered, in the order they came. Only what the user of the
room did crosses, never which events or users it named: a receipt crosses as the ghost's
receipt on the partner's own copy of the event.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Callable

import asyncpg
from mautrix.api import Method, Path
from mautrix.errors import MatrixError, MNotFound

from bridge.background import Background
from bridge.dispatcher import is_transient
from bridge.portal import Portal
from bridge.store import conversations, relayed

log = logging.getLogger("bridge.relay.ephemeral")

# How long the partner sees "Stranger is typing" without news: the user's homeserver tells
# us when they stop, this only bounds a stop we never hear of.
TYPING_TIMEOUT_MS = 30_000
DELIVERY_CHECK_TIMEOUT = 30.0
RESEND_EVERY = 10.0
# Where the bot keeps the room it checks delivery in (one room, made at first start).
SELF_CHECK_ACCOUNT_DATA = "org.strangerbridge.self_check"


def typing_now(content: dict, user_id: str) -> bool | None:
    """Whether `user_id` is typing by an m.typing content (None: malformed)."""
    user_ids = content.get("user_ids")
    if not isinstance(user_ids, list):
        return None
    return user_id in user_ids


def read_by(content: dict, user_id: str) -> list[str]:
    """The events an m.receipt content says `user_id` has read (public receipts only:
    m.read.private is the user's own business)."""
    read = []
    for event_id, receipts in content.items():
        public = receipts.get("m.read") if isinstance(receipts, dict) else None
        if isinstance(event_id, str) and isinstance(public, dict) and user_id in public:
            read.append(event_id)
    return read


class EphemeralRelay:
    def __init__(self, pool: asyncpg.Pool, portal: Portal, background: Background) -> None:
        self.pool = pool
        self.portal = portal
        self.background = background
        self._pending: deque[list[dict]] = deque()
        self._worker: asyncio.Task | None = None  # runs while there is something pending
        self._check: tuple[str, asyncio.Future] | None = None  # (room, typing seen there)
        # Several processes (bridge/cluster/): the bot's typing may come back in a transaction
        # another process got; it tells them all (elsewhere), each hears it (heard).
        self.elsewhere: Callable[[str], None] | None = None

    def handle(self, events: list[dict]) -> None:
        """Take a transaction's ephemeral events (called before it is answered)."""
        events = [e for e in events if isinstance(e, dict) and isinstance(e.get("room_id"), str)
                  and isinstance(e.get("content"), dict)]
        if not events:
            return
        self._pending.append(events)
        if self._worker is None:
            self._worker = self.background.spawn(self._run(), "ephemeral relay")

    async def _run(self) -> None:
        try:
            while self._pending:
                for event in self._pending.popleft():
                    try:
                        await self._one(event)
                    except Exception as e:  # one lost typing or receipt: the next corrects it
                        if not is_transient(e):
                            log.exception("Could not mirror %s in %s", event.get("type"),
                                          event["room_id"])
                        else:
                            log.info("Could not mirror %s in %s: %s", event.get("type"),
                                     event["room_id"], e)
        finally:
            self._worker = None

    async def _one(self, event: dict) -> None:
        kind, room_id, content = event.get("type"), event["room_id"], event["content"]
        if kind == "m.typing" and typing_now(content, self.portal.appservice.intent.mxid):
            # Only the bot's delivery check makes the bot type.
            if self._check and self._check[0] == room_id:
                self.heard(room_id)
                return
            if self.elsewhere is not None:  # (maybe another process's check)
                self.elsewhere(room_id)
        if kind == "m.typing" and self._check and self._check[0] == room_id:
            return
        if kind not in ("m.typing", "m.receipt"):
            return
        side = await conversations.side_by_room(self.pool, room_id)
        if side is None or not side.live:
            return
        conv = await conversations.get(self.pool, side.conversation_id)
        if conv.state != "active":
            return
        partner = conv.partner_of(side)
        ghost = self.portal.ghost(partner.ghost_id)  # in the partner's room, standing for the user
        if kind == "m.typing":
            typing = typing_now(content, side.user_id)
            if typing is not None:
                await ghost.set_typing(partner.room_id, TYPING_TIMEOUT_MS if typing else 0)
            return
        for event_id in read_by(content, side.user_id):
            # Only the partner's messages (copies in this room) have an original to mark.
            original = await relayed.source_of(self.pool, conv.id, event_id)
            if original is not None:
                await ghost.api.request(
                    Method.POST, Path.v3.rooms[partner.room_id].receipt["m.read"][original],
                    content={})

    def heard(self, room_id: str) -> None:
        """The bot's typing in `room_id` reached the bridge (this process or another)."""
        if self._check and self._check[0] == room_id and not self._check[1].done():
            self._check[1].set_result(None)

    async def check_delivery(self, timeout: float = DELIVERY_CHECK_TIMEOUT) -> bool:
        """Type in the bot's own self-check room and wait for that to come back in a
        transaction; False (and an error saying what to fix) when it does not."""
        bot = self.portal.appservice.intent
        try:
            room_id = await self._self_check_room()
        except MatrixError as e:
            log.warning("Could not check that typing notifications reach the bridge: %s", e)
            return False
        seen = asyncio.get_running_loop().create_future()
        self._check = (room_id, seen)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            # Typed again now and then: a homeserver that believes us down for a moment
            # after a restart drops what it would have sent meanwhile.
            while not seen.done():
                if loop.time() >= deadline:
                    raise asyncio.TimeoutError
                await bot.set_typing(room_id, 5000)
                await asyncio.wait([seen], timeout=min(RESEND_EVERY, deadline - loop.time()))
            log.info("Typing notifications and read receipts reach the bridge")
            return True
        except asyncio.TimeoutError:
            log.error(
                "No typing notification reached the bridge within %.0fs: typing and read "
                "receipts will not be relayed. The registration needs receive_ephemeral: true "
                "(and de.sorunome.msc2409.push_ephemeral: true for older homeservers): run -g "
                "again or add them, then restart the homeserver", timeout)
            return False
        finally:
            self._check = None
            try:
                await bot.set_typing(room_id, 0)
            except Exception as e:  # (stopping, or the homeserver away: it times out anyway)
                log.debug("Could not stop typing in the self-check room: %s", e)

    async def _self_check_room(self) -> str:
        bot = self.portal.appservice.intent
        try:
            stored = await bot.get_account_data(SELF_CHECK_ACCOUNT_DATA)
            room_id = stored.get("room_id") if isinstance(stored, dict) else None
        except MNotFound:
            room_id = None
        if room_id and room_id in await bot.get_joined_rooms():
            return room_id
        room_id = await bot.create_room(
            name="Stranger Bridge self-check",
            topic="The bridge checks here that the homeserver sends it typing notifications")
        await bot.set_account_data(SELF_CHECK_ACCOUNT_DATA, {"room_id": room_id})
        return room_id
