"""waiting: the queue of users looking for a stranger."""
from __future__ import annotations

from bridge.matching import Waiter


async def enqueue(db, user_id: str) -> bool:
    """Put the user in the queue; False when they were already waiting."""
    status = await db.execute(
        "INSERT INTO waiting (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING", user_id)
    return status.endswith(" 1")


async def dequeue(db, user_id: str) -> bool:
    status = await db.execute("DELETE FROM waiting WHERE user_id = $1", user_id)
    return status.endswith(" 1")


async def is_waiting(db, user_id: str) -> bool:
    return await db.fetchval("SELECT EXISTS (SELECT 1 FROM waiting WHERE user_id = $1)", user_id)


async def count(db) -> int:
    return await db.fetchval("SELECT count(*) FROM waiting")


async def lock_oldest(conn, limit: int) -> list[Waiter]:
    """The oldest waiting users, row-locked for the caller's transaction."""
    rows = await conn.fetch(
        "SELECT user_id, seq FROM waiting ORDER BY seq LIMIT $1 FOR UPDATE", limit)
    return [Waiter(row["user_id"], row["seq"]) for row in rows]


async def remove_many(conn, user_ids: list[str]) -> None:
    await conn.execute("DELETE FROM waiting WHERE user_id = ANY($1::text[])", user_ids)
