"""`!forget` in the DM: asked, confirmed within a window, then everything the bridge holds
about the user goes but the legal record (erase.py says what, and what stays).

In order: a live chat ends first (a stop: the partner is told as usual) and the user leaves
the queue; the database rows go in one transaction; the bot answers, leaves the DM (it no
longer knows it is theirs) and drops the device list it kept of them. A ghost saying goodbye
in the user's encrypted chat room fetches that list again, so it is dropped once more when
that room is closed (closed()).
"""
from __future__ import annotations

import logging
import math

import asyncpg
from mautrix.util.async_db import Database

from bridge import messages
from bridge.encryption.crypto_store import forget_user
from bridge.matching import queue
from bridge.pairing import Pairing
from bridge.portal import STOP
from bridge.privacy import erase
from bridge.replies import Reply
from bridge.store import conversations

log = logging.getLogger("bridge.privacy.forget")

CONFIRM_WORD = "confirm"
FORGOTTEN = "forgotten"  # the reply's key once done: the handler then leaves the DM


class Forgetting:
    def __init__(self, pool: asyncpg.Pool, pairing: Pairing) -> None:
        self.pool = pool
        self.pairing = pairing
        self.config = pairing.config
        self.crypto_db: Database | None = None  # set at start when encryption is allowed
        # Chat rooms of forgotten users still being closed -> the user, for closed().
        self._closing: dict[str, str] = {}

    @property
    def window(self) -> float:
        return self.config["bridge.privacy.forget_window"]

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
        log.info("A user was forgotten (%d conversations kept under a stand-in ID)",
                 erased.conversations)
        return Reply(FORGOTTEN)

    async def _forget(self, user_id: str) -> erase.Erased:
        for attempt in range(3):
            side = await conversations.live_side_of(self.pool, user_id)
            if side is not None:
                if side.room_id:  # before the end: its closing may be quick
                    self._closing[side.room_id] = user_id
                await self.pairing.end(side.conversation_id, STOP, user_id)
            await queue.dequeue(self.pool, user_id)
            try:
                async with self.pool.acquire() as conn:
                    return await erase.erase(conn, user_id)
            except ValueError:
                # Paired in the same moment (they were waiting): end that chat too.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

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
