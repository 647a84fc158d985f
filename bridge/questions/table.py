"""questions, discussers, question_mirrored: the three-party state of question mode."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

_COLUMNS = ("id, asker, question, state, asked_at, conversation_id, ghost_1, ghost_2, "
            "discuss_only, watch_room_id, joined_at, read_only_told, end_reason, ended_by, "
            "ended_at, closed_at")


@dataclass(frozen=True)
class Question:
    id: int
    asker: str
    question: str
    state: str  # waiting | matched | ended
    asked_at: datetime
    conversation_id: int | None
    ghost_1: str | None  # "Stranger 1" in the watch room: side 0 of the conversation
    ghost_2: str | None  # "Stranger 2": side 1
    discuss_only: list[bool]
    watch_room_id: str | None
    joined_at: datetime | None
    read_only_told: bool
    end_reason: str | None
    ended_by: str | None
    ended_at: datetime | None
    closed_at: datetime | None

    def ghost_of(self, side: int) -> str:
        return self.ghost_1 if side == 0 else self.ghost_2


def _question(row) -> Question | None:
    return Question(*(row[c] for c in _COLUMNS.split(", "))) if row else None


async def ask(db, asker: str, question: str) -> Question | None:
    """A new waiting question; None when the asker has an open one already."""
    return _question(await db.fetchrow(
        f"""INSERT INTO questions (asker, question) VALUES ($1, $2)
            ON CONFLICT (asker) WHERE state <> 'ended' DO NOTHING RETURNING {_COLUMNS}""",
        asker, question))


async def get(db, question_id: int) -> Question | None:
    return _question(await db.fetchrow(f"SELECT {_COLUMNS} FROM questions WHERE id = $1",
                                       question_id))


async def open_of(db, asker: str) -> Question | None:
    """The asker's question not ended yet."""
    return _question(await db.fetchrow(
        f"SELECT {_COLUMNS} FROM questions WHERE asker = $1 AND state <> 'ended'", asker))


async def of_conversation(db, conversation_id: int) -> Question | None:
    return _question(await db.fetchrow(
        f"SELECT {_COLUMNS} FROM questions WHERE conversation_id = $1", conversation_id))


async def by_watch_room(db, room_id: str) -> Question | None:
    return _question(await db.fetchrow(
        f"SELECT {_COLUMNS} FROM questions WHERE watch_room_id = $1", room_id))


async def waiting_ids(db) -> list[int]:
    return [r["id"] for r in await db.fetch(
        "SELECT id FROM questions WHERE state = 'waiting' ORDER BY id")]


async def set_watch_room(db, question_id: int, room_id: str) -> None:
    await db.execute("UPDATE questions SET watch_room_id = $2 WHERE id = $1",
                     question_id, room_id)


async def mark_joined(db, question_id: int) -> bool:
    """Record the asker's join of the watch room; True the first time."""
    status = await db.execute(
        "UPDATE questions SET joined_at = now() WHERE id = $1 AND joined_at IS NULL",
        question_id)
    return status.endswith(" 1")


async def tell_read_only(db, question_id: int) -> bool:
    """True exactly once per watch: the asker is told their messages are not relayed."""
    status = await db.execute(
        "UPDATE questions SET read_only_told = true WHERE id = $1 AND NOT read_only_told",
        question_id)
    return status.endswith(" 1")


async def end(db, question_id: int, reason: str, ended_by: str | None) -> bool:
    """End the question (and so its watch); False when it had ended already."""
    status = await db.execute(
        """UPDATE questions SET state = 'ended', end_reason = $2, ended_by = $3,
                                ended_at = now()
           WHERE id = $1 AND state <> 'ended'""", question_id, reason, ended_by)
    return status.endswith(" 1")


async def mark_closed(db, question_id: int) -> None:
    await db.execute("UPDATE questions SET closed_at = coalesce(closed_at, now()) WHERE id = $1",
                     question_id)


