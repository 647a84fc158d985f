"""sanctions: users suspended or banned, by a moderator or automatically."""
from __future__ import annotations

from datetime import datetime

from bridge.moderation.restriction import Restriction, strictest


async def add(db, user_id: str, kind: str, reason: str, until: datetime | None, source: str,
              by: str | None) -> int:
    return await db.fetchval(
        """INSERT INTO sanctions (user_id, kind, reason, until, source, created_by)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        user_id, kind, reason, until, source, by)


async def restriction(db, user_id: str, now: datetime) -> Restriction | None:
    """The strictest sanction in force on the user, if any."""
    rows = await db.fetch(
        """SELECT kind, reason, until, source FROM sanctions
           WHERE user_id = $1 AND lifted_at IS NULL AND (until IS NULL OR until > $2)""",
        user_id, now)
    return strictest([Restriction(r["kind"], r["reason"], r["until"], r["source"])
                      for r in rows], now)


async def lift(db, user_id: str, by: str) -> int:
    """Lift every sanction in force on the user; how many there were."""
    status = await db.execute(
        """UPDATE sanctions SET lifted_at = now(), lifted_by = $2
           WHERE user_id = $1 AND lifted_at IS NULL AND (until IS NULL OR until > now())""",
        user_id, by)
    return int(status.split()[-1])


async def count_automatic(db, user_id: str) -> int:
    """Automatic suspensions the user had before (each next one lasts longer)."""
    return await db.fetchval(
        "SELECT count(*) FROM sanctions WHERE user_id = $1 AND source = 'automatic'", user_id)


async def count_in_force(db) -> int:
    return await db.fetchval(
        """SELECT count(DISTINCT user_id) FROM sanctions
           WHERE lifted_at IS NULL AND (until IS NULL OR until > now())""")
