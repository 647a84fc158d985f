"""To-device messages (and one-time key counts) for a device another process holds.

With several processes, a transaction may bring a room key for a device this process does
not hold (bridge/cluster/device_locks.py). The homeserver forgets it once the transaction
is answered, so it is stored here first, and its holder is woken; the holder takes it (or,
when nobody holds the device, whoever takes the device next, before using it), in order.
"""
from __future__ import annotations

import json
import logging
from typing import Awaitable, Callable

log = logging.getLogger("bridge.encryption.device_inbox")

BATCH = 100
TO_DEVICE, OTK_COUNT = "to_device", "otk_count"


def name(user_id: str, device_id: str) -> str:
    """How a device is named in notices (no Matrix ID or device ID holds a '|')."""
    return f"{user_id}|{device_id}"


def parse_name(value: str) -> tuple[str, str] | None:
    user_id, sep, device_id = value.partition("|")
    return (user_id, device_id) if sep and user_id and device_id else None


async def store(db, user_id: str, device_id: str, kind: str, payload: dict) -> None:
    await db.execute(
        """INSERT INTO device_inbox (user_id, device_id, kind, payload)
           VALUES ($1, $2, $3, $4::jsonb)""", user_id, device_id, kind, json.dumps(payload))


async def drain(db, user_id: str, device_id: str,
                handle: Callable[[str, dict], Awaitable[None]]) -> int:
    """Hand what waits for the device to `handle` (kind, payload), oldest first, deleting
    each once handled. A failure worth retrying leaves the rest for the next drain."""
    count = 0
    while True:
        rows = await db.fetch(
            """SELECT seq, kind, payload FROM device_inbox WHERE user_id = $1 AND device_id = $2
               ORDER BY seq LIMIT $3""", user_id, device_id, BATCH)
        for row in rows:
            await handle(row["kind"], json.loads(row["payload"]))
            await db.execute("DELETE FROM device_inbox WHERE seq = $1", row["seq"])
            count += 1
        if len(rows) < BATCH:
            return count


async def forget(db, user_id: str) -> None:
    """The user's devices are gone for good (a ghost's, at the end of its conversation)."""
    await db.execute("DELETE FROM device_inbox WHERE user_id = $1", user_id)


async def prune(db, older_than_seconds: float) -> int:
    """What no holder ever came for (a device deleted meanwhile)."""
    status = await db.execute(
        "DELETE FROM device_inbox WHERE received_at < now() - make_interval(secs => $1)",
        older_than_seconds)
    return int(status.split()[-1])
