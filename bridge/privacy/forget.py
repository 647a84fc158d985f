"""`!forget` in the DM: asked, confirmed within a window, then everything the bridge holds
about the user goes but the legal record (erase.py says what, and what stays).

In order: the user is taken out of everything the way a restriction takes them out
(enforcement.Enforcer.withdraw): a live chat ends first (a stop: the partner is told as usual;
a discusser's watching asker gets the usual goodbye), they leave the queue, a waiting
question is withdrawn and a watch ends as if they had left it; the database rows go in one
transaction (chats a report may still name keep the real ID for the grace period, then the
periodic purge calls scrub_due: erase.py); the bot answers, leaves the DM (it no longer knows
it is theirs) and drops the device list it kept of them. A ghost saying goodbye
in the user's encrypted chat room fetches that list again, so it is dropped once more when
that room is closed (closed()).
"""
from __future__ import annotations

import logging
import math

import asyncpg
from mautrix.util.async_db import Database

from bridge.i18n import messages
from bridge.encryption.crypto_store import forget_user
from bridge.moderation.enforcement import FORGET, Enforcer
from bridge.pairing import Pairing
from bridge.portal import STOP
from bridge.privacy import erase
from bridge.replies import Reply
from bridge.store import conversations

log = logging.getLogger("bridge.privacy.forget")

CONFIRM_WORD = "confirm"
FORGOTTEN = "forgotten"  # the reply's key once done: the handler then leaves the DM


class Forgetting:
    def __init__(self, pool: asyncpg.Pool, pairing: Pairing,
                 enforcer: Enforcer | None = None) -> None:
        self.pool = pool
        self.pairing = pairing
        self.config = pairing.config
        # The one way a user is taken out of everything (question mode's stoppers included).
        self.enforcer = enforcer or Enforcer(pool, self.config, pairing, pairing.notify_dm)
        self.crypto_db: Database | None = None  # set at start when encryption is allowed
        # Chat rooms of forgotten users still being closed -> the user, for closed().
        self._closing: dict[str, str] = {}

    @property
    def window(self) -> float:
        return self.config["bridge.privacy.forget_window"]

    @property
    def grace(self) -> float:
        """Reports are accepted this long after a chat: the real ID stays that long."""
        return self.config["bridge.moderation.evidence_grace"]

    async def command(self, user_id: str, args: str) -> Reply:
        """`!forget` asks, `!forget confirm` does it; anything else is explained."""
        word = args.strip().casefold()
        if word not in ("", CONFIRM_WORD):
            return Reply("forget_usage")
        left = await erase.cooldown_left(self.pool, user_id)
        if left > 0:
            return Reply("forget_cooldown", {"wait": messages.duration(max(1, math.ceil(left)))})
        minutes = f"{self.window / 60:g}"
        if word == "":
            await erase.ask(self.pool, user_id)
            return Reply("forget_confirm", {"minutes": minutes})
        if not await erase.asked_within(self.pool, user_id, self.window):
            return Reply("forget_not_asked", {"minutes": minutes})
        erased = await self._forget(user_id)
        log.info("A user was forgotten (%d conversations and %d questions under a stand-in "
                 "ID, %d kept for the report grace period, %d blocks of others kept)",
                 erased.conversations, erased.questions, erased.kept, erased.blocks_kept)
        return Reply(FORGOTTEN, {"grace": messages.duration(max(1, math.ceil(self.grace)))})

    async def _forget(self, user_id: str) -> erase.Erased:
        for attempt in range(3):
            side = await conversations.live_side_of(self.pool, user_id)
            if side is not None and side.room_id:  # before the end: its closing may be quick
                self._closing[side.room_id] = user_id
            await self.enforcer.withdraw(user_id, STOP, FORGET)
            try:
                async with self.pool.acquire() as conn:
                    return await erase.erase(conn, user_id, self.grace)
            except ValueError:
                # Paired in the same moment (they were waiting): end that chat too.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def scrub_due(self) -> int:
        """The periodic purge's step: chats whose report grace period is over lose the real
        ID of a user forgotten meanwhile."""
        return await erase.scrub_due(self.pool, self.grace)

    async def forget_devices(self, user_id: str) -> None:
        """The device list the crypto store keeps of the user (after the bot's last message
        to them: sending in an encrypted room fetches it again)."""
        if self.crypto_db is not None:
            await forget_user(self.crypto_db, user_id)

    def awaits(self, room_ids: list[str]) -> bool:
        return any(room_id in self._closing for room_id in room_ids)

    async def closed(self, room_ids: list[str]) -> None:
        """A conversation's rooms were closed (its ghosts' goodbyes are said)."""
        for room_id in room_ids:
            user_id = self._closing.pop(room_id, None)
            if user_id is not None:
                await self.forget_devices(user_id)
