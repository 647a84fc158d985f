"""reveal_requests: each side's request to exchange contacts, and which notices about it are
still due. Decisions lock the conversation's row, so two requests at the same instant (in two
rooms, or two bridge processes) are decided one after the other: the second one reveals."""
from __future__ import annotations

import enum
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

from bridge.reveal.consent import Action, Outcome, State, decide
from bridge.store import conversations


class Kind(enum.Enum):
    ASKED = "asked"          # tell the partner of this side's request
    WITHDRAWN = "withdrawn"  # tell the partner this side took it back
    REVEALED = "revealed"    # tell this side the partner's Matrix ID


@dataclass(frozen=True)
class Due:
    """A notice still to be sent about `side`'s request (for REVEALED: to `side` itself)."""
    conversation_id: int
    side: int
    kind: Kind
    round: int


# When each kind of notice is due (and not yet sent), on a reveal_requests row r of
# conversation c. A request's notices are moot once the chat has ended; the reveal's is not.
_DUE = {
    Kind.ASKED: """r.revealed_at IS NULL AND r.cancelled_at IS NULL AND r.asked_told_at IS NULL
                   AND c.state = 'active'""",
    Kind.WITHDRAWN: """r.cancelled_at IS NOT NULL AND r.asked_told_at IS NOT NULL
                       AND r.withdrawn_told_at IS NULL AND c.state = 'active'""",
    Kind.REVEALED: "r.revealed_at IS NOT NULL AND r.delivered_at IS NULL",
}
_TOLD_COLUMN = {Kind.ASKED: "asked_told_at", Kind.WITHDRAWN: "withdrawn_told_at",
                Kind.REVEALED: "delivered_at"}


async def decide_and_record(pool, conversation_id: int, side: int, action: Action) -> Outcome:
    """Read the conversation's state, decide (consent.decide), and record the decision, in one
    transaction holding the conversation's row lock."""
    async with pool.acquire() as conn, conn.transaction():
        await conversations.lock(conn, conversation_id)
        row = await conn.fetchrow(
            """SELECT c.state, s.live FROM conversations c JOIN conversation_sides s
                 ON s.conversation_id = c.id
               WHERE c.id = $1 AND s.side = $2""", conversation_id, side)
        if row is None:
            return Outcome.ENDED
        requests = await conn.fetch(
            """SELECT side, cancelled_at IS NULL AS open, revealed_at IS NOT NULL AS revealed
               FROM reveal_requests WHERE conversation_id = $1""", conversation_id)
        asked = [False, False]
        for r in requests:
            asked[r["side"]] = r["open"]
        state = State(row["state"], row["live"], (asked[0], asked[1]),
                      any(r["revealed"] for r in requests))
        outcome = decide(state, side, action)
        if outcome in (Outcome.ASKED, Outcome.REVEALED):
            # A new request (the first, or again after taking one back).
            await conn.execute(
                """INSERT INTO reveal_requests (conversation_id, side) VALUES ($1, $2)
                   ON CONFLICT (conversation_id, side) DO UPDATE SET
                       round = reveal_requests.round + 1, requested_at = now(),
                       cancelled_at = NULL, asked_told_at = NULL, withdrawn_told_at = NULL""",
                conversation_id, side)
        if outcome is Outcome.REVEALED:
            await conn.execute(
                "UPDATE reveal_requests SET revealed_at = now() WHERE conversation_id = $1",
                conversation_id)
        elif outcome is Outcome.CANCELLED:
            await conn.execute(
                """UPDATE reveal_requests SET cancelled_at = now()
                   WHERE conversation_id = $1 AND side = $2""", conversation_id, side)
        return outcome


async def pending(db, conversation_id: int | None = None) -> list[Due]:
    """The notices still to send (of one conversation, or of all: at start-up)."""
    found = []
    for kind, condition in _DUE.items():
        rows = await db.fetch(
            f"""SELECT r.conversation_id, r.side, r.round FROM reveal_requests r
                JOIN conversations c ON c.id = r.conversation_id
                WHERE ($1::bigint IS NULL OR r.conversation_id = $1) AND {condition}
                ORDER BY r.conversation_id, r.side""", conversation_id)
        found += [Due(r["conversation_id"], r["side"], kind, r["round"]) for r in rows]
    return found


@asynccontextmanager
async def claimed(pool, notice: Due) -> AsyncIterator[bool]:
    """Hold `notice` while it is sent: yields False when it is no longer due or another
    task (or process) is sending it right now. The notice is marked sent when the block
    exits normally; if it raises (or the process dies) it stays due, and is sent again
    with the same transaction ID, which the homeserver deduplicates."""
    async with pool.acquire() as conn, conn.transaction():
        held = await conn.fetchval(
            f"""SELECT true FROM reveal_requests r JOIN conversations c
                  ON c.id = r.conversation_id
                WHERE r.conversation_id = $1 AND r.side = $2 AND r.round = $3
                  AND {_DUE[notice.kind]}
                FOR UPDATE OF r SKIP LOCKED""",
            notice.conversation_id, notice.side, notice.round)
        yield bool(held)
        if held:
            await conn.execute(
                f"""UPDATE reveal_requests SET {_TOLD_COLUMN[notice.kind]} = now()
                    WHERE conversation_id = $1 AND side = $2""",
                notice.conversation_id, notice.side)


async def chat_is_on(db, conversation_id: int) -> bool:
    """The chat is active now (not opening, not ended)."""
    return bool(await db.fetchval(
        "SELECT state = 'active' FROM conversations WHERE id = $1", conversation_id))
