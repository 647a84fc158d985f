"""conversations and conversation_sides: who talks to whom, in which rooms, through which ghosts."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

_SIDE_COLUMNS = ("conversation_id, side, user_id, ghost_id, room_id, joined_at, live, closed_at, "
                 "interests_unmet, language_unmet, goodbye_at")


@dataclass(frozen=True)
class Side:
    conversation_id: int
    side: int  # 0 or 1
    user_id: str
    ghost_id: str  # the anonymous user in this user's room, standing for the partner
    room_id: str | None
    joined_at: datetime | None
    live: bool
    closed_at: datetime | None
    # The match fell back on this user's interests / language (their opening notice says so).
    interests_unmet: bool = False
    language_unmet: bool = False
    # When the user was told the partner had gone ("Stranger has disconnected.").
    goodbye_at: datetime | None = None

    @property
    def other(self) -> int:
        return 1 - self.side


@dataclass(frozen=True)
class Conversation:
    id: int
    state: str  # opening | active | ended
    invite_deadline: datetime
    end_reason: str | None
    ended_by: str | None
    sides: tuple[Side, Side]
    shared_tags: tuple[str, ...] = ()
    created_at: datetime | None = None

    def side_of(self, user_id: str) -> Side | None:
        return next((s for s in self.sides if s.user_id == user_id), None)

    def partner_of(self, side: Side) -> Side:
        return self.sides[side.other]


def _side(row) -> Side:
    return Side(*(row[c] for c in _SIDE_COLUMNS.split(", ")))


async def get(db, conversation_id: int) -> Conversation | None:
    head = await db.fetchrow(
        """SELECT id, state, invite_deadline, end_reason, ended_by, shared_tags, created_at
           FROM conversations WHERE id = $1""",
        conversation_id)
    if head is None:
        return None
    rows = await db.fetch(
        f"SELECT {_SIDE_COLUMNS} FROM conversation_sides WHERE conversation_id = $1 ORDER BY side",
        conversation_id)
    return Conversation(head["id"], head["state"], head["invite_deadline"], head["end_reason"],
                        head["ended_by"], tuple(_side(r) for r in rows),
                        tuple(head["shared_tags"]), head["created_at"])


@dataclass(frozen=True)
class NewConversation:
    """A conversation to create: ghost_for_a sits in a's room, standing for b. `unmet`: per
    side, (interests, language) the match could not honour."""
    user_a: str
    user_b: str
    ghost_for_a: str
    ghost_for_b: str
    shared_tags: tuple[str, ...] = ()
    unmet: tuple[tuple[bool, bool], tuple[bool, bool]] = ((False, False), (False, False))


async def create(conn, user_a: str, user_b: str, ghost_for_a: str, ghost_for_b: str,
                 invite_timeout: float, shared_tags: tuple[str, ...] = (),
                 unmet: tuple[tuple[bool, bool], tuple[bool, bool]] = ((False, False),
                                                                       (False, False)),
                 from_queue: bool = False) -> int:
    """A new conversation in state 'opening' (see NewConversation and create_many)."""
    [conversation_id] = await create_many(
        conn, [NewConversation(user_a, user_b, ghost_for_a, ghost_for_b, shared_tags, unmet)],
        invite_timeout, from_queue)
    return conversation_id


async def create_many(conn, new: list[NewConversation], invite_timeout: float,
                      from_queue: bool = False) -> list[int]:
    """New conversations in state 'opening', in one statement; their IDs, in order.
    `from_queue`: also take everyone in them out of the waiting queue (in the same
    statement: a round trip less per match)."""
    ids, _ = await create_from_queue(conn, new, invite_timeout, from_queue)
    return ids


async def create_from_queue(conn, new: list[NewConversation], invite_timeout: float,
                            from_queue: bool = True) -> tuple[list[int], dict[str, float]]:
    """create_many, also giving the seconds each user taken out of the queue had waited
    there (the time-to-match metric); users who were not waiting are not in it."""
    tag_index = [i for i, c in enumerate(new, start=1) for _ in c.shared_tags]
    tags = [tag for c in new for tag in c.shared_tags]
    rows = await conn.fetch(
        """WITH v AS (
               -- (IDs drawn here, so the sides need not rely on the order of RETURNING)
               SELECT nextval('conversations_id_seq') AS id, v.*
               FROM unnest($3::text[], $4::text[], $5::boolean[], $6::boolean[],
                           $7::text[], $8::text[], $9::boolean[], $10::boolean[])
                    WITH ORDINALITY AS v(user_a, ghost_a, interests_a, language_a,
                                         user_b, ghost_b, interests_b, language_b, i)),
           gone AS (DELETE FROM waiting WHERE $11 AND user_id IN (
               SELECT user_a FROM v UNION ALL SELECT user_b FROM v)
               RETURNING user_id, extract(epoch FROM now() - enqueued_at)::float8 AS waited),
           c AS (
               INSERT INTO conversations (id, invite_deadline, shared_tags)
               SELECT v.id, now() + make_interval(secs => $1),
                      array(SELECT t.tag FROM unnest($2::bigint[], $12::text[])
                                   WITH ORDINALITY AS t(i, tag, n)
                            WHERE t.i = v.i ORDER BY t.n)
               FROM v),
           s AS (
               INSERT INTO conversation_sides (conversation_id, side, user_id, ghost_id,
                                               interests_unmet, language_unmet)
               SELECT id, 0, user_a, ghost_a, interests_a, language_a FROM v
               UNION ALL
               SELECT id, 1, user_b, ghost_b, interests_b, language_b FROM v)
           SELECT id, CASE WHEN i = 1 THEN (SELECT jsonb_object_agg(user_id, waited)
                                            FROM gone)::text END AS waited
           FROM v ORDER BY i""",
        float(invite_timeout), tag_index,
        [c.user_a for c in new], [c.ghost_for_a for c in new],
        [c.unmet[0][0] for c in new], [c.unmet[0][1] for c in new],
        [c.user_b for c in new], [c.ghost_for_b for c in new],
        [c.unmet[1][0] for c in new], [c.unmet[1][1] for c in new], from_queue, tags)
    waited = json.loads(rows[0]["waited"]) if rows and rows[0]["waited"] else {}
    return [r["id"] for r in rows], waited


async def side_by_room(db, room_id: str) -> Side | None:
    row = await db.fetchrow(
        f"SELECT {_SIDE_COLUMNS} FROM conversation_sides WHERE room_id = $1", room_id)
    return _side(row) if row else None


async def live_side_of(db, user_id: str) -> Side | None:
    row = await db.fetchrow(
        f"SELECT {_SIDE_COLUMNS} FROM conversation_sides WHERE user_id = $1 AND live", user_id)
    return _side(row) if row else None


async def set_room(db, conversation_id: int, side: int, room_id: str) -> None:
    await db.execute(
        "UPDATE conversation_sides SET room_id = $3 WHERE conversation_id = $1 AND side = $2",
        conversation_id, side, room_id)


async def lock(conn, conversation_id: int) -> None:
    """Row-lock the conversation for the caller's transaction."""
    await conn.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", conversation_id)


