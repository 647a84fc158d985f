"""inbox: every event the homeserver delivered, kept until handled, deduplicated by event ID."""
from __future__ import annotations

import json

from bridge.cluster.partitions import partition_sql


async def record(conn, events: list[dict], partitions: dict[str, int] | None = None) -> None:
    """Store events durably; an event seen before (a retried transaction) is ignored.
    `partitions` (several processes): the partition each room's events are handled in."""
    partitions = partitions or {}
    await conn.executemany(
        """INSERT INTO inbox (event_id, room_id, event, partition)
           VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (event_id) DO NOTHING""",
        [(e["event_id"], e["room_id"], json.dumps(e), partitions.get(e["room_id"]))
         for e in events])


class Pending(tuple):
    """(seq, event) of an event waiting to be handled, when it reached the bridge
    (`received_at`, a Unix time: its transaction was recorded; the relay latency metric's
    start), and the partition it is handled in (several processes; else None)."""
    received_at: float | None
    partition: int | None

    def __new__(cls, seq: int, event: dict, received_at: float | None = None,
                partition: int | None = None) -> "Pending":
        pending = super().__new__(cls, (seq, event))
        pending.received_at = received_at
        pending.partition = partition
        return pending


def _partition_sql(count: int | None) -> str:
    """An event's partition: recorded with it, else (recorded by a single process) the
    hash of its room ID."""
    if count is None:
        return "NULL::int"
    return f"coalesce(partition, {partition_sql('room_id', count)})"


async def pending(db, room_id: str, limit: int = 50, count: int | None = None) -> list[Pending]:
    """The room's events waiting, oldest first (`count`: partitions, with several processes)."""
    rows = await db.fetch(
        f"""SELECT seq, event, extract(epoch FROM received_at)::float8 AS received_at,
                   {_partition_sql(count)} AS partition
            FROM inbox WHERE room_id = $1 AND handled_at IS NULL
            ORDER BY seq LIMIT $2""", room_id, limit)
    return [Pending(row["seq"], json.loads(row["event"]), row["received_at"], row["partition"])
            for row in rows]


async def mark_handled(db, seq: int) -> None:
    # The body is dropped: the event ID alone keeps deduplication working.
    await db.execute("UPDATE inbox SET handled_at = now(), event = NULL WHERE seq = $1", seq)


async def rooms_with_pending(db) -> list[str]:
    rows = await db.fetch(
        "SELECT room_id FROM inbox WHERE handled_at IS NULL GROUP BY room_id ORDER BY min(seq)")
    return [row["room_id"] for row in rows]


async def next_partitions(db, count: int, room_ids: list[str] | None = None) -> dict[str, int]:
    """Rooms with events waiting (all, or those of `room_ids`) -> the partition of the first
    one, whose owner handles the room now (several processes: bridge/cluster/)."""
    rows = await db.fetch(
        f"""SELECT DISTINCT ON (room_id) room_id, {_partition_sql(count)} AS partition
            FROM inbox WHERE handled_at IS NULL
              AND ($1::text[] IS NULL OR room_id = ANY($1::text[]))
            ORDER BY room_id, seq""", room_ids)
    return {row["room_id"]: row["partition"] for row in rows}


async def rooms_with_pending_in(db, partitions: frozenset[int], count: int) -> list[str]:
    """Rooms whose first waiting event is in one of these partitions (of `count`,
    bridge/cluster/partitions.py): what a process that just took them over must look at."""
    return [room_id for room_id, partition in (await next_partitions(db, count)).items()
            if partition in partitions]


async def prune(db, older_than_seconds: float) -> int:
    """Forget handled events once no homeserver would still retry them."""
    status = await db.execute(
        """DELETE FROM inbox WHERE handled_at IS NOT NULL
           AND handled_at < now() - make_interval(secs => $1)""", older_than_seconds)
    return int(status.split()[-1])


async def known(db, event_ids: list[str], before_seq: int | None = None) -> set[str]:
    """Which of these events are accounted for: in the inbox, or (with before_seq) handled
    or waiting in the inbox ahead of the event with that seq."""
    rows = await db.fetch(
        """SELECT event_id FROM inbox WHERE event_id = ANY($1::text[])
           AND ($2::bigint IS NULL OR handled_at IS NOT NULL OR seq < $2)""",
        event_ids, before_seq)
    return {row["event_id"] for row in rows}


async def unhandled_by_id(db, event_ids: list[str]) -> list[tuple[int, dict]]:
    """The given events still waiting in the inbox, in the order of event_ids."""
    rows = await db.fetch(
        """SELECT seq, event_id, event FROM inbox
           WHERE event_id = ANY($1::text[]) AND handled_at IS NULL""", event_ids)
    found = {row["event_id"]: (row["seq"], json.loads(row["event"])) for row in rows}
    return [found[event_id] for event_id in event_ids if event_id in found]


async def recently_active_rooms(db, seconds: float, limit: int) -> list[str]:
    rows = await db.fetch(
        """SELECT room_id FROM inbox WHERE received_at > now() - make_interval(secs => $1)
           GROUP BY room_id ORDER BY max(seq) DESC LIMIT $2""", seconds, limit)
    return [row["room_id"] for row in rows]


async def max_seq(db) -> int:
    return await db.fetchval("SELECT coalesce(max(seq), 0) FROM inbox")
