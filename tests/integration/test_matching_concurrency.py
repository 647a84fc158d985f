"""Several bridge processes on one database: thousands of users start, move on and stop at
once, and pairing stays correct (real OS processes, real PostgreSQL). Each test shows the
processes really contended (else it would prove nothing on a slow machine that ran them one
after the other), and drives them until they do, within a bound."""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import time

import asyncpg
import pytest

from bridge.background import Background
from bridge.matching import policy
from bridge.matching import queue
from bridge.pairing import Pairing
from tests.integration import churn

USERS = 2000
PROCESSES = 3
OPERATIONS_PER_PROCESS = 1800  # and up to 3 times as many, until PostgreSQL saw them overlap
TAGS = ["cinema", "jazz", "chess", "cats"]


async def make_users(uri: str) -> list[str]:
    rnd = random.Random(7)
    rows = []
    for i in range(USERS):
        tags = sorted(rnd.sample(TAGS, rnd.choice([0, 1, 1, 2])))
        rows.append((f"@c{i}:example.org", tags, rnd.choice([None, None, "en", "fr"])))
    conn = await asyncpg.connect(uri)
    try:
        await conn.copy_records_to_table("users", records=rows,
                                         columns=["user_id", "tags", "lang"])
        await conn.execute("UPDATE users SET agreed_at = now()")
    finally:
        await conn.close()
    return [r[0] for r in rows]


async def wait_until_quiet(pool, config) -> None:
    """Run a match timer until every waiter's preference window has closed and nobody is
    due a look: what the bridge reaches by itself once users stop coming."""
    async def notify_dm(*_):
        pass
    pairing = Pairing(pool, config, churn.AcceptingPortal(), notify_dm, Background())
    timer = asyncio.create_task(pairing.run_match_timer())
    try:
        async def quiet() -> None:
            while await pool.fetchval(
                    "SELECT count(*) FROM waiting WHERE NOT flexible OR next_check IS NOT NULL"):
                await asyncio.sleep(0.05)
        await asyncio.wait_for(quiet(), timeout=60)
    finally:
        timer.cancel()


@pytest.mark.timeout(240)
async def test_processes_churning_at_once_keep_pairing_correct(database_uri, tmp_path):
    user_ids = await make_users(database_uri)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    overlapped = ctx.Event()
    start_at = time.time() + 3  # all processes imported and connected: go together
    procs = [ctx.Process(target=churn.run, args=(
        database_uri, str(tmp_path / f"config{i}.yaml"), user_ids, i, OPERATIONS_PER_PROCESS,
        6, start_at, overlapped, 3 * OPERATIONS_PER_PROCESS, results))
        for i in range(PROCESSES)]
    stop_watching = asyncio.Event()
    watching = asyncio.create_task(churn.watch_overlap(database_uri, stop_watching, overlapped))
    for p in procs:
        p.start()
    outcomes = [await asyncio.to_thread(results.get, True, 200) for _ in procs]
    stop_watching.set()
    overlaps = await watching
    for p in procs:
        await asyncio.to_thread(p.join, 30)
        assert p.exitcode == 0
    assert [o["errors"] for o in outcomes] == [[]] * PROCESSES
    print(f"\n{[o['operations'] for o in outcomes]} operations; PostgreSQL saw transactions "
          f"of several processes open at once {overlaps} times; claims that met another's "
          f"lock: {sum(o['contended'] for o in outcomes)}")
    assert overlaps > 0, "the processes never overlapped: this run proves nothing"

    pool = await asyncpg.create_pool(database_uri, min_size=1, max_size=4)
    try:
        config = churn.make_config(str(tmp_path / "final.yaml"), fallback_after=0.3,
                                   rematch_cooldown=3600)
        await wait_until_quiet(pool, config)
        await check_invariants(pool, outcomes)
    finally:
        await pool.close()


