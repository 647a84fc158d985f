"""The PostgreSQL connection pool and the schema's migrations (alembic owns the schema)."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

log = logging.getLogger("bridge.database")

# alembic/ lives at the top of the checkout, next to this package.
ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


class DatabaseError(RuntimeError):
    """The database cannot be used: unreachable, or its schema is not what this code needs."""


def _alembic_config(uri: str) -> AlembicConfig:
    if not ALEMBIC_INI.exists():
        raise DatabaseError(f"{ALEMBIC_INI} not found: run the bridge from its checkout "
                            "(pip install -e .)")
    config = AlembicConfig(str(ALEMBIC_INI))
    config.attributes["url"] = uri
    return config


def head_revision(uri: str) -> str:
    return ScriptDirectory.from_config(_alembic_config(uri)).get_current_head()


async def migrate(uri: str) -> None:
    """Bring the schema to the latest revision."""
    # alembic's env.py runs its own event loop, so it gets a thread of its own.
    await asyncio.to_thread(command.upgrade, _alembic_config(uri), "head")


async def current_revision(pool: asyncpg.Pool) -> str | None:
    exists = await pool.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
    if not exists:
        return None
    return await pool.fetchval("SELECT version_num FROM alembic_version")


async def keep_session_state(conn: asyncpg.Connection) -> None:
    """A pool's reset (asyncpg's `reset`) for a connection on its way back: nothing more than
    asyncpg's own roll-back of an unfinished transaction, which runs before this. Neither
    the bridge nor mautrix's crypto store keeps session state (no SET, LISTEN, cursors or
    advisory locks outside a transaction), so asyncpg's default reset (RESET ALL; UNLISTEN
    *; ...) would only cost a round trip per acquire: a tenth of a match's database work,
    half of a decryption's."""


async def connect(uri: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    try:
        return await asyncpg.create_pool(uri, min_size=min_size, max_size=max_size,
                                         reset=keep_session_state)
    except (OSError, asyncpg.PostgresError) as e:
        raise DatabaseError(f"cannot connect to PostgreSQL at database.uri: {e}") from e


async def open_database(uri: str, *, migrate_on_start: bool, min_size: int = 1,
                        max_size: int = 10) -> asyncpg.Pool:
    """Connect, then migrate or check that the schema is current."""
    pool = await connect(uri, min_size=min_size, max_size=max_size)
    head = head_revision(uri)
    current = await current_revision(pool)
    if current != head:
        if not migrate_on_start:
            await pool.close()
            raise DatabaseError(
                f"the schema is at revision {current or 'none'} but this bridge needs {head}; "
                "run `python -m bridge -c CONFIG --migrate` or set database.migrate_on_start"
            )
        log.info("Migrating database schema from %s to %s", current or "empty", head)
        await migrate(uri)
    return pool
