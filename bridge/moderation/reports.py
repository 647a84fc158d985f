"""reports: what users reported (!report), open until a moderator deals with them."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bridge.moderation.rules import ReporterStanding

_COLUMNS = "id, conversation_id, reporter, reported, reported_side, reason, created_at, status"


@dataclass(frozen=True)
class Report:
    id: int
    conversation_id: int
    reporter: str
    reported: str
    reported_side: int
    reason: str
    created_at: datetime
    status: str  # open | dismissed | actioned


def _report(row) -> Report | None:
    return Report(*(row[c] for c in _COLUMNS.split(", "))) if row else None


async def file(db, conversation_id: int, reporter: str, reported: str, reported_side: int,
               reason: str) -> Report | None:
    """A new open report; None when this reporter already reported this conversation."""
    return _report(await db.fetchrow(
        f"""INSERT INTO reports (conversation_id, reporter, reported, reported_side, reason)
            VALUES ($1, $2, $3, $4, $5) ON CONFLICT (conversation_id, reporter) DO NOTHING
            RETURNING {_COLUMNS}""",
        conversation_id, reporter, reported, reported_side, reason))


async def get(db, report_id: int) -> Report | None:
    return _report(await db.fetchrow(f"SELECT {_COLUMNS} FROM reports WHERE id = $1", report_id))


async def open_reports(db, limit: int) -> list[Report]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM reports WHERE status = 'open' ORDER BY id LIMIT $1", limit)
    return [_report(r) for r in rows]


async def count_open(db) -> int:
    return await db.fetchval("SELECT count(*) FROM reports WHERE status = 'open'")


async def resolve(db, report_id: int, status: str, by: str) -> bool:
    """Close an open report (dismissed / actioned); False when it was not open."""
    result = await db.execute(
        """UPDATE reports SET status = $2, resolved_by = $3, resolved_at = now()
           WHERE id = $1 AND status = 'open'""", report_id, status, by)
    return result.endswith(" 1")


async def resolve_against(db, reported: str, status: str, by: str) -> int:
    """Close every open report against a user (a moderator acted on them)."""
    result = await db.execute(
        """UPDATE reports SET status = $2, resolved_by = $3, resolved_at = now()
           WHERE reported = $1 AND status = 'open'""", reported, status, by)
    return int(result.split()[-1])


async def standings_of_reporters(db, reported: str, window: float) -> list[ReporterStanding]:
    """Everyone who reported `reported` within the last `window` seconds, with how often
    they were reported themselves (by others than `reported`), how many reports they filed
    and how many chats they had, over the same window, and whether they are suspended or
    banned now (see rules.report_weight)."""
    rows = await db.fetch(
        """WITH since AS (SELECT now() - make_interval(secs => $2) AS t),
           reporters AS (
               SELECT DISTINCT reporter FROM reports, since
               WHERE reported = $1 AND created_at > since.t AND status <> 'dismissed')
           SELECT r.reporter,
                  (SELECT count(DISTINCT x.reporter) FROM reports x, since
                    WHERE x.reported = r.reporter AND x.reporter <> $1
                      AND x.created_at > since.t) AS reported_by,
                  (SELECT count(*) FROM reports x, since
                    WHERE x.reporter = r.reporter AND x.created_at > since.t) AS filed,
                  (SELECT count(*) FROM conversation_sides s
                     JOIN conversations c ON c.id = s.conversation_id, since
                    WHERE s.user_id = r.reporter AND c.created_at > since.t) AS chats,
                  EXISTS (SELECT 1 FROM sanctions x
                          WHERE x.user_id = r.reporter AND x.lifted_at IS NULL
                            AND (x.until IS NULL OR x.until > now())) AS restricted
           FROM reporters r""", reported, float(window))
    return [ReporterStanding(r["reporter"], r["reported_by"], r["filed"], r["chats"],
                             r["restricted"]) for r in rows]
