"""alembic owns the schema: upgrade from nothing, refuse an outdated schema, downgrade."""
from __future__ import annotations

import asyncio
import os
import uuid
from urllib.parse import urlparse, urlunparse

import asyncpg
import pytest
from alembic import command

from bridge.database import (DatabaseError, _alembic_config, current_revision, head_revision,
                             migrate, open_database)

ADMIN_DSN = os.environ.get("STRANGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TABLES = {"users", "waiting", "conversations", "conversation_sides", "inbox", "relayed",
          "waiting_keys", "recent_pairs", "call_ids", "policy_rooms", "policy_rules",
          "start_limits", "evidence", "reports", "sanctions", "server_bans", "moderation_log",
          "bridge_state", "reveal_requests", "discussers", "questions", "question_mirrored",
          "forget_pending", "bot_cross_signing", "room_partitions", "device_inbox"}


@pytest.fixture
async def empty_uri():
    """A database with no schema at all."""
    name = f"stranger_empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    yield urlunparse(urlparse(ADMIN_DSN)._replace(path=f"/{name}"))
    admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


async def tables(uri: str) -> set[str]:
    conn = await asyncpg.connect(uri)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


async def revision(uri: str) -> str | None:
    pool = await asyncpg.create_pool(uri, min_size=1, max_size=1)
    try:
        return await current_revision(pool)
    finally:
        await pool.close()


async def test_upgrade_creates_the_tables(empty_uri):
    assert await tables(empty_uri) == set()
    assert await revision(empty_uri) is None
    await migrate(empty_uri)
    assert await tables(empty_uri) == TABLES
    assert await revision(empty_uri) == head_revision(empty_uri)
    await migrate(empty_uri)  # already at head: nothing to do
    assert await revision(empty_uri) == head_revision(empty_uri)


async def test_open_database_refuses_an_unmigrated_schema(empty_uri):
    with pytest.raises(DatabaseError) as caught:
        await open_database(empty_uri, migrate_on_start=False)
    assert "--migrate" in str(caught.value)
    assert await tables(empty_uri) == set()


async def test_open_database_migrates_when_told_to(empty_uri):
    pool = await open_database(empty_uri, migrate_on_start=True)
    try:
        assert await current_revision(pool) == head_revision(empty_uri)
        assert await pool.fetchval("SELECT count(*) FROM users") == 0
    finally:
        await pool.close()
    # Once current, it opens without migrating.
    pool = await open_database(empty_uri, migrate_on_start=False)
    await pool.close()


async def test_open_database_unreachable():
    with pytest.raises(DatabaseError) as caught:
        await open_database("postgresql://postgres@127.0.0.1:1/nothing", migrate_on_start=True)
    assert "database.uri" in str(caught.value)


async def test_downgrade_to_base_and_upgrade_again(empty_uri):
    await migrate(empty_uri)
    config = _alembic_config(empty_uri)
    await asyncio.to_thread(command.downgrade, config, "base")
    assert await tables(empty_uri) == set()
    assert await revision(empty_uri) is None
    await asyncio.to_thread(command.upgrade, config, "head")
    assert await tables(empty_uri) == TABLES
    assert await revision(empty_uri) == head_revision(empty_uri)


async def test_the_schema_guards_its_invariants(database_uri):
    conn = await asyncpg.connect(database_uri)
    try:
        indexes = {r["indexname"] for r in await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
        assert "one_live_conversation_per_user" in indexes
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO conversations (state, invite_deadline) "
                               "VALUES ('bogus', now())")
    finally:
        await conn.close()
