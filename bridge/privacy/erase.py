"""What `!forget confirm` deletes, table by table, in one transaction (plain SQL).

Kept, by design: reports (by or about the user), sanctions, the moderators' log and the
evidence a report holds: the operator's legal record (README "Data retention"). Ended
conversations stay as rows (a report points at its conversation; the partner's history
counts for their own automatic-suspension figures), but the user's side of each is given a
random stand-in user ID ("forgotten:<hex>", one per erasure, never an MXID) in place of theirs.
Their Olm/Megolm sessions are keyed by device keys, not their ID, and go with the bot's
hourly key pruning; the device list the crypto store keeps of them is crypto_store.forget_user.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import asyncpg

STAND_IN_PREFIX = "forgotten:"


@dataclass
class Erased:
    user: bool = False      # their users row (agreement, interests, language, DM room)
    conversations: int = 0  # ended conversations whose side of theirs now has a stand-in
    inbox: int = 0          # handled events of their rooms whose IDs were kept


async def erase(conn: asyncpg.Connection, user_id: str) -> Erased:
    """Delete everything the bridge holds of `user_id` but the legal record. The caller has
    ended their live conversation first (a live one is refused: ValueError)."""
    erased = Erased()
    async with conn.transaction():
        # Serialised with anything that would re-create their rows meanwhile (a !start).
        dm_room = await conn.fetchval(
            "SELECT dm_room_id FROM users WHERE user_id = $1 FOR UPDATE", user_id)
        sides = await conn.fetch(
            """SELECT s.conversation_id, s.room_id, c.state FROM conversation_sides s
               JOIN conversations c ON c.id = s.conversation_id WHERE s.user_id = $1""",
            user_id)
        if any(s["state"] != "ended" for s in sides):
            raise ValueError("end the user's live conversation before erasing them")
        conversation_ids = [s["conversation_id"] for s in sides]
        rooms = [r for r in (dm_room, *(s["room_id"] for s in sides)) if r]
        if conversation_ids:
            stand_in = STAND_IN_PREFIX + secrets.token_hex(16)
            await conn.execute("INSERT INTO users (user_id) VALUES ($1)", stand_in)
            await conn.execute("UPDATE conversation_sides SET user_id = $2 WHERE user_id = $1",
                               user_id, stand_in)
            await conn.execute("UPDATE conversations SET ended_by = $2 WHERE ended_by = $1",
                               user_id, stand_in)
            # Nothing maps events of an ended conversation any more (edits, replies and
            # redactions cross only while it lasts), nor its calls.
            await conn.execute("DELETE FROM relayed WHERE conversation_id = ANY($1::bigint[])",
                               conversation_ids)
            await conn.execute("DELETE FROM call_ids WHERE conversation_id = ANY($1::bigint[])",
                               conversation_ids)
            erased.conversations = len(conversation_ids)
        # The IDs of their handled events (the bodies went when handled). Events still
        # waiting (this very !forget confirm) are marked handled after, and pruned in a week.
        status = await conn.execute(
            "DELETE FROM inbox WHERE room_id = ANY($1::text[]) AND handled_at IS NOT NULL",
            rooms)
        erased.inbox = int(status.split()[-1])
        # Cascades to the queue (waiting, waiting_keys), recent pairs and blocks (both
        # directions: the table does not say who blocked whom) and start cooldowns.
        status = await conn.execute("DELETE FROM users WHERE user_id = $1", user_id)
        erased.user = status.endswith(" 1")
    return erased


async def ask(db, user_id: str) -> bool:
    """Record that the user asked to be forgotten (False: the bridge holds nothing of them)."""
    status = await db.execute("UPDATE users SET forget_asked_at = now() WHERE user_id = $1",
                              user_id)
    return status.endswith(" 1")


async def asked_within(db, user_id: str, seconds: float) -> bool:
    return await db.fetchval(
        """SELECT forget_asked_at > now() - make_interval(secs => $2) FROM users
           WHERE user_id = $1""", user_id, float(seconds)) is True


async def cooldown_left(db, user_id: str) -> float:
    """Seconds left of a start cooldown (churn or flood): forgetting must not lift it."""
    return await db.fetchval(
        """SELECT coalesce(extract(epoch FROM greatest(blocked_until, flood_until) - now()), 0)
           ::float8 FROM start_limits WHERE user_id = $1""", user_id) or 0.0
