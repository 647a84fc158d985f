"""The NOTIFY channel that wakes a room's owner: sent by whichever process recorded (or
kicked) the room, heard by every process, acted on by the owner.

A payload holds room IDs separated by newlines (a room ID holds none); PostgreSQL caps a
payload below 8,000 bytes, so a long list goes in several notices.
"""
from __future__ import annotations

CHANNEL = "stranger_bridge_rooms"
# What a new or leaving process says so the others rebalance at once.
MEMBERS_CHANNEL = "stranger_bridge_members"
# "The bot's typing in this room reached me" (payload: the room ID): the start-up delivery
# check of bridge/relay/ephemeral.py, whose transaction any process may get.
CHECKS_CHANNEL = "stranger_bridge_checks"
MAX_PAYLOAD_BYTES = 7000


def payloads(room_ids: list[str] | set[str]) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    size = 0
    for room_id in sorted(set(room_ids)):
        length = len(room_id.encode("utf-8")) + 1
        if current and size + length > MAX_PAYLOAD_BYTES:
            out.append("\n".join(current))
            current, size = [], 0
        current.append(room_id)
        size += length
    if current:
        out.append("\n".join(current))
    return out


def room_ids(payload: str) -> list[str]:
    return [room_id for room_id in payload.split("\n") if room_id]


async def send(db, room_ids: list[str] | set[str]) -> None:
    """Wake the owners of these rooms (delivered when the sender's transaction commits)."""
    for payload in payloads(room_ids):
        await db.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