async def mark_joined(db, conversation_id: int, side: int) -> bool:
    """Record the join; True when both sides have now joined."""
    return await db.fetchval(
        """WITH joined AS (
               UPDATE conversation_sides SET joined_at = coalesce(joined_at, now())
               WHERE conversation_id = $1 AND side = $2 AND live RETURNING side)
           SELECT count(*) = 1 AND EXISTS (SELECT 1 FROM joined) FROM conversation_sides
           WHERE conversation_id = $1 AND side <> $2 AND joined_at IS NOT NULL""",
        conversation_id, side)


async def activate(db, conversation_id: int) -> bool:
    """opening -> active; False when it was not opening (already active, or ended)."""
    status = await db.execute(
        "UPDATE conversations SET state = 'active' WHERE id = $1 AND state = 'opening'",
        conversation_id)
    return status.endswith(" 1")


async def end(conn, conversation_id: int, reason: str, ended_by: str | None) -> bool:
    """End the conversation; False when it had already ended (ending is idempotent)."""
    status = await conn.execute(
        """UPDATE conversations SET state = 'ended', ended_at = now(), end_reason = $2,
                                    ended_by = $3
           WHERE id = $1 AND state <> 'ended'""", conversation_id, reason, ended_by)
    if not status.endswith(" 1"):
        return False
    await conn.execute(
        "UPDATE conversation_sides SET live = false WHERE conversation_id = $1", conversation_id)
    return True


