"""Several bridge processes behind HAProxy (start_bridged_lab(processes=N)), seen from
outside: who owns which partitions (read from pg_locks), the processes' logged errors, and
waiting until they have shared the rooms out. The drills: cluster_crowd.py (a crowd
churning) and cluster_drill.py (processes killed or stopped while pairs relay)."""
from __future__ import annotations

import asyncio
import re
import time

import asyncpg

from bridge.cluster.ownership import MEMBER, NAMESPACE

from .bridged import BridgedLab

GHOST = re.compile(r"@_stranger_[a-z0-9]+:")
APPLICATION_PREFIX = "stranger-bridge "  # bridge/cluster/ownership.py names its sessions so

# Partition -> instance, from the sessions holding the locks (ownership.py's keys).
_OWNERS = f"""SELECT l.objid::bigint AS partition, a.application_name AS name
              FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                AND l.classid = {NAMESPACE}::oid AND l.objid::bigint < {MEMBER}
                AND l.database = (SELECT oid FROM pg_database
                                  WHERE datname = current_database())"""


async def owners(conn: asyncpg.Connection) -> dict[int, str]:
    """Which process (its bridge.instance) holds each owned partition, as PostgreSQL says."""
    return {row["partition"]: row["name"].removeprefix(APPLICATION_PREFIX)
            for row in await conn.fetch(_OWNERS)}


async def wait_owned(conn: asyncpg.Connection, partitions: int, by: set[str],
                     even: bool = True, timeout: float = 60) -> float:
    """Until every partition is owned by one of the processes `by` (in even shares when
    `even`); returns the seconds waited. Polls pg_locks: it has no change notification."""
    started = time.monotonic()
    while True:
        held = await owners(conn)
        shares = [sum(1 for name in held.values() if name == p) for p in by]
        if (len(held) == partitions and set(held.values()) <= by
                and (not even or max(shares) - min(shares) <= 1)):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"partitions not owned by {sorted(by)} after {timeout}s: "
                               f"{len(held)} owned, shares {dict(zip(by, shares))}")
        await asyncio.sleep(0.02)  # a poll of pg_locks


def bridge_errors(lab: BridgedLab, offsets: list[int] | None = None) -> list[str]:
    """ERROR lines in every process's log (after `offsets`, one per process)."""
    lines = []
    for i, bridge in enumerate(lab.bridges):
        data = bridge.log_path.read_bytes()[offsets[i] if offsets else 0:]
        lines += [line for line in data.decode(errors="replace").splitlines()
                  if " ERROR " in line]
    return lines


def log_offsets(lab: BridgedLab) -> list[int]:
    return [b.log_path.stat().st_size if b.log_path.exists() else 0 for b in lab.bridges]


async def settled(lab: BridgedLab, timeout: float = 120) -> dict[str, int]:
    """Once nothing is left to do: conversations not ended, sides not cleaned up, events
    not handled (what is left at the end)."""
    conn = await asyncpg.connect(lab.database_uri)
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = {
                "live_conversations": await conn.fetchval(
                    "SELECT count(*) FROM conversations WHERE state <> 'ended'"),
                "sides_not_closed": await conn.fetchval(
                    "SELECT count(*) FROM conversation_sides WHERE closed_at IS NULL"),
                "unhandled_events": await conn.fetchval(
                    "SELECT count(*) FROM inbox WHERE handled_at IS NULL")}
            if not any(left.values()) or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.2)  # polling a condition, with a deadline
    finally:
        await conn.close()
