"""The claim's SQL: lock one waiter, find and lock their partner, or note there is none.

Every look-up is a btree probe that returns rows already in arrival order (see
bridge.matching.probes and the indexes in alembic 0002), so a claim costs the same with a
hundred or a hundred thousand users waiting. Rows are locked with SKIP LOCKED: claims in
several processes never wait for each other; one that skipped a locked candidate says so,
and the caller tries again (bridge.matchmaker).
"""
from __future__ import annotations

from contextlib import asynccontextmanager

from bridge.matching import Probes, Waiter
from bridge.store import queue
from bridge.store.recent_pairs import NOT_AVOIDED

# Candidates fetched per look-up, and in all, before locking: enough that a few concurrent
# claims holding the front rows do not hide the next ones.
CANDIDATES_PER_PROBE = 4
CANDIDATES = 8

_W = "user_id, seq, tags, lang, flexible"

# $1 me, $2/$3 exact (lang, tag) keys, $4 flexible tags, $5 flexible langs, $6 any flexible.
# Each ORDER BY names the whole index key, so the planner walks that index (a look-up ordered
# by seq alone could tempt it to walk the queue in arrival order, filtering: a full scan when
# the key is rare).
_CANDIDATES = f"""
    SELECT c.user_id, c.seq FROM unnest($2::text[], $3::text[]) AS p(lang, tag)
    CROSS JOIN LATERAL (
        SELECT k.user_id, k.seq FROM waiting_keys k
        WHERE k.lang = p.lang AND k.tag = p.tag AND k.user_id <> $1
          AND {NOT_AVOIDED.format(other="k.user_id")}
        ORDER BY k.lang, k.tag, k.seq LIMIT {CANDIDATES_PER_PROBE}) c
    UNION ALL
    SELECT c.user_id, c.seq FROM unnest($4::text[]) AS p(tag)
    CROSS JOIN LATERAL (
        SELECT k.user_id, k.seq FROM waiting_keys k
        WHERE k.flexible AND k.tag = p.tag AND k.user_id <> $1
          AND {NOT_AVOIDED.format(other="k.user_id")}
        ORDER BY k.tag, k.seq LIMIT {CANDIDATES_PER_PROBE}) c
    UNION ALL
    SELECT c.user_id, c.seq FROM unnest($5::text[]) AS p(lang)
    CROSS JOIN LATERAL (
        SELECT w.user_id, w.seq FROM waiting w
        -- (a range rather than `=`, so the ORDER BY keeps naming the language)
        WHERE w.flexible AND w.lang >= p.lang AND w.lang <= p.lang AND w.user_id <> $1
          AND {NOT_AVOIDED.format(other="w.user_id")}
        ORDER BY w.lang, w.seq LIMIT {CANDIDATES_PER_PROBE}) c
    UNION ALL
    (SELECT w.user_id, w.seq FROM waiting w
     WHERE $6 AND w.flexible AND w.user_id <> $1 AND {NOT_AVOIDED.format(other="w.user_id")}
     ORDER BY w.seq LIMIT {CANDIDATES_PER_PROBE})"""

# The candidates (a few dozen at most) are fetched by primary key, then sorted: never a walk
# of the queue in arrival order.
_LOCK_PARTNER = """
    SELECT {w} FROM waiting
    WHERE user_id = ANY(ARRAY(SELECT user_id FROM ({candidates}) c
                              ORDER BY seq LIMIT {limit})){guard}
    ORDER BY seq LIMIT 1
    FOR UPDATE SKIP LOCKED"""
_LOCK_PARTNER_FOR_WAITER = _LOCK_PARTNER.format(
    w=_W, candidates=_CANDIDATES, limit=CANDIDATES, guard="")
# For a newcomer who is not in the queue: nobody, should they be waiting or chatting already
# (read after their user row was locked, so nothing queueing them is still under way).
_LOCK_PARTNER_FOR_NEWCOMER = _LOCK_PARTNER.format(
    w=_W, candidates=_CANDIDATES, limit=CANDIDATES, guard="""
      AND NOT EXISTS (SELECT 1 FROM waiting WHERE user_id = $1)
      AND NOT EXISTS (SELECT 1 FROM conversation_sides WHERE user_id = $1 AND live)""")

_ANY_CANDIDATE = f"SELECT EXISTS ({_CANDIDATES})"


