"""server_bans: homeservers whose users may not use the bridge."""
from __future__ import annotations

from bridge.moderation.restriction import Restriction


async def ban(db, server: str, reason: str, by: str) -> bool:
    """False when it was banned already (the reason is then updated)."""
    inserted = await db.fetchval(
        """INSERT INTO server_bans (server, reason, created_by) VALUES ($1, $2, $3)
           ON CONFLICT (server) DO UPDATE SET reason = EXCLUDED.reason
           RETURNING xmax = 0""", server, reason, by)
    return bool(inserted)


async def unban(db, server: str) -> bool:
    return (await db.execute("DELETE FROM server_bans WHERE server = $1", server)).endswith(" 1")


async def restriction(db, server: str) -> Restriction | None:
    reason = await db.fetchval("SELECT reason FROM server_bans WHERE server = $1", server)
    return Restriction("server_banned", reason, None, "moderator") if reason is not None else None


async def count(db) -> int:
    return await db.fetchval("SELECT count(*) FROM server_bans")
