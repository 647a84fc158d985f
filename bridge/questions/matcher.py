"""An asker and two discussers: one short transaction per question, safe with several bridge
processes (rows locked with SKIP LOCKED: processes never wait for each other).

The discussers come from the discussers' queue (!discuss) and from the chat queue's users
who accept questions (!questions on), longest-waiting first; the pair among them is chosen
by the same policy as any pair (bridge.matching.policy: interests, language, fallback,
recent partners), so "interests and language apply to the discussers as to any pair". The
two become an ordinary conversation (bridge.store.conversations), opened by the pairing's
usual path; the question records it.
"""
from __future__ import annotations

import logging

import asyncpg

from bridge.config import Config
from bridge.matching import policy
from bridge.store import conversations

log = logging.getLogger("bridge.questions.matcher")

# Candidates looked at per queue and question: the oldest few dozen (the policy pairs the
# oldest compatible two among them).
CANDIDATES = 32


async def _candidates(conn, asker: str, fallback_after: float) -> list[tuple[policy.Waiter, bool]]:
    """(waiter, came through !discuss), longest-waiting first; their rows locked."""
    discussers = await conn.fetch(
        """SELECT d.user_id, u.tags, u.lang, extract(epoch FROM d.since)::float8 AS since,
                  now() - d.since >= make_interval(secs => $2) AS window_closed
           FROM discussers d JOIN users u USING (user_id)
           WHERE d.user_id <> $1
             AND NOT EXISTS (SELECT 1 FROM conversation_sides s
                             WHERE s.user_id = d.user_id AND s.live)
           ORDER BY d.seq LIMIT $3
           FOR UPDATE OF d SKIP LOCKED""", asker, float(fallback_after), CANDIDATES)
    chatters = await conn.fetch(
        """SELECT w.user_id, w.tags, w.lang, extract(epoch FROM w.enqueued_at)::float8 AS since,
                  w.flexible AS window_closed
           FROM waiting w JOIN users u USING (user_id)
           WHERE u.accept_questions AND w.user_id <> $1
           ORDER BY w.seq LIMIT $2
           FOR UPDATE OF w SKIP LOCKED""", asker, CANDIDATES)
    rows = sorted([(r, True) for r in discussers] + [(r, False) for r in chatters],
                  key=lambda pair: pair[0]["since"])
    found = []
    for seq, (r, discuss_only) in enumerate(rows):
        tags, lang = frozenset(r["tags"]), r["lang"]
        flexible = bool(r["window_closed"]) or not (tags or lang)
        found.append((policy.Waiter(r["user_id"], seq, tags, lang, flexible), discuss_only))
    return found


async def _recent_pairs(conn, user_ids: list[str]) -> policy.Avoid:
    rows = await conn.fetch(
        """SELECT user_a, user_b FROM recent_pairs
           WHERE until > now() AND user_a = ANY($1::text[]) AND user_b = ANY($1::text[])""",
        user_ids)
    return policy.avoid_pairs((r["user_a"], r["user_b"]) for r in rows)


class QuestionMatcher:
    def __init__(self, pool: asyncpg.Pool, config: Config) -> None:
        self.pool = pool
        self.config = config

    async def match(self, question_id: int) -> int | None:
        """Give the waiting question its two discussers now: the new conversation's ID, or
        None (nobody suitable, or another process holds the question or the candidates; the
        question timer tries again)."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                asker = await conn.fetchval(
                    """SELECT asker FROM questions WHERE id = $1 AND state = 'waiting'
                       FOR UPDATE SKIP LOCKED""", question_id)
                if asker is None:
                    return None
                candidates = await _candidates(conn, asker,
                                               self.config["bridge.matching.fallback_after"])
                came = {w.user_id: discuss_only for w, discuss_only in candidates}
                avoid = await _recent_pairs(conn, list(came))
                pairs = policy.pair_up([w for w, _ in candidates], avoid)
                if not pairs:
                    return None
                first, second = sorted(pairs[0], key=lambda w: w.seq)  # side 0 waited longer
                new = conversations.NewConversation(
                    first.user_id, second.user_id, self.config.ghost_mxid(),
                    self.config.ghost_mxid(), policy.shared_tags(first, second),
                    (policy.unmet(first, second), policy.unmet(second, first)))
                [conversation_id] = await conversations.create_many(
                    conn, [new], self.config["bridge.invite_timeout"], from_queue=True)
                await conn.execute("DELETE FROM discussers WHERE user_id = ANY($1::text[])",
                                   [first.user_id, second.user_id])
                # The watch room's two ghosts: fresh, like every conversation's.
                await conn.execute(
                    """UPDATE questions SET state = 'matched', conversation_id = $2,
                                            ghost_1 = $3, ghost_2 = $4, discuss_only = $5
                       WHERE id = $1""", question_id, conversation_id,
                    self.config.ghost_mxid(), self.config.ghost_mxid(),
                    [came[first.user_id], came[second.user_id]])
        except asyncpg.UniqueViolationError:
            # A candidate was just paired elsewhere (their queue row was stale): next time.
            log.info("Question %d: a candidate was taken meanwhile; trying again later",
                     question_id)
            return None
        log.info("Question %d: discussers matched, conversation %d", question_id,
                 conversation_id)
        return conversation_id
