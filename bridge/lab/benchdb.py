"""A benchmark's own database on the shared PostgreSQL server: made and migrated for a run,
dropped after it."""
from __future__ import annotations

import re
import uuid

import asyncpg

from bridge.database import migrate


async def create_database(admin_dsn: str, prefix: str) -> str:
    """A fresh database named `prefix` + a random part, at the schema's head; its URI."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    uri = re.sub(r"/[^/]*$", f"/{name}", admin_dsn)
    await migrate(uri)
    return uri


async def drop_database(admin_dsn: str, uri: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {uri.rsplit('/', 1)[1]} WITH (FORCE)")
    finally:
        await admin.close()
