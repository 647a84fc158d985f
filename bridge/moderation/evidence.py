"""evidence: each conversation side's last few relayed messages, the only copy there is of
what was said; a report's evidence. Bounded per side, purged after the conversation."""
from __future__ import annotations


async def append(db, conversation_id: int, side: int, body: str, keep: int) -> None:
    """Add what `side` sent (as relayed: sanitised), keeping only its last `keep` messages.
    One statement: the rows beyond the newest keep - 1 go (it does not see its own insert)."""
    await db.execute(
        """WITH gone AS (
               DELETE FROM evidence WHERE conversation_id = $1 AND side = $2 AND id <= (
                   SELECT id FROM evidence WHERE conversation_id = $1 AND side = $2
                   ORDER BY id DESC OFFSET $3 LIMIT 1))
           INSERT INTO evidence (conversation_id, side, body) VALUES ($1, $2, $4)""",
        conversation_id, side, keep - 1, body)


async def of_side(db, conversation_id: int, side: int) -> list[str]:
    """What the side said, oldest first."""
    rows = await db.fetch(
        "SELECT body FROM evidence WHERE conversation_id = $1 AND side = $2 ORDER BY id",
        conversation_id, side)
    return [r["body"] for r in rows]


async def purge(db, grace_seconds: float) -> int:
    """Delete the evidence of conversations that ended more than `grace_seconds` ago, but not
    a side an open report holds. Returns how many messages went."""
    status = await db.execute(
        """DELETE FROM evidence e USING conversations c
           WHERE c.id = e.conversation_id AND c.state = 'ended'
             AND c.ended_at < now() - make_interval(secs => $1)
             AND NOT EXISTS (
                 SELECT 1 FROM reports r WHERE r.conversation_id = e.conversation_id
                   AND r.reported_side = e.side AND r.status = 'open')""",
        float(grace_seconds))
    return int(status.split()[-1])


async def count(db) -> int:
    return await db.fetchval("SELECT count(*) FROM evidence")