async def mark_goodbye(db, conversation_id: int, side: int) -> float:
    """Record (once) that the side was told the partner had gone; seconds since then."""
    return await db.fetchval(
        """UPDATE conversation_sides SET goodbye_at = coalesce(goodbye_at, now())
           WHERE conversation_id = $1 AND side = $2
           RETURNING extract(epoch FROM now() - goodbye_at)::float8""", conversation_id, side)


async def mark_closed(db, conversation_id: int, side: int) -> None:
    await db.execute(
        """UPDATE conversation_sides SET closed_at = now()
           WHERE conversation_id = $1 AND side = $2""", conversation_id, side)


async def expired_invites(db) -> list[int]:
    rows = await db.fetch(
        "SELECT id FROM conversations WHERE state = 'opening' AND invite_deadline <= now()")
    return [r["id"] for r in rows]


async def seconds_to_next_deadline(db) -> float | None:
    return await db.fetchval(
        """SELECT greatest(0, extract(epoch FROM min(invite_deadline) - now()))::float8
           FROM conversations WHERE state = 'opening'""")


async def unfinished(db, min_age: float = 0.0) -> list[int]:
    """Conversations whose rooms may be half-made or whose ended rooms are not cleaned up:
    what start-up must carry on with after a crash (opening ones matched at least min_age
    seconds ago)."""
    rows = await db.fetch(
        """SELECT DISTINCT c.id FROM conversations c JOIN conversation_sides s
             ON s.conversation_id = c.id
           WHERE (c.state = 'opening' AND (s.room_id IS NULL OR s.joined_at IS NOT NULL)
                  AND c.created_at <= now() - make_interval(secs => $1))
              OR (NOT s.live AND s.closed_at IS NULL)
           ORDER BY c.id""", min_age)
    return [r["id"] for r in rows]


async def count_chatting(db) -> int:
    """People in a conversation now (including those still being invited)."""
    return await db.fetchval("SELECT count(*) FROM conversation_sides WHERE live")


async def live_since(db, user_id: str) -> datetime | None:
    """When the user's current conversation was matched (None: not in one)."""
    return await db.fetchval(
        """SELECT c.created_at FROM conversation_sides s JOIN conversations c
             ON c.id = s.conversation_id WHERE s.user_id = $1 AND s.live""", user_id)


async def count_live(db) -> int:
    return await db.fetchval("SELECT count(*) FROM conversations WHERE state <> 'ended'")


async def live_sides(db) -> list[Side]:
    """Every side of a conversation not ended yet that has its room."""
    rows = await db.fetch(
        f"SELECT {_SIDE_COLUMNS} FROM conversation_sides WHERE live AND room_id IS NOT NULL")
    return [_side(r) for r in rows]


async def stale_unclosed(db, older_than_seconds: float) -> list[int]:
    """Ended conversations whose rooms are still not cleaned up a while after they ended:
    the cleanup failed (homeserver or database away) and must be tried again."""
    rows = await db.fetch(
        """SELECT DISTINCT c.id FROM conversations c JOIN conversation_sides s
             ON s.conversation_id = c.id
           WHERE c.state = 'ended' AND s.closed_at IS NULL
             AND c.ended_at < now() - make_interval(secs => $1)
           ORDER BY c.id""", older_than_seconds)
    return [r["id"] for r in rows]


async def live_user_ids(db) -> list[str]:
    """Everyone in a conversation not ended yet (rooms made or not)."""
    return [r["user_id"] for r in await db.fetch(
        "SELECT user_id FROM conversation_sides WHERE live")]


async def count_since(db, user_id: str, seconds: float) -> int:
    """Conversations the user was matched into within the last `seconds`."""
    return await db.fetchval(
        """SELECT count(*) FROM conversation_sides s JOIN conversations c
             ON c.id = s.conversation_id
           WHERE s.user_id = $1 AND c.created_at > now() - make_interval(secs => $2)""",
        user_id, float(seconds))