async def unfinished(db) -> list[int]:
    """What start-up (and the question timer) must carry on with: a matched question whose
    watch room is not made, or whose conversation ended without ending the watch; an ended
    one whose watch room is not cleaned up."""
    rows = await db.fetch(
        """SELECT q.id FROM questions q LEFT JOIN conversations c ON c.id = q.conversation_id
           WHERE (q.state = 'matched' AND (q.watch_room_id IS NULL OR c.id IS NULL
                                           OR c.state = 'ended'))
              OR (q.state = 'ended' AND q.closed_at IS NULL AND q.ghost_1 IS NOT NULL)
           ORDER BY q.id""")
    return [r["id"] for r in rows]


async def awaiting_asker(db) -> list[int]:
    """Matched questions whose watch room is made but whose asker's join was not seen (yet:
    or its event came before the room was recorded, or was lost)."""
    return [r["id"] for r in await db.fetch(
        """SELECT id FROM questions WHERE state = 'matched' AND watch_room_id IS NOT NULL
             AND joined_at IS NULL ORDER BY id""")]


# -- the discussers' queue ---------------------------------------------------------------------

async def enqueue_discusser(db, user_id: str) -> bool:
    """Queue the user as a discusser; False when they are waiting (either queue) or in a
    conversation already."""
    return await db.fetchval(
        """WITH busy AS (
               SELECT 1 FROM waiting WHERE user_id = $1
               UNION ALL SELECT 1 FROM conversation_sides WHERE user_id = $1 AND live),
           added AS (
               INSERT INTO discussers (user_id) SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM busy)
               ON CONFLICT (user_id) DO NOTHING RETURNING 1)
           SELECT EXISTS (SELECT 1 FROM added)""", user_id)


async def dequeue_discusser(db, user_id: str) -> bool:
    status = await db.execute("DELETE FROM discussers WHERE user_id = $1", user_id)
    return status.endswith(" 1")


async def is_discusser(db, user_id: str) -> bool:
    return await db.fetchval("SELECT EXISTS (SELECT 1 FROM discussers WHERE user_id = $1)",
                             user_id)


async def discusser_since(db, user_id: str) -> datetime | None:
    return await db.fetchval("SELECT since FROM discussers WHERE user_id = $1", user_id)


async def set_accept(db, user_id: str, accept: bool) -> None:
    await db.execute("UPDATE users SET accept_questions = $2 WHERE user_id = $1",
                     user_id, accept)


async def accepts(db, user_id: str) -> bool:
    return bool(await db.fetchval("SELECT accept_questions FROM users WHERE user_id = $1",
                                  user_id))


# -- mirrored events -----------------------------------------------------------------------

async def record_mirrored(db, source_event_id: str, question_id: int,
                          watch_event_id: str) -> None:
    await db.execute(
        """INSERT INTO question_mirrored (source_event_id, question_id, watch_event_id)
           VALUES ($1, $2, $3) ON CONFLICT (source_event_id) DO NOTHING""",
        source_event_id, question_id, watch_event_id)


async def mirrored(db, source_event_id: str) -> str | None:
    return await db.fetchval(
        "SELECT watch_event_id FROM question_mirrored WHERE source_event_id = $1",
        source_event_id)


async def forget_texts(db, grace_seconds: float) -> int:
    """No transcript: a question's text goes once it has ended plus the evidence grace
    period (a !report question just after the chat still has it), unless an open report of
    it holds it. Returns how many were forgotten."""
    status = await db.execute(
        """UPDATE questions q SET question = ''
           WHERE q.state = 'ended' AND q.question <> ''
             AND q.ended_at < now() - make_interval(secs => $1)
             AND NOT EXISTS (SELECT 1 FROM reports r
                             WHERE r.conversation_id = q.conversation_id
                               AND r.reported_side = 2 AND r.status = 'open')""",
        float(grace_seconds))
    return int(status.split()[-1])
