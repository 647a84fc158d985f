"""The bridge's connection pool (bridge.database.connect) on real PostgreSQL."""
from __future__ import annotations

from bridge import database


async def test_a_connection_given_back_mid_transaction_comes_back_rolled_back(database_uri):
    pool = await database.connect(database_uri, min_size=1, max_size=1)
    try:
        conn = await pool.acquire()
        await conn.execute("BEGIN")
        await conn.execute("INSERT INTO users (user_id) VALUES ('@half:x')")
        await pool.release(conn)
        async with pool.acquire() as again:
            assert not again.is_in_transaction()
            assert await again.fetchval("SELECT count(*) FROM users") == 0
    finally:
        await pool.close()


async def test_the_pool_skips_the_session_reset_so_nothing_may_set_session_state(database_uri):
    """Giving a connection back costs no round trip: session settings survive it, which is
    why the bridge only ever uses SET LOCAL (inside a transaction)."""
    pool = await database.connect(database_uri, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET application_name = 'left-behind'")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") == "left-behind"
    finally:
        await pool.close()
