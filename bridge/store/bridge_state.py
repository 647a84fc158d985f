"""bridge_state: small facts the bridge keeps about itself, by key (e.g. the moderation room
it made)."""
from __future__ import annotations


async def get(db, key: str) -> str | None:
    return await db.fetchval("SELECT value FROM bridge_state WHERE key = $1", key)


async def put(db, key: str, value: str) -> None:
    await db.execute(
        """INSERT INTO bridge_state (key, value) VALUES ($1, $2)
           ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value""", key, value)
