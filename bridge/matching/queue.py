"""waiting (and its index table waiting_keys): the queue of users looking for a stranger."""
from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg

from bridge.matching.policy import Waiter

# A new waiter is due for the match timer after this long, in case the process that queued
# them dies before looking for their partner (it normally looks at once).
SAFETY_NET_SECONDS = 5.0

# The waiter's preference window, from their stored preferences (matching.fallback_delay).
_WINDOW = """make_interval(secs => CASE WHEN cardinality(u.tags) > 0 OR u.lang IS NOT NULL
                                     THEN $2::float8 ELSE 0 END)"""
# One key per tag, or '' for none (matching.keys).
_INSERT_KEYS = """
    INSERT INTO waiting_keys (user_id, tag, lang, seq, flexible)
    SELECT me.user_id, t.tag, coalesce(me.lang, ''), me.seq, me.flexible
    FROM me, unnest(CASE WHEN cardinality(me.tags) = 0 THEN ARRAY[''] ELSE me.tags END) AS t(tag)
    RETURNING seq"""


@asynccontextmanager
async def _transaction(db):
    """A transaction on `db`: a savepoint when it is a connection already in one."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, conn.transaction():
            yield conn
    else:
        async with db.transaction():
            yield db


class _AlreadyChatting(Exception):
    pass


async def enqueue(db, user_id: str, fallback_after: float = 0.0) -> bool:
    """Put the user in the queue with their stored preferences; False when they were
    already waiting or are in a conversation."""
    try:
        async with _transaction(db) as conn:
            added = await conn.fetch(f"""
                WITH me AS (
                    INSERT INTO waiting (user_id, tags, lang, fallback_at, flexible, next_check)
                    SELECT v.user_id, coalesce(u.tags, '{{}}'), u.lang, now() + {_WINDOW},
                           now() + {_WINDOW} <= now(), now() + make_interval(secs => $3)
                    -- (an unknown user still reaches the insert, to fail on the foreign key)
                    FROM (VALUES ($1::text)) AS v(user_id) LEFT JOIN (
                        -- Locked like a newcomer's short cut locks it (matchmaker.arrive):
                        -- one of the two waits for the other, never both at once.
                        SELECT user_id, tags, lang FROM users WHERE user_id = $1
                        FOR NO KEY UPDATE) u USING (user_id)
                    ON CONFLICT (user_id) DO NOTHING
                    RETURNING user_id, seq, tags, lang, flexible)
                {_INSERT_KEYS}""", user_id, float(fallback_after), SAFETY_NET_SECONDS)
            # Checked in a statement of its own, after the insert: if the insert had to wait
            # for a match that was deleting this user's previous waiting row, only a fresh
            # statement sees that match. (The new row is invisible to claims until commit.)
            if added and await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM conversation_sides WHERE user_id = $1 AND live)",
                    user_id):
                raise _AlreadyChatting
    except _AlreadyChatting:
        return False
    return bool(added)


async def refresh(db, user_id: str, fallback_after: float) -> bool:
    """The waiting user changed their preferences: take them up and open a new preference
    window, keeping their place in the queue. False when they are not waiting."""
    async with _transaction(db) as conn:
        await conn.execute("DELETE FROM waiting_keys WHERE user_id = $1", user_id)
        rows = await conn.fetch(f"""
            WITH me AS (
                UPDATE waiting w SET tags = u.tags, lang = u.lang, fallback_at = now() + {_WINDOW},
                                     flexible = now() + {_WINDOW} <= now(),
                                     next_check = now() + make_interval(secs => $3)
                FROM users u WHERE w.user_id = $1 AND u.user_id = $1
                RETURNING w.user_id, w.seq, w.tags, w.lang, w.flexible)
            {_INSERT_KEYS}""", user_id, float(fallback_after), SAFETY_NET_SECONDS)
    return bool(rows)


async def waiting_since(db, user_id: str) -> datetime | None:
    return await db.fetchval("SELECT enqueued_at FROM waiting WHERE user_id = $1", user_id)


async def dequeue(db, user_id: str) -> bool:
    status = await db.execute("DELETE FROM waiting WHERE user_id = $1", user_id)
    return status.endswith(" 1")


async def is_waiting(db, user_id: str) -> bool:
    return await db.fetchval("SELECT EXISTS (SELECT 1 FROM waiting WHERE user_id = $1)", user_id)


async def count(db) -> int:
    return await db.fetchval("SELECT count(*) FROM waiting")


def waiter(row) -> Waiter:
    return Waiter(row["user_id"], row["seq"], frozenset(row["tags"]), row["lang"],
                  row["flexible"])


async def remove_many(conn, user_ids: list[str]) -> None:
    await conn.execute("DELETE FROM waiting WHERE user_id = ANY($1::text[])", user_ids)


async def waiting_user_ids(db) -> list[str]:
    return [r["user_id"] for r in await db.fetch("SELECT user_id FROM waiting")]
