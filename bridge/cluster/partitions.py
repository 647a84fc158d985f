"""Rooms are spread over a fixed number of partitions; a partition is owned by one process.

The same hash is computed in Python (a room's owner, before handling its events) and in SQL
(a partition's pending rooms, when a process takes it over): the first 32 bits of the MD5 of
the room ID's UTF-8 bytes. Stable across processes, versions and restarts, unlike hash().
"""
from __future__ import annotations

import hashlib


def partition_of(room_id: str, partitions: int) -> int:
    return int.from_bytes(hashlib.md5(room_id.encode("utf-8")).digest()[:4], "big") % partitions


def partition_sql(column: str, partitions: int) -> str:
    """The SQL expression of partition_of() for a text column."""
    return f"((('x' || substr(md5({column}), 1, 8))::bit(32)::bigint) % {int(partitions)})"
