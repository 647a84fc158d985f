"""call_ids: the stand-ins each side sees for the other side's call and party IDs.

In PostgreSQL, so a mapping survives restarts and holds when several bridge processes
relay the same call: an alias is made once (INSERT ... ON CONFLICT DO NOTHING) and read
back by whoever lost the race.
"""
from __future__ import annotations

import secrets
import string
from dataclasses import dataclass


@dataclass(frozen=True)
class CallIds:
    """The IDs as the receiving side must see them (None: absent, or cannot be mapped)."""
    call_id: str | None = None
    party_id: str | None = None
    selected_party_id: str | None = None


_ALPHABET = string.ascii_uppercase + string.digits


def _new_alias(kind: str) -> str:
    # A party stand-in looks like a device ID; a call stand-in like a client's call ID.
    length = 10 if kind == "party" else 24
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


async def alias_of(db, conversation_id: int, kind: str, side: int, real_id: str) -> str:
    """The stand-in for `side`'s `real_id`, made on first use."""
    for _ in range(3):  # a second attempt only after a (vanishingly rare) alias clash
        alias = await db.fetchval(
            """INSERT INTO call_ids (conversation_id, kind, side, real_id, alias)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING alias""",
            conversation_id, kind, side, real_id, _new_alias(kind))
        if alias is None:
            alias = await db.fetchval(
                """SELECT alias FROM call_ids WHERE conversation_id = $1 AND kind = $2
                     AND side = $3 AND real_id = $4""", conversation_id, kind, side, real_id)
        if alias is not None:
            return alias
    raise RuntimeError("could not make a call ID alias")


async def real_of(db, conversation_id: int, kind: str, side: int, alias: str) -> str | None:
    """What `side`'s client really called the ID the other side knows as `alias`."""
    return await db.fetchval(
        """SELECT real_id FROM call_ids WHERE conversation_id = $1 AND kind = $2 AND side = $3
             AND alias = $4""", conversation_id, kind, side, alias)


async def resolve(db, conversation_id: int, side: int, call_id: str | None,
                  party_id: str | None, selected_party_id: str | None) -> CallIds:
    """The IDs of an event from `side`, as the other side must see them."""
    other = 1 - side
    mapped_call = None
    if call_id is not None:
        # A call the partner started is known here by its alias: give back their real ID.
        mapped_call = (await real_of(db, conversation_id, "call", other, call_id)
                       or await alias_of(db, conversation_id, "call", side, call_id))
    mapped_party = (await alias_of(db, conversation_id, "party", side, party_id)
                    if party_id is not None else None)
    # select_answer names the partner's party by the stand-in this side was shown.
    selected = (await real_of(db, conversation_id, "party", other, selected_party_id)
                if selected_party_id is not None else None)
    return CallIds(mapped_call, mapped_party, selected)


async def forget(db, conversation_id: int) -> None:
    """Drop a conversation's stand-ins once it is over: they name the users' devices."""
    await db.execute("DELETE FROM call_ids WHERE conversation_id = $1", conversation_id)
