"""Alembic environment: runs migrations over SQLAlchemy's asyncpg dialect.

The URL is passed in by bridge.database (config key database.uri) as
config.attributes["url"], or from -x url=... when alembic is run by hand.
"""
import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine


def _url() -> str:
    url = context.config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("alembic: no database URL; pass -x url=postgresql://...")
    # SQLAlchemy needs the driver named in the scheme.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    return url


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    engine = create_async_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("alembic: offline (--sql) mode is not supported")
asyncio.run(_main())
