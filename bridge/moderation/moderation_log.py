"""moderation_log: every moderator action and automatic suspension (who, when, what, why)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Entry:
    actor: str
    action: str
    target: str
    reason: str
    created_at: datetime


async def record(db, actor: str, action: str, target: str, reason: str = "") -> None:
    await db.execute(
        "INSERT INTO moderation_log (actor, action, target, reason) VALUES ($1, $2, $3, $4)",
        actor, action, target, reason)


async def entries(db, limit: int = 100) -> list[Entry]:
    rows = await db.fetch(
        """SELECT actor, action, target, reason, created_at FROM moderation_log
           ORDER BY id DESC LIMIT $1""", limit)
    return [Entry(*r) for r in rows]
