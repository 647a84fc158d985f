"""The metrics' database side on real PostgreSQL: the gauges' counts, the time each user
waited in the queue (taken in the match's own statement), the inbox's arrival time for the
relay latency, and the health check's SELECT 1."""
from __future__ import annotations

import time

from bridge.matching import queue
from bridge.metrics.database import DatabaseGauges
from bridge.metrics.health import HealthCheck
from bridge.moderation import reports
from bridge.store import conversations, inbox
from tests.integration.test_store import make_users

A, B, C, D = "@a:a.example", "@b:b.example", "@c:c.example", "@d:d.example"


def samples(gauges: DatabaseGauges) -> dict:
    return {(s.name, s.labels.get("state")): s.value for f in gauges.collect() for s in f.samples}


async def test_the_gauges_count_waiting_opening_and_active(pool):
    await make_users(pool, A, B, C, D)
    for user_id in (A, B, C, D):
        await queue.enqueue(pool, user_id)
    async with pool.acquire() as conn, conn.transaction():
        first, _ = await conversations.create_from_queue(
            conn, [conversations.NewConversation(A, B, "@_g1:x", "@_g2:x")], 60)
    await conversations.activate(pool, first[0])
    async with pool.acquire() as conn, conn.transaction():
        await conversations.create_from_queue(
            conn, [conversations.NewConversation(C, D, "@_g3:x", "@_g4:x")], 60)
    gauges = DatabaseGauges(pool, max_age=0)
    await gauges.refresh()
    assert samples(gauges) == {("stranger_bridge_users_waiting", None): 0,
                               ("stranger_bridge_conversations_live", "opening"): 1,
                               ("stranger_bridge_conversations_live", "active"): 1,
                               ("stranger_bridge_reports_open", None): 0}
    async with pool.acquire() as conn, conn.transaction():
        await conversations.end(conn, first[0], "left", A)
    await queue.enqueue(pool, A)
    await reports.file(pool, first[0], A, B, 1, "rude")
    await gauges.refresh()
    assert samples(gauges) == {("stranger_bridge_users_waiting", None): 1,
                               ("stranger_bridge_conversations_live", "opening"): 1,
                               ("stranger_bridge_conversations_live", "active"): 0,
                               ("stranger_bridge_reports_open", None): 1}


async def test_a_match_from_the_queue_says_how_long_each_waited(pool):
    await make_users(pool, A, B, C, D)
    await queue.enqueue(pool, A)
    await pool.execute("UPDATE waiting SET enqueued_at = now() - interval '42 seconds' "
                       "WHERE user_id = $1", A)
    await queue.enqueue(pool, B)
    new = [conversations.NewConversation(A, B, "@_g1:x", "@_g2:x"),
           conversations.NewConversation(C, D, "@_g3:x", "@_g4:x")]  # C, D never queued
    async with pool.acquire() as conn, conn.transaction():
        ids, waited = await conversations.create_from_queue(conn, new, 60)
    assert len(ids) == 2 and set(waited) == {A, B}
    assert 42 <= waited[A] < 50 and 0 <= waited[B] < 5
    async with pool.acquire() as conn, conn.transaction():
        assert await conversations.create_from_queue(conn, [], 60) == ([], {})


async def test_pending_events_carry_their_arrival_time(pool):
    event = {"event_id": "$e", "room_id": "!r:x", "sender": A, "type": "m.room.message",
             "content": {"body": "hi"}}
    before = time.time()
    async with pool.acquire() as conn:
        await inbox.record(conn, [event])
    [pending] = await inbox.pending(pool, "!r:x")
    seq, stored = pending
    assert stored == event
    assert before - 1 <= pending.received_at <= time.time() + 1


async def test_the_health_check_reaches_real_postgresql(pool):
    check = HealthCheck(pool, "http://127.0.0.1:1", timeout=2)  # (no homeserver there)
    try:
        health = await check.check()
    finally:
        await check.close()
    assert health.database is None
    assert health.homeserver is not None and not health.healthy
