"""relayed: which event in the partner's room is the copy of which event in the user's room."""
from __future__ import annotations


async def record(conn, source_event_id: str, conversation_id: int, target_room_id: str,
                 target_event_id: str) -> None:
    await conn.execute(
        """INSERT INTO relayed (source_event_id, conversation_id, target_room_id, target_event_id)
           VALUES ($1, $2, $3, $4) ON CONFLICT (source_event_id) DO NOTHING""",
        source_event_id, conversation_id, target_room_id, target_event_id)


async def counterpart(db, conversation_id: int, event_id: str) -> str | None:
    """The event in the other room that corresponds to event_id, in either direction:
    a reply to the ghost's copy points at the partner's original, and vice versa."""
    return await db.fetchval(
        """SELECT target_event_id FROM relayed
             WHERE conversation_id = $1 AND source_event_id = $2
           UNION ALL
           SELECT source_event_id FROM relayed
             WHERE conversation_id = $1 AND target_event_id = $2
           LIMIT 1""", conversation_id, event_id)


async def target_of(db, source_event_id: str) -> str | None:
    """The copy of source_event_id in the partner's room, when it was relayed."""
    return await db.fetchval(
        "SELECT target_event_id FROM relayed WHERE source_event_id = $1", source_event_id)


async def source_of(db, conversation_id: int, target_event_id: str) -> str | None:
    """The original of a copy the bridge sent into a room of this conversation."""
    return await db.fetchval(
        """SELECT source_event_id FROM relayed
           WHERE conversation_id = $1 AND target_event_id = $2""",
        conversation_id, target_event_id)
