"""PostgreSQL access, one module per table. Plain SQL over asyncpg; functions take a pool or
a connection (inside a transaction) as their first argument."""
