"""The claim's SQL: lock one waiter, find and lock their partner, or note there is none.

Every look-up is a btree probe that returns rows already in arrival order (see
bridge.matching.probes and the indexes in alembic 0002), so a claim costs the same with a
hundred or a hundred thousand users waiting. Rows are locked with SKIP LOCKED: claims in
several processes never wait for each other; one that skipped a locked candidate says so,
and the caller tries again (bridge.matching.matchmaker).
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Collection

from bridge.matching import queue
from bridge.matching.policy import Probes, Waiter, probes
from bridge.store.recent_pairs import NOT_AVOIDED

# Candidates fetched per look-up, and in all, before locking: enough that a few concurrent
# claims holding the front rows do not hide the next ones.
CANDIDATES_PER_PROBE = 4
CANDIDATES = 8

_W = "user_id, seq, tags, lang, flexible"


def _candidates(me: str, exact: str, flexible_tags: str, flexible_langs: str,
                any_flexible: str, mine: str = "", skip: str = "") -> str:
    """The candidates for the claimant `me`: each look-up's `p` rows come from the sources
    given (`mine` keeps the claimant's own, in a batch); `skip` excludes more users.
    Each ORDER BY names the whole index key, so the planner walks that index (a look-up
    ordered by seq alone could tempt it to walk the queue in arrival order, filtering: a
    full scan when the key is rare)."""
    def not_avoided(other: str) -> str:
        return NOT_AVOIDED.format(me=me, other=other)
    return f"""
    SELECT c.user_id, c.seq FROM {exact}
    CROSS JOIN LATERAL (
        SELECT k.user_id, k.seq FROM waiting_keys k
        WHERE k.lang = p.lang AND k.tag = p.tag AND k.user_id <> {me}{skip.format("k")}
          AND {not_avoided("k.user_id")}
        ORDER BY k.lang, k.tag, k.seq LIMIT {CANDIDATES_PER_PROBE}) c{mine}
    UNION ALL
    SELECT c.user_id, c.seq FROM {flexible_tags}
    CROSS JOIN LATERAL (
        SELECT k.user_id, k.seq FROM waiting_keys k
        WHERE k.flexible AND k.tag = p.tag AND k.user_id <> {me}{skip.format("k")}
          AND {not_avoided("k.user_id")}
        ORDER BY k.tag, k.seq LIMIT {CANDIDATES_PER_PROBE}) c{mine}
    UNION ALL
    SELECT c.user_id, c.seq FROM {flexible_langs}
    CROSS JOIN LATERAL (
        SELECT w.user_id, w.seq FROM waiting w
        -- (a range rather than `=`, so the ORDER BY keeps naming the language)
        WHERE w.flexible AND w.lang >= p.lang AND w.lang <= p.lang
          AND w.user_id <> {me}{skip.format("w")} AND {not_avoided("w.user_id")}
        ORDER BY w.lang, w.seq LIMIT {CANDIDATES_PER_PROBE}) c{mine}
    UNION ALL
    (SELECT w.user_id, w.seq FROM waiting w
     WHERE {any_flexible} AND w.flexible AND w.user_id <> {me}{skip.format("w")}
       AND {not_avoided("w.user_id")}
     ORDER BY w.seq LIMIT {CANDIDATES_PER_PROBE})"""


# $1 me, $2/$3 exact (lang, tag) keys, $4 flexible tags, $5 flexible langs, $6 any flexible.
_CANDIDATES = _candidates(
    "$1", exact="unnest($2::text[], $3::text[]) AS p(lang, tag)",
    flexible_tags="unnest($4::text[]) AS p(tag)", flexible_langs="unnest($5::text[]) AS p(lang)",
    any_flexible="$6")

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

_ANY_CANDIDATE = f"SELECT EXISTS ({_CANDIDATES})"

# Several newcomers at once (none of them in the queue), the i-th newcomer's look-ups tagged
# with i: $1 the newcomers; $2 partners already taken in this transaction (rows it has
# locked itself, which SKIP LOCKED does not skip); $3-$5 exact (i, lang, tag) keys; $6/$7
# flexible (i, tag); $8/$9 flexible (i, lang); $10 the i that take anyone flexible.
# A newcomer who is waiting or chatting already gets nobody (read after their user row was
# locked, so nothing queueing them is still under way).
_LOCK_PARTNERS_FOR_NEWCOMERS = f"""
    SELECT m.user_id, m.seq, m.tags, m.lang, m.flexible
    FROM unnest($1::text[]) WITH ORDINALITY AS n(user_id, i)
    LEFT JOIN LATERAL (
        SELECT {_W} FROM waiting
        WHERE user_id = ANY(ARRAY(SELECT user_id FROM ({_candidates(
            "n.user_id", exact="unnest($3::bigint[], $4::text[], $5::text[]) AS p(i, lang, tag)",
            flexible_tags="unnest($6::bigint[], $7::text[]) AS p(i, tag)",
            flexible_langs="unnest($8::bigint[], $9::text[]) AS p(i, lang)",
            any_flexible="n.i = ANY($10::bigint[])", mine=" WHERE p.i = n.i",
            skip=" AND {0}.user_id <> ALL($2::text[])")}) c
                                  ORDER BY seq LIMIT {CANDIDATES}))
          AND NOT EXISTS (SELECT 1 FROM waiting q WHERE q.user_id = n.user_id)
          AND NOT EXISTS (SELECT 1 FROM conversation_sides s
                          WHERE s.user_id = n.user_id AND s.live)
        ORDER BY seq LIMIT 1
        FOR UPDATE SKIP LOCKED) m ON true
    ORDER BY n.i"""


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


async def lock_newcomers(conn, user_ids: list[str]) -> dict[str, Waiter]:
    """Users about to join the queue, as waiters (the newest; choosy when they have
    preferences), their user rows locked until the transaction ends: queueing them
    (bridge.matching.queue.enqueue) takes the same lock, so a newcomer is never paired here
    while also being queued elsewhere. Unknown users are left out. (Locked in user_id
    order, so two batches sharing users never deadlock.)"""
    rows = await conn.fetch(
        """SELECT user_id, tags, lang FROM users WHERE user_id = ANY($1::text[])
           ORDER BY user_id FOR NO KEY UPDATE""", user_ids)
    return {r["user_id"]: _newcomer(r["user_id"], frozenset(r["tags"]), r["lang"])
            for r in rows}


def _newcomer(user_id: str, tags: frozenset[str], lang: str | None) -> Waiter:
    # Inside their preference window (a waiter without preferences is flexible at once).
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


async def lock_partner(conn, me: Waiter, p: Probes) -> Waiter | None:
    """The longest-waiting compatible waiter no other claim holds, locked."""
    row = await conn.fetchrow(_LOCK_PARTNER_FOR_WAITER, *_args(me, p))
    return queue.waiter(row) if row else None


async def lock_partners(conn, newcomers: list[Waiter], taken: Collection[str] = ()
                        ) -> list[Waiter | None]:
    """For each newcomer (none of them in the queue), as lock_partner: their longest-waiting
    compatible partner, other than those in `taken`, that no other transaction holds;
    locked. Each is looked up as if alone, so two may find the same partner (the caller
    decides: bridge.matching.accept_in_order). None for nobody, and for a newcomer who is
    waiting or chatting already."""
    exact: tuple[list, list, list] = ([], [], [])
    flexible_tags: tuple[list, list] = ([], [])
    flexible_langs: tuple[list, list] = ([], [])
    any_flexible = []
    for i, me in enumerate(newcomers, start=1):
        p = probes(me)
        for lang, tag in p.exact:
            exact[0].append(i), exact[1].append(lang), exact[2].append(tag)
        for tag in p.flexible_tags:
            flexible_tags[0].append(i), flexible_tags[1].append(tag)
        for lang in p.flexible_langs:
            flexible_langs[0].append(i), flexible_langs[1].append(lang)
        if p.any_flexible:
            any_flexible.append(i)
    rows = await conn.fetch(_LOCK_PARTNERS_FOR_NEWCOMERS, [me.user_id for me in newcomers],
                            list(taken), *exact, *flexible_tags, *flexible_langs, any_flexible)
    return [None if r["user_id"] is None else queue.waiter(r) for r in rows]


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
