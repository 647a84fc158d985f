"""What `!forget confirm` deletes, table by table, in one transaction (plain SQL).

Kept, by design: reports (by or about the user), sanctions, the moderators' log and the
evidence a report holds: the operator's legal record (README "Data retention"); and blocks
other users made against them (they protect those users; the user's own blocks go). Ended
conversations stay as rows (a report points at its conversation; the partner's history
counts for their own automatic-suspension figures), but the user's side of each is given a
random stand-in user ID ("forgotten:<hex>", one per erasure, never an MXID) in place of
theirs; so are questions they asked. Not at once for a chat (or a question's discussion)
that ended within the report grace period (bridge.moderation.evidence_grace): the partner
may still report them, so it keeps the real ID until then, and scrub_due (the periodic
purge) gives it the stand-in, once; meanwhile a users row of the bare ID stays (the sides
point at it), emptied of everything else.
Their Olm/Megolm sessions are keyed by device keys, not their ID, and go with the bot's
hourly key pruning; the device list the crypto store keeps of them is crypto_store.forget_user.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import asyncpg

STAND_IN_PREFIX = "forgotten:"


@dataclass
class Erased:
    user: bool = False      # their users row (agreement, interests, language, DM room)
    conversations: int = 0  # ended conversations whose side of theirs now has a stand-in
    questions: int = 0      # questions they asked, now under the stand-in
    kept: int = 0           # chats and questions keeping the real ID for the grace period
    blocks_kept: int = 0    # blocks others made against them
    inbox: int = 0          # handled events of their rooms whose IDs were kept


# A question still "recent" for a report: not closed yet (its watch room is still to be
# closed, which needs it), ended within the grace, or its discussion not over a grace ago.
_QUESTION_RECENT = """(q.closed_at IS NULL AND q.ghost_1 IS NOT NULL)
    OR q.ended_at > now() - make_interval(secs => $2)
    OR EXISTS (SELECT 1 FROM conversations c WHERE c.id = q.conversation_id
               AND (c.state <> 'ended' OR c.ended_at > now() - make_interval(secs => $2)))"""


async def erase(conn: asyncpg.Connection, user_id: str, grace: float = 0.0) -> Erased:
    """Delete everything the bridge holds of `user_id` but the legal record and others'
    blocks; chats and questions a report may still name (`grace` seconds) wait for
    scrub_due. The caller has ended their live conversation and question first (a live one
    is refused: ValueError)."""
    erased = Erased()
    grace = float(grace)
    async with conn.transaction():
        # Serialised with anything that would re-create their rows meanwhile (a !start).
        dm_room = await conn.fetchval(
            "SELECT dm_room_id FROM users WHERE user_id = $1 FOR UPDATE", user_id)
        sides = await conn.fetch(
            """SELECT s.conversation_id, s.room_id, c.state,
                      c.ended_at > now() - make_interval(secs => $2) AS recent
               FROM conversation_sides s
               JOIN conversations c ON c.id = s.conversation_id WHERE s.user_id = $1""",
            user_id, grace)
        if any(s["state"] != "ended" for s in sides):
            raise ValueError("end the user's live conversation before erasing them")
        asked = await conn.fetch(
            f"""SELECT q.id, q.state, q.ghost_1 IS NOT NULL AS matched,
                       ({_QUESTION_RECENT}) AS recent
                FROM questions q WHERE q.asker = $1""", user_id, grace)
        if any(q["state"] != "ended" for q in asked):
            raise ValueError("end the user's question before erasing them")
        conversation_ids = [s["conversation_id"] for s in sides]
        rooms = [r for r in (dm_room, *(s["room_id"] for s in sides)) if r]
        # A question never matched was seen by nobody: it goes.
        await conn.execute("DELETE FROM questions WHERE asker = $1 AND ghost_1 IS NULL",
                           user_id)
        old = [s["conversation_id"] for s in sides if not s["recent"]]
        recent = [s["conversation_id"] for s in sides if s["recent"]]
        old_questions = [q["id"] for q in asked if q["matched"] and not q["recent"]]
        recent_questions = [q["id"] for q in asked if q["matched"] and q["recent"]]
        if conversation_ids or old_questions or recent_questions:
            stand_in = STAND_IN_PREFIX + secrets.token_hex(16)
            await conn.execute("INSERT INTO users (user_id) VALUES ($1)", stand_in)
            erased.conversations = await _scrub_conversations(conn, user_id, stand_in, old)
            erased.questions = await _scrub_questions(conn, user_id, stand_in, old_questions)
            # Nothing maps events of an ended conversation any more (edits, replies and
            # redactions cross only while it lasts), nor its calls.
            await conn.execute("DELETE FROM relayed WHERE conversation_id = ANY($1::bigint[])",
                               conversation_ids)
            await conn.execute("DELETE FROM call_ids WHERE conversation_id = ANY($1::bigint[])",
                               conversation_ids)
            if recent or recent_questions:
                await conn.execute(
                    """INSERT INTO forget_pending (user_id, stand_in, conversation_ids,
                                                   question_ids) VALUES ($1, $2, $3, $4)""",
                    user_id, stand_in, recent, recent_questions)
                erased.kept = len(recent) + len(recent_questions)
        # The IDs of their handled events (the bodies went when handled). Events still
        # waiting (this very !forget confirm) are marked handled after, and pruned in a week.
        status = await conn.execute(
            "DELETE FROM inbox WHERE room_id = ANY($1::text[]) AND handled_at IS NOT NULL",
            rooms)
        erased.inbox = int(status.split()[-1])
        erased.blocks_kept = await _drop_pairs(conn, user_id)
        if erased.kept:
            # The bare ID stays while chats point at it: nothing else of theirs.
            await _empty_user(conn, user_id)
            erased.user = True
        else:
            # Cascades to the queue (waiting, waiting_keys), start cooldowns, the
            # discussers' queue.
            status = await conn.execute("DELETE FROM users WHERE user_id = $1", user_id)
            erased.user = status.endswith(" 1")
    return erased


async def _drop_pairs(conn, user_id: str) -> int:
    """Their recent partners and their own blocks go; blocks others made against them stay
    (a block of unknown maker too). Returns how many blocks stay."""
    await conn.execute(
        """DELETE FROM recent_pairs WHERE (user_a = $1 OR user_b = $1)
             AND (until < 'infinity' OR blocked_by = ARRAY[$1::text])""", user_id)
    await conn.execute(
        """UPDATE recent_pairs SET blocked_by = array_remove(blocked_by, $1)
           WHERE (user_a = $1 OR user_b = $1) AND $1 = ANY(blocked_by)""", user_id)
    return await conn.fetchval(
        "SELECT count(*) FROM recent_pairs WHERE user_a = $1 OR user_b = $1", user_id)


async def _empty_user(conn, user_id: str) -> None:
    await conn.execute(
        """UPDATE users SET dm_room_id = NULL, agreed_at = NULL, tags = '{}', lang = NULL,
                            forget_asked_at = NULL, accept_questions = false,
                            created_at = now()
           WHERE user_id = $1""", user_id)
    for table in ("waiting", "discussers", "start_limits"):
        await conn.execute(f"DELETE FROM {table} WHERE user_id = $1", user_id)


async def _scrub_conversations(conn, user_id: str, stand_in: str,
                               conversation_ids: list[int]) -> int:
    """Their side of these ended conversations gets the stand-in (and whatever names them
    as the one who ended it: the conversation, its question)."""
    status = await conn.execute(
        """UPDATE conversation_sides SET user_id = $2
           WHERE user_id = $1 AND conversation_id = ANY($3::bigint[])""",
        user_id, stand_in, conversation_ids)
    await conn.execute(
        """UPDATE conversations SET ended_by = $2
           WHERE ended_by = $1 AND id = ANY($3::bigint[])""", user_id, stand_in,
        conversation_ids)
    await conn.execute(
        """UPDATE questions SET ended_by = $2
           WHERE ended_by = $1 AND conversation_id = ANY($3::bigint[])""", user_id, stand_in,
        conversation_ids)
    return int(status.split()[-1])


async def _scrub_questions(conn, user_id: str, stand_in: str, question_ids: list[int]) -> int:
    status = await conn.execute(
        """UPDATE questions SET asker = $2,
                  ended_by = CASE WHEN ended_by = $1 THEN $2 ELSE ended_by END
           WHERE asker = $1 AND id = ANY($3::bigint[])""", user_id, stand_in, question_ids)
    return int(status.split()[-1])


async def scrub_due(pool: asyncpg.Pool, grace: float) -> int:
    """The periodic purge's step: forgotten users' chats and questions whose grace period
    is over get their stand-in now. Each is scrubbed once (its real ID is gone after), a
    pending row goes with its last one, and the users row of the bare ID with it (unless
    they came back meanwhile). Rows another process holds are left to it. Returns how many
    chats and questions were scrubbed."""
    done = 0
    for pending_id in [r["id"] for r in await pool.fetch(
            "SELECT id FROM forget_pending ORDER BY id")]:
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM forget_pending WHERE id = $1 FOR UPDATE SKIP LOCKED", pending_id)
            if row is None:
                continue
            user_id, stand_in = row["user_id"], row["stand_in"]
            due = [r["id"] for r in await conn.fetch(
                """SELECT id FROM conversations WHERE id = ANY($1::bigint[])
                     AND state = 'ended' AND ended_at <= now() - make_interval(secs => $2)""",
                row["conversation_ids"], float(grace))]
            done += await _scrub_conversations(conn, user_id, stand_in, due)
            due_questions = [r["id"] for r in await conn.fetch(
                f"""SELECT q.id FROM questions q WHERE q.id = ANY($1::bigint[])
                      AND q.state = 'ended' AND NOT ({_QUESTION_RECENT})""",
                row["question_ids"], float(grace))]
            done += await _scrub_questions(conn, user_id, stand_in, due_questions)
            left = await conn.fetchval(
                """SELECT (SELECT count(*) FROM conversation_sides
                           WHERE user_id = $1 AND conversation_id = ANY($2::bigint[]))
                        + (SELECT count(*) FROM questions
                           WHERE asker = $1 AND id = ANY($3::bigint[]))""",
                user_id, row["conversation_ids"], row["question_ids"])
            if left:
                continue
            await conn.execute("DELETE FROM forget_pending WHERE id = $1", pending_id)
            # The bare row, unless they came back (a DM, an agreement) or still have chats.
            await conn.execute(
                """DELETE FROM users u WHERE user_id = $1 AND dm_room_id IS NULL
                     AND agreed_at IS NULL
                     AND NOT EXISTS (SELECT 1 FROM conversation_sides WHERE user_id = $1)
                     AND NOT EXISTS (SELECT 1 FROM questions WHERE asker = $1)
                     AND NOT EXISTS (SELECT 1 FROM forget_pending WHERE user_id = $1)""",
                user_id)
    return done


async def ask(db, user_id: str) -> bool:
    """Record that the user asked to be forgotten (False: the bridge holds nothing of them)."""
    status = await db.execute("UPDATE users SET forget_asked_at = now() WHERE user_id = $1",
                              user_id)
    return status.endswith(" 1")


async def asked_within(db, user_id: str, seconds: float) -> bool:
    return await db.fetchval(
        """SELECT forget_asked_at > now() - make_interval(secs => $2) FROM users
           WHERE user_id = $1""", user_id, float(seconds)) is True


async def cooldown_left(db, user_id: str) -> float:
    """Seconds left of a start cooldown (churn or flood): forgetting must not lift it."""
    return await db.fetchval(
        """SELECT coalesce(extract(epoch FROM greatest(blocked_until, flood_until) - now()), 0)
           ::float8 FROM start_limits WHERE user_id = $1""", user_id) or 0.0