@asynccontextmanager
async def transaction(conn):
    """A claim's transaction. Its statements get generic plans: they are index probes whose
    best plan does not depend on the values, and planning the look-up afresh each time
    (PostgreSQL's default for a while) costs more than running it."""
    await conn.execute("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
    try:
        yield conn
    except BaseException:
        await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


async def lock_newcomer(conn, user_id: str) -> Waiter | None:
    """A user about to join the queue, as a waiter (the newest), their user row locked
    until the transaction ends: queueing them (bridge.store.queue.enqueue) takes the same
    lock, so a newcomer is never paired here while also being queued elsewhere. Choosy when
    they have preferences. None for an unknown user."""
    row = await conn.fetchrow(
        "SELECT tags, lang FROM users WHERE user_id = $1 FOR NO KEY UPDATE", user_id)
    if row is None:
        return None
    # Inside their preference window (a waiter without preferences is flexible at once).
    tags, lang = frozenset(row["tags"]), row["lang"]
    return Waiter(user_id, NEWEST, tags, lang, flexible=not tags and lang is None)


# The seq a newcomer would get: after everyone waiting.
NEWEST = 2 ** 63 - 1


def _args(me: Waiter, p: Probes) -> tuple:
    return (me.user_id, [lang for lang, _ in p.exact], [tag for _, tag in p.exact],
            list(p.flexible_tags), list(p.flexible_langs), p.any_flexible)


async def lock_self(conn, user_id: str) -> tuple[Waiter, bool] | None:
    """Lock the waiter; (waiter, whether their preference window has closed). None when
    they are not waiting, or another claim holds them (and will pair or release them)."""
    row = await conn.fetchrow(
        f"""SELECT {_W}, NOT flexible AND fallback_at <= now() AS window_closed
            FROM waiting WHERE user_id = $1 FOR UPDATE SKIP LOCKED""", user_id)
    return (queue.waiter(row), row["window_closed"]) if row else None


async def widen(conn, user_id: str) -> None:
    """The (locked) waiter's preference window has closed: they will now have anyone."""
    await conn.execute("UPDATE waiting SET flexible = true WHERE user_id = $1", user_id)
    await conn.execute("UPDATE waiting_keys SET flexible = true WHERE user_id = $1", user_id)


async def lock_partner(conn, me: Waiter, p: Probes, newcomer: bool = False) -> Waiter | None:
    """The longest-waiting compatible waiter no other claim holds, locked. (`newcomer`:
    `me` is not in the queue; none either when they are waiting or chatting already.)"""
    sql = _LOCK_PARTNER_FOR_NEWCOMER if newcomer else _LOCK_PARTNER_FOR_WAITER
    row = await conn.fetchrow(sql, *_args(me, p))
    return queue.waiter(row) if row else None


async def any_candidate(conn, me: Waiter, p: Probes) -> bool:
    """Is there a compatible waiter, locked or not? After lock_partner found none, True
    means another claim holds them right now: try again shortly."""
    return await conn.fetchval(_ANY_CANDIDATE, *_args(me, p))


async def settle(conn, user_id: str) -> float | None:
    """Nobody for this waiter now: newcomers will find them; the timer looks again when
    their preference window closes (nothing else changes by itself). Returns the seconds
    until that look (None: no look needed)."""
    return await conn.fetchval(
        """UPDATE waiting SET next_check = CASE WHEN flexible THEN NULL ELSE fallback_at END
           WHERE user_id = $1
           RETURNING greatest(0, extract(epoch FROM next_check - now()))::float8""", user_id)


async def check_soon(db, user_id: str, seconds: float) -> None:
    """A claim gave up (contention): have the timer try again."""
    await db.execute(
        "UPDATE waiting SET next_check = now() + make_interval(secs => $2) WHERE user_id = $1",
        user_id, float(seconds))


async def due(db, limit: int) -> list[str]:
    """Waiters the match timer must look at now, longest-waiting first."""
    rows = await db.fetch(
        """SELECT user_id FROM waiting WHERE next_check <= now()
           ORDER BY seq LIMIT $1""", limit)
    return [r["user_id"] for r in rows]


async def seconds_to_next_check(db) -> float | None:
    return await db.fetchval(
        """SELECT greatest(0, extract(epoch FROM min(next_check) - now()))::float8
           FROM waiting WHERE next_check IS NOT NULL""")


async def drop_stale(db, user_ids: list[str]) -> None:
    """Remove waiting rows of users who are in a live conversation (a row that slipped in
    before the enqueue check could see the match)."""
    await db.execute(
        """DELETE FROM waiting w WHERE w.user_id = ANY($1::text[]) AND EXISTS (
               SELECT 1 FROM conversation_sides s WHERE s.user_id = w.user_id AND s.live)""",
        user_ids)
