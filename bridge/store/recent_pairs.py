"""recent_pairs: who must not be paired again yet (bridge.matching.rematch_cooldown)."""
from __future__ import annotations

# The claim's test for "this pair must not meet now"; `me` is the claimant's user_id, `other`
# the candidate's user_id column. (Blocks, when they come, are another NOT EXISTS here.)
NOT_AVOIDED = """NOT EXISTS (
    SELECT 1 FROM recent_pairs r
    WHERE r.user_a = least({me}, {other}) AND r.user_b = greatest({me}, {other})
      AND r.until > now())"""


async def remember(conn, conversation_id: int, cooldown: float) -> None:
    """The conversation's two users just talked: keep them apart for `cooldown` seconds
    (never shortening a longer one already recorded)."""
    if cooldown <= 0:
        return
    await conn.execute(
        """INSERT INTO recent_pairs (user_a, user_b, until)
           SELECT min(user_id), max(user_id), now() + make_interval(secs => $2)
           FROM conversation_sides WHERE conversation_id = $1
           HAVING count(DISTINCT user_id) = 2
           ON CONFLICT (user_a, user_b)
           DO UPDATE SET until = greatest(recent_pairs.until, EXCLUDED.until)""",
        conversation_id, float(cooldown))


async def avoid(db, user_a: str, user_b: str, until: str = "infinity",
                blocked_by: str | None = None) -> None:
    """Keep two users apart until `until` (a timestamp; 'infinity': for good). `blocked_by`:
    which of them blocked the other; a block outlives the blocked one's !forget, not the
    blocker's (erase.py). A block of unknown maker (made before that was recorded) stays
    unknown."""
    a, b = sorted((user_a, user_b))
    await db.execute(
        """INSERT INTO recent_pairs (user_a, user_b, until, blocked_by)
           VALUES ($1, $2, $3::text::timestamptz,
                   CASE WHEN $4::text IS NULL THEN NULL ELSE ARRAY[$4::text] END)
           ON CONFLICT (user_a, user_b) DO UPDATE SET until = EXCLUDED.until,
               blocked_by = CASE
                   WHEN EXCLUDED.blocked_by IS NULL THEN recent_pairs.blocked_by
                   WHEN recent_pairs.until = 'infinity' AND recent_pairs.blocked_by IS NULL
                       THEN NULL
                   ELSE ARRAY(SELECT DISTINCT unnest(
                       coalesce(recent_pairs.blocked_by, '{}') || EXCLUDED.blocked_by)) END""",
        a, b, until, blocked_by)


async def release_expired(db, limit: int = 1000) -> int:
    """Forget expired pairs, and make those of them still waiting due for the match timer:
    they may be each other's partner now. Returns how many pairs were released."""
    return await db.fetchval(
        """WITH expired AS (
               DELETE FROM recent_pairs WHERE (user_a, user_b) IN (
                   SELECT user_a, user_b FROM recent_pairs WHERE until <= now() LIMIT $1)
               RETURNING user_a, user_b),
           due AS (
               UPDATE waiting SET next_check = now()
               WHERE user_id IN (SELECT user_a FROM expired UNION SELECT user_b FROM expired))
           SELECT count(*) FROM expired""", limit)


async def seconds_to_next_expiry(db) -> float | None:
    return await db.fetchval(
        """SELECT greatest(0, extract(epoch FROM min(until) - now()))::float8
           FROM recent_pairs WHERE until < 'infinity'""")
