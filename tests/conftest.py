"""Shared fixtures: a real PostgreSQL database per test, migrated by alembic."""
from __future__ import annotations

import os
import uuid
from urllib.parse import urlparse, urlunparse

import asyncpg
import pytest

from bridge.database import migrate

# The server tests use; CI and the README's test command make sure it is running.
ADMIN_DSN = os.environ.get("STRANGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# One per test session: sessions running at once (several engineers, CI shards) must not
# drop each other's template mid-run.
TEMPLATE = f"stranger_test_template_{uuid.uuid4().hex[:8]}"


def dsn_for(database: str) -> str:
    parts = urlparse(ADMIN_DSN)
    return urlunparse(parts._replace(path=f"/{database}"))


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as e:
        pytest.exit(
            f"These tests need PostgreSQL at {ADMIN_DSN} (set STRANGER_TEST_PG to use another "
            f"server; `bash .ci/run` starts the local one): {e}", returncode=3)


@pytest.fixture(scope="session")
async def pg_template():
    """A database migrated once per session; each test gets a copy of it."""
    admin = await _admin()
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {TEMPLATE}")
    finally:
        await admin.close()
    await migrate(dsn_for(TEMPLATE))
    yield TEMPLATE
    admin = await _admin()
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def database_uri(pg_template: str):
    """A fresh, migrated database for one test, dropped afterwards."""
    name = f"stranger_test_{uuid.uuid4().hex[:12]}"
    admin = await _admin()
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    finally:
        await admin.close()
    yield dsn_for(name)
    admin = await _admin()
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def pool(database_uri: str):
    pool = await asyncpg.create_pool(database_uri, min_size=1, max_size=10)
    yield pool
    await pool.close()