async def check_invariants(pool, outcomes) -> None:
    conversations = await pool.fetchval("SELECT count(*) FROM conversations")
    assert conversations > USERS // 2, "the churn should have made plenty of matches"

    # No user is ever in two live conversations.
    assert await pool.fetchval(
        "SELECT count(*) FROM (SELECT user_id FROM conversation_sides WHERE live "
        "GROUP BY user_id HAVING count(*) > 1) d") == 0
    # Nobody waits while chatting.
    assert await pool.fetchval(
        "SELECT count(*) FROM waiting w JOIN conversation_sides s "
        "ON s.user_id = w.user_id AND s.live") == 0
    # Everyone (all of them started again at the end) is chatting or waiting: nobody lost.
    live = await pool.fetchval("SELECT count(*) FROM conversation_sides WHERE live")
    waiting = await queue.count(pool)
    assert live + waiting == USERS
    # No pair was formed twice (the cooldown outlasts the test, so a second conversation of
    # the same two users could only be a double claim).
    assert await pool.fetchval(
        """SELECT count(*) FROM (
               SELECT min(user_id), max(user_id) FROM conversation_sides
               GROUP BY conversation_id) p(a, b)
           GROUP BY a, b HAVING count(*) > 1""") is None
    # The ledger balances: every successful start put one user in the queue, every `next`
    # one more; every conversation took two out, every successful stop one.
    requeues = await pool.fetchval("SELECT count(*) FROM conversations WHERE end_reason = 'next'")
    enqueued = sum(o["enqueued"] for o in outcomes)
    dequeued = sum(o["dequeued"] for o in outcomes)
    assert waiting == enqueued + requeues - 2 * conversations - dequeued
    ended = await pool.fetchval("SELECT count(*) FROM conversations WHERE state = 'ended'")
    assert ended == sum(o["ended"] for o in outcomes)
    assert live == 2 * (conversations - ended)
    # The index table mirrors the queue exactly.
    assert await pool.fetchval(
        """SELECT count(*) FROM waiting w WHERE (SELECT array_agg(k.tag ORDER BY k.tag)
               FROM waiting_keys k WHERE k.user_id = w.user_id AND k.lang = coalesce(w.lang, '')
               AND k.flexible = w.flexible)
           IS DISTINCT FROM (CASE WHEN cardinality(w.tags) = 0 THEN ARRAY['']
                             ELSE (SELECT array_agg(t ORDER BY t) FROM unnest(w.tags) t)
                             END)""") == 0
    # Nobody left waiting could be paired with anyone else waiting: no match was missed.
    rows = await pool.fetch("SELECT user_id, seq, tags, lang, flexible FROM waiting")
    avoided = await pool.fetch("SELECT user_a, user_b FROM recent_pairs")
    left = [queue.waiter(r) for r in rows]
    assert policy.pair_up(left, policy.avoid_pairs((r["user_a"], r["user_b"])
                                                       for r in avoided)) == []


TWIN_ROUNDS = 5  # at most: rounds of twins until claims of the two processes have met


@pytest.mark.timeout(300)
async def test_twins_queued_at_the_same_moment_by_two_processes_always_meet(database_uri,
                                                                            tmp_path):
    """Each user is compatible with exactly one other (a tag only the two share), and the
    two are queued at the same moment by different processes: a claim may find the other
    locked. Without a match timer to heal anything, every pair must still be made.
    Rounds go on until a claim did find its twin locked: process a only ever locks a-users
    and their twins (as partners), and each a-user arrives once, so a twin it found locked
    was held by process b."""
    pairs = 400
    contended = 0
    for round_ in range(TWIN_ROUNDS):
        outcomes = await twins_round(database_uri, tmp_path, round_, pairs)
        contended += sum(o["contended"] for o in outcomes)
        if contended:
            break
    print(f"\n{round_ + 1} round(s) of {pairs} twins; claims that met the other "
          f"process's lock: {contended}")
    assert contended > 0, "the two processes' claims never met: this run proves nothing"


async def twins_round(database_uri, tmp_path, round_: int, pairs: int) -> list[dict]:
    name = [f"@{{}}{round_}_{i}:example.org" for i in range(pairs)]
    conn = await asyncpg.connect(database_uri)
    try:
        await conn.copy_records_to_table(
            "users", columns=["user_id", "tags"],
            records=[(n.format(side), [f"twin{round_}_{i}"])
                     for i, n in enumerate(name) for side in "ab"])
    finally:
        await conn.close()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    start_at = time.time() + 3
    procs = [ctx.Process(target=churn.run_enqueue_all, args=(
        database_uri, str(tmp_path / f"config{side}{round_}.yaml"),
        [n.format(side) for n in name], 8, start_at, results))
        for side in "ab"]
    for p in procs:
        p.start()
    outcomes = [await asyncio.to_thread(results.get, True, 100) for _ in procs]
    for p in procs:
        await asyncio.to_thread(p.join, 30)
    assert [o["errors"] for o in outcomes] == [[], []]
    pool = await asyncpg.create_pool(database_uri, min_size=1, max_size=2)
    try:
        assert await queue.count(pool) == 0
        made = await pool.fetch(
            """SELECT min(s.user_id) AS a, max(s.user_id) AS b FROM conversation_sides s
               WHERE s.user_id LIKE $1 GROUP BY conversation_id""", f"@_{round_}\\_%")
        assert sorted((r["a"], r["b"]) for r in made) == sorted(
            (n.format("a"), n.format("b")) for n in name)
    finally:
        await pool.close()
    return outcomes
