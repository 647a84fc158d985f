"""The NOTIFY channel that wakes a room's owner: sent by whichever process recorded (or
kicked) the room, heard by every process, acted on by the owner.

A payload holds lines of "room ID<TAB>partition" (a room ID holds neither): the partition
of the room's next event, whose owner handles it. PostgreSQL caps a payload below 8,000
bytes, so a long list goes in several notices.
"""
from __future__ import annotations

CHANNEL = "stranger_bridge_rooms"
# What a new or leaving process says so the others rebalance at once.
MEMBERS_CHANNEL = "stranger_bridge_members"
# "The bot's typing in this room reached me" (payload: the room ID): the start-up delivery
# check of bridge/relay/ephemeral.py, whose transaction any process may get.
CHECKS_CHANNEL = "stranger_bridge_checks"
MAX_PAYLOAD_BYTES = 7000


def payloads(rooms: dict[str, int]) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    size = 0
    for room_id in sorted(rooms):
        line = f"{room_id}\t{int(rooms[room_id])}"
        length = len(line.encode("utf-8")) + 1
        if current and size + length > MAX_PAYLOAD_BYTES:
            out.append("\n".join(current))
            current, size = [], 0
        current.append(line)
        size += length
    if current:
        out.append("\n".join(current))
    return out


def rooms(payload: str) -> dict[str, int]:
    """room ID -> partition; a line that is not one is skipped."""
    out = {}
    for line in payload.split("\n"):
        room_id, _, partition = line.partition("\t")
        if room_id and partition.isdigit():
            out[room_id] = int(partition)
    return out


async def send(db, rooms: dict[str, int]) -> None:
    """Wake the owners of these rooms' partitions (delivered when the sender's transaction
    commits)."""
    for payload in payloads(rooms):
        await db.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
