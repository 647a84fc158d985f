"""Helpers for the moderation integration tests: agreed users, commands as users send them,
and pairing over a portal that records what it is asked to do."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from types import SimpleNamespace

from bridge.i18n import messages
from bridge.background import Background
from bridge.commands import Commands, Parsed
from bridge.moderation.limits import Limits
from bridge.pairing import Pairing
from bridge.store import users


async def agreed(pool, *user_ids: str) -> None:
    for user_id in user_ids:
        await users.ensure(pool, user_id)
        await users.agree(pool, user_id)


async def say(commands: Commands, user_id: str, text: str) -> tuple[str, str, dict]:
    """Run a command as the handler does: (reply key, the rendered reply, its values)."""
    name, _, args = text.partition(" ")
    reply = await commands.run(user_id, Parsed(name.lstrip("!"), args.strip()))
    return reply.key, messages.text(reply.key, prefix="!", **reply.values), reply.values


@asynccontextmanager
async def moderation_world(pool, config, portal):
    """Pairing, limits and commands over `portal`; `told` records DM notices (user, key,
    values)."""
    told: list[tuple[str, str, dict]] = []

    async def notify_dm(user_id: str, key: str, cause: str, **values: str) -> None:
        told.append((user_id, key, values))

    background = Background()
    pairing = Pairing(pool, config, portal, notify_dm, background)
    limits = Limits(pool, config)
    yield SimpleNamespace(pairing=pairing, portal=portal, told=told, limits=limits,
                          notify_dm=notify_dm, commands=Commands(pool, pairing, limits))
    await asyncio.wait_for(background.wait(timeout=10), timeout=15)
