"""The moderation tables over real PostgreSQL: the bounded evidence buffer and its purge,
reports and reporters' standing, sanctions, banned servers, restriction_of."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from bridge.moderation import evidence, reports, sanctions, server_bans
from bridge.moderation.restrictions import restriction_of
from bridge.store import conversations
from tests.integration.test_pairing import config, new_users  # noqa: F401 (fixture)


async def a_conversation(pool, a: str, b: str) -> int:
    async with pool.acquire() as conn:
        return await conversations.create(conn, a, b, f"@_g{uuid.uuid4().hex}:hs",
                                          f"@_g{uuid.uuid4().hex}:hs", 60)


async def end(pool, conversation_id: int, ago: float = 0) -> None:
    async with pool.acquire() as conn:
        await conversations.end(conn, conversation_id, "stop", None)
    await pool.execute("UPDATE conversations SET ended_at = now() - make_interval(secs => $2) "
                       "WHERE id = $1", conversation_id, float(ago))


async def test_evidence_keeps_only_each_sides_last_messages(pool):
    a, b = await new_users(pool, 2)
    conv = await a_conversation(pool, a, b)
    for i in range(25):
        await evidence.append(pool, conv, 0, f"a{i}", keep=20)
    await evidence.append(pool, conv, 1, "b0", keep=20)
    assert await evidence.of_side(pool, conv, 0) == [f"a{i}" for i in range(5, 25)]
    assert await evidence.of_side(pool, conv, 1) == ["b0"]
    await evidence.append(pool, conv, 1, "b1", keep=1)
    assert await evidence.of_side(pool, conv, 1) == ["b1"]


async def test_evidence_is_purged_after_the_grace_period_unless_a_report_holds_it(pool):
    a, b, c, d, e, f = await new_users(pool, 6)
    live = await a_conversation(pool, a, b)
    recent = await a_conversation(pool, c, d)
    old = await a_conversation(pool, e, f)
    for conv in (live, recent, old):
        await evidence.append(pool, conv, 0, "side 0", keep=20)
        await evidence.append(pool, conv, 1, "side 1", keep=20)
    await end(pool, recent, ago=10)
    await end(pool, old, ago=400)
    assert await evidence.purge(pool, grace_seconds=300) == 2
    assert await evidence.of_side(pool, live, 0) == ["side 0"]
    assert await evidence.of_side(pool, recent, 1) == ["side 1"]
    assert await evidence.of_side(pool, old, 0) == [] == await evidence.of_side(pool, old, 1)
    # A report holds the reported side's evidence (only that side's), while it is open.
    held = await reports.file(pool, recent, c, d, 1, "rude")
    await end(pool, recent, ago=400)
    assert await evidence.purge(pool, grace_seconds=300) == 1
    assert await evidence.of_side(pool, recent, 1) == ["side 1"]
    assert await evidence.of_side(pool, recent, 0) == []
    assert await reports.resolve(pool, held.id, "dismissed", "@mod:hs")
    assert await evidence.purge(pool, grace_seconds=300) == 1
    assert await evidence.count(pool) == 2  # only the live conversation's


async def test_a_conversation_is_reported_once_per_reporter(pool):
    a, b = await new_users(pool, 2)
    conv = await a_conversation(pool, a, b)
    first = await reports.file(pool, conv, a, b, 1, "spam")
    assert first is not None and first.status == "open" and first.reason == "spam"
    assert await reports.file(pool, conv, a, b, 1, "again") is None
    second = await reports.file(pool, conv, b, a, 0, "")  # the other side may too
    assert [r.id for r in await reports.open_reports(pool, 10)] == [first.id, second.id]
    assert await reports.resolve(pool, first.id, "dismissed", "@mod:hs")
    assert not await reports.resolve(pool, first.id, "dismissed", "@mod:hs")
    assert await reports.count_open(pool) == 1
    assert await reports.resolve_against(pool, a, "actioned", "@mod:hs") == 1
    assert await reports.count_open(pool) == 0


async def test_standings_of_reporters(pool):
    target, r1, r2, x, y = await new_users(pool, 5)
    # r1 reported target; r1 also reported by x and y (and by target, which is not counted).
    for reporter, reported in ((r1, target), (r2, target), (x, r1), (y, r1), (target, r1)):
        conv = await a_conversation(pool, reporter, reported)
        await end(pool, conv)
        await reports.file(pool, conv, reporter, reported, 1, "")
    dismissed = await a_conversation(pool, x, target)
    await end(pool, dismissed)
    report = await reports.file(pool, dismissed, x, target, 1, "")
    await reports.resolve(pool, report.id, "dismissed", "@mod:hs")
    standings = {s.reporter: s for s in await reports.standings_of_reporters(pool, target, 3600)}
    assert set(standings) == {r1, r2}  # a dismissed report does not count
    assert (standings[r1].reported_by, standings[r1].filed, standings[r1].chats) == (2, 1, 4)
    assert (standings[r2].reported_by, standings[r2].filed, standings[r2].chats) == (0, 1, 1)
    assert not standings[r1].restricted
    await sanctions.add(pool, r1, "suspended", "spam", None, "automatic", None)
    standings = {s.reporter: s for s in await reports.standings_of_reporters(pool, target, 3600)}
    assert standings[r1].restricted and not standings[r2].restricted
    # Outside the window, nothing.
    await pool.execute("UPDATE reports SET created_at = now() - interval '2 hours'")
    assert await reports.standings_of_reporters(pool, target, 3600) == []


async def test_sanctions_and_server_bans_make_the_restriction(pool, config):
    now = datetime.now(timezone.utc)
    ann = "@ann:bad.example"
    assert await restriction_of(pool, config, ann, now) is None
    await sanctions.add(pool, ann, "suspended", "spam", now + timedelta(hours=1), "automatic",
                        None)
    got = await restriction_of(pool, config, ann, now)
    assert (got.kind, got.reason, got.source) == ("suspended", "spam", "automatic")
    assert await restriction_of(pool, config, ann, now + timedelta(hours=2)) is None
    await sanctions.add(pool, ann, "banned", "threats", None, "moderator", "@mod:hs")
    assert (await restriction_of(pool, config, ann, now)).kind == "banned"
    assert await sanctions.count_in_force(pool) == 1
    assert await sanctions.count_automatic(pool, ann) == 1
    assert await sanctions.lift(pool, ann, "@mod:hs") == 2
    assert await restriction_of(pool, config, ann, now) is None
    assert await sanctions.count_automatic(pool, ann) == 1  # history stays
    # A banned server restricts every user of it, for ever.
    assert await server_bans.ban(pool, "bad.example", "spam server", "@mod:hs")
    assert not await server_bans.ban(pool, "bad.example", "spam server!", "@mod:hs")
    got = await restriction_of(pool, config, ann, now)
    assert (got.kind, got.reason, got.until) == ("server_banned", "spam server!", None)
    assert await restriction_of(pool, config, "@bob:good.example", now) is None
    assert await server_bans.unban(pool, "bad.example")
    assert not await server_bans.unban(pool, "bad.example")
    assert await restriction_of(pool, config, ann, now) is None
