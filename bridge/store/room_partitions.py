"""room_partitions: the partition a conversation's rooms are handled in (several processes).

Both chat rooms of a conversation are handled by one process, so both ghosts' encryption
devices stay with it (bridge/cluster/device_locks.py). The partition is chosen when the
conversation opens, kept on its row (a resumed opening reuses it), and written for each
room as soon as the room exists; events recorded from then on carry it (inbox.partition).
A room without an entry is in the partition its ID hashes to.
"""
from __future__ import annotations

from bridge.cluster.partitions import partition_of


async def claim(db, conversation_id: int, chosen: int) -> int:
    """The conversation's partition: `chosen`, unless an earlier opening chose already."""
    return await db.fetchval(
        """UPDATE conversations SET partition = coalesce(partition, $2) WHERE id = $1
           RETURNING partition""", conversation_id, chosen)


async def put(db, room_id: str, partition: int) -> None:
    await db.execute(
        """INSERT INTO room_partitions (room_id, partition) VALUES ($1, $2)
           ON CONFLICT (room_id) DO NOTHING""", room_id, partition)


async def of_rooms(db, room_ids: list[str] | set[str], count: int) -> dict[str, int]:
    """Each room's partition now."""
    rows = await db.fetch("SELECT room_id, partition FROM room_partitions "
                          "WHERE room_id = ANY($1::text[])", list(room_ids))
    mapped = {row["room_id"]: row["partition"] for row in rows}
    return {room_id: mapped.get(room_id, partition_of(room_id, count)) for room_id in room_ids}


async def forget(db, room_ids: list[str]) -> None:
    """The conversation is closed: its rooms' late events may go anywhere."""
    await db.execute("DELETE FROM room_partitions WHERE room_id = ANY($1::text[])", room_ids)
