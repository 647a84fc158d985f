"""The bot's commands: one small function each. They return the key of the reply."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

import asyncpg

from bridge.pairing import Pairing
from bridge.portal import NEXT, STOP
from bridge.store import conversations, queue, users

log = logging.getLogger("bridge.commands")



@dataclass(frozen=True)
class Parsed:
    name: str  # lower-case, without the prefix
    args: str


def parse(body: str, prefix: str) -> Parsed | None:
    """'!Start cinema, jazz' -> Parsed('start', 'cinema, jazz'); None when not a command."""
    if not body.startswith(prefix):
        return None
    # Any whitespace ends the name: clients may put a newline or tab after it.
    head, args = (body[len(prefix):].split(maxsplit=1) + ["", ""])[:2]
    if not head:
        return None
    return Parsed(head.lower(), args.strip())


class Commands:
    """Commands a user can send in their DM with the bot (and some in their chat room)."""

    # The commands that also work inside a chat room; any other !text there is chat.
    IN_CHAT_ROOM = frozenset({"next", "stop", "help"})

    def __init__(self, pool: asyncpg.Pool, pairing: Pairing) -> None:
        self.pool = pool
        self.pairing = pairing
        self.table: dict[str, Callable[[str], Awaitable[str | None]]] = {
            "help": self.help, "agree": self.agree, "start": self.start,
            "next": self.next, "stop": self.stop,
        }

    async def run(self, user_id: str, command: Parsed) -> str:
        func = self.table.get(command.name)
        if func is None:
            return "unknown_command"
        return await func(user_id)

    async def help(self, user_id: str) -> str:
        return "help"

    async def agree(self, user_id: str) -> str:
        await users.ensure(self.pool, user_id)
        return "agreed" if await users.agree(self.pool, user_id) else "already_agreed"

    async def start(self, user_id: str) -> str:
        user = await users.get(self.pool, user_id)
        if user is None or not user.agreed:
            return "must_agree"
        if await conversations.live_side_of(self.pool, user_id):
            return "already_chatting"
        return "queued" if await self.pairing.enqueue(user_id) else "already_waiting"

    async def next(self, user_id: str) -> str:
        side = await conversations.live_side_of(self.pool, user_id)
        if side is None:
            return await self.start(user_id)
        await self.pairing.end(side.conversation_id, NEXT, user_id, requeue=[user_id])
        return "requeued"

    async def stop(self, user_id: str) -> str:
        side = await conversations.live_side_of(self.pool, user_id)
        if side is not None:
            await self.pairing.end(side.conversation_id, STOP, user_id)
            return "stopped_chat"
        if await queue.dequeue(self.pool, user_id):
            return "stopped_waiting"
        return "nothing_to_stop"
