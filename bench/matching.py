"""Matching throughput and claim latency on real PostgreSQL, with 1 and 2 bridge processes.

For each queue size it builds a fresh database (alembic schema), fills the queue with that
many waiters, then runs real OS processes that each play arriving users with the code the
bridge runs (bridge.matching.matchmaker.Matchmaker.arrive: pair at once with a waiting partner, or
join the queue and claim). Whenever a match takes a waiter out, another user joins without
claiming, so the queue keeps its size. Preferences are drawn like real ones: 0-5 interest
tags each from 200, Zipf-distributed (a few popular, a long tail), and a language for most
users from a handful of common ones. Half the prefilled waiters are still inside their
preference window; newcomers always are (fallback_after = 10 s). The prefilled waiters have
talked before (ended conversations), as on a bridge that has been running.

    python bench/matching.py [--sizes 1000,10000,100000] [--processes 1,2]
                             [--seconds 5] [--concurrency 4] [--json FILE]

matches_per_s counts conversations created per second over the run; claim_p50_ms and
claim_p95_ms time each newcomer's whole arrive() call (waiting for the batch it joins, look
up, lock, create the conversation, commit; or queue and claim), whether it found a partner
or not. Needs PostgreSQL
(STRANGER_TEST_PG, default postgresql://postgres@127.0.0.1:5432/postgres); creates and drops
its own database.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402
from ruamel.yaml import YAML  # noqa: E402

from bridge.lab.benchdb import create_database, drop_database  # noqa: E402
from bridge.lab.figures import percentile  # noqa: E402

ADMIN_DSN = os.environ.get("STRANGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TAGS = [f"tag{i:03}" for i in range(200)]
TAG_WEIGHTS = [1 / (rank + 1) for rank in range(len(TAGS))]  # Zipf, s = 1
LANGS = ["en", "es", "fr", "de", "pt", "ru", None]
LANG_WEIGHTS = [35, 12, 8, 7, 6, 5, 27]
FALLBACK_AFTER = 10.0
# Users made per process and second of a run, to play newcomers and refills: more than
# this machine's bridge could match (a run stops early should they run out).
USERS_PER_PROCESS_SECOND = 4000


def preferences(rnd: random.Random) -> tuple[list[str], str | None]:
    tags: set[str] = set()
    wanted = rnd.randint(0, 5)
    while len(tags) < wanted:
        tags.add(rnd.choices(TAGS, TAG_WEIGHTS)[0])
    return sorted(tags), rnd.choices(LANGS, LANG_WEIGHTS)[0]


async def add_users(conn, prefix: str, count: int, rnd: random.Random) -> None:
    rows = []
    for i in range(count):
        tags, lang = preferences(rnd)
        rows.append((f"@{prefix}{i}:bench", tags, lang))
    await conn.copy_records_to_table("users", records=rows, columns=["user_id", "tags", "lang"])


async def prefill(uri: str, size: int, processes: int, players: int, seed: int) -> None:
    rnd = random.Random(seed)
    conn = await asyncpg.connect(uri)
    try:
        await conn.execute("TRUNCATE users, waiting, waiting_keys, recent_pairs, conversations "
                           "CASCADE")
        await add_users(conn, "w", size, rnd)
        # In arrival order; those with preferences are choosy or flexible half and half.
        await conn.execute(
            """INSERT INTO waiting (user_id, tags, lang, fallback_at, flexible, next_check)
               SELECT user_id, tags, lang,
                      CASE WHEN flexible THEN now() ELSE now() + interval '1 hour' END,
                      flexible, NULL FROM (
                   SELECT user_id, tags, lang,
                          (cardinality(tags) = 0 AND lang IS NULL) OR random() < 0.5 AS flexible
                   FROM users ORDER BY user_id COLLATE "C") u""")
        await conn.execute(
            """INSERT INTO waiting_keys (user_id, tag, lang, seq, flexible)
               SELECT w.user_id, t.tag, coalesce(w.lang, ''), w.seq, w.flexible FROM waiting w,
               unnest(CASE WHEN cardinality(w.tags) = 0 THEN ARRAY[''] ELSE w.tags END) t(tag)""")
        # The bridge has been running: the waiters have talked before (half as many ended
        # conversations as waiters). On empty conversation tables PostgreSQL would plan
        # scans of them, and keep using those plans while the tables grow during a run.
        await conn.execute(
            """WITH w AS (SELECT user_id, row_number() OVER (ORDER BY user_id COLLATE "C") AS r
                          FROM waiting),
               p AS (SELECT nextval('conversations_id_seq') AS id, a.user_id AS a,
                            b.user_id AS b
                     FROM w a JOIN w b ON b.r = a.r + 1 WHERE a.r % 2 = 1),
               c AS (INSERT INTO conversations (id, state, invite_deadline, ended_at, end_reason)
                     SELECT id, 'ended', now(), now(), 'next' FROM p)
               INSERT INTO conversation_sides (conversation_id, side, user_id, ghost_id, live,
                                               closed_at)
               SELECT id, 0, a, '@_past0_' || id || ':bench', false, now() FROM p
               UNION ALL
               SELECT id, 1, b, '@_past1_' || id || ':bench', false, now() FROM p""")
        for p in range(processes):
            await add_users(conn, f"n{p}_", players, rnd)
            await add_users(conn, f"f{p}_", players, rnd)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def bench_config(uri: str):
    from bridge.config import Config
    path = Path(tempfile.mkdtemp(prefix="bench-matching-")) / "config.yaml"
    with open(path, "w") as f:
        YAML().dump({"appservice": {"as_token": "a" * 32, "hs_token": "h" * 32},
                     "homeserver": {"domain": "bench.example.net"}, "database": {"uri": uri},
                     "bridge": {"matching": {"fallback_after": FALLBACK_AFTER}}}, f)
    config = Config(str(path))
    config.load()
    config.update(save=False)
    config.validate()
    return config


async def play(uri: str, index: int, concurrency: int, seconds: float, start_at: float,
               players: int) -> dict:
    from bridge.database import connect
    from bridge.matching.matchmaker import Matchmaker
    from bridge.matching import queue

    async def matched(conversation_id: int) -> None:
        nonlocal matches
        matches += 1  # (the bridge would open the rooms now)

    pool = await connect(uri, min_size=concurrency, max_size=concurrency)  # the bridge's pool
    held = [await pool.acquire() for _ in range(concurrency)]
    backends = [conn.get_server_pid() for conn in held]
    for conn in held:
        await pool.release(conn)
    matchmaker = Matchmaker(pool, bench_config(uri), matched)
    newcomers = iter(range(players))
    refills = iter(range(players))
    claims_ms: list[float] = []
    matches = refilled = 0
    await asyncio.sleep(max(0.0, start_at - time.time()))
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal refilled
        for number in newcomers:
            if time.perf_counter() >= stop_at:
                break
            user_id = f"@n{index}_{number}:bench"
            began = time.perf_counter()
            await matchmaker.arrive(user_id, FALLBACK_AFTER)
            claims_ms.append((time.perf_counter() - began) * 1000)
            while refilled < matches:
                # A waiter left the queue with a newcomer: someone else joins, keeping its size.
                refilled += 1
                await queue.enqueue(pool, f"@f{index}_{next(refills)}:bench", FALLBACK_AFTER)

    began, cpu_before = time.perf_counter(), time.process_time()
    pg_before = backend_cpu_seconds(backends)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_before
    pg_cpu = backend_cpu_seconds(backends) - pg_before
    await pool.close()
    return {"matches": matches, "claims_ms": claims_ms, "elapsed": elapsed, "cpu": cpu,
            "pg_cpu": pg_cpu}


def process_main(uri: str, index: int, concurrency: int, seconds: float, start_at: float,
                 players: int, results) -> None:
    results.put(asyncio.run(play(uri, index, concurrency, seconds, start_at, players)))


def backend_cpu_seconds(pids: list[int]) -> float:
    """CPU time used so far by these PostgreSQL backends (the run's own connections: other
    work on a shared machine's server is not counted), when the server is local and /proc
    readable; 0 otherwise."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return total




def run(uri: str, size: int, processes: int, concurrency: int, seconds: float,
        players: int) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    start_at = time.time() + 3.0  # every process imports and connects before the start
    procs = [ctx.Process(target=process_main,
                         args=(uri, i, concurrency, seconds, start_at, players, results))
             for i in range(processes)]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start_at - time.time()))
    outcomes = [results.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    claims = sorted(ms for o in outcomes for ms in o["claims_ms"])
    elapsed = max(o["elapsed"] for o in outcomes)
    matches = max(1, sum(o["matches"] for o in outcomes))
    return {"waiting": size, "processes": processes,
            "matches_per_s": round(matches / elapsed, 1),
            "claim_p50_ms": round(percentile(claims, 0.5), 2),
            "claim_p95_ms": round(percentile(claims, 0.95), 2),
            "claims": len(claims),
            # CPU spent per match: where the time goes on a machine with few cores.
            "bridge_cpu_ms": round(sum(o["cpu"] for o in outcomes) / matches * 1000, 2),
            "postgres_cpu_ms": round(sum(o["pg_cpu"] for o in outcomes) / matches * 1000, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="claims in flight per process (its connection pool size)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    uri = asyncio.run(create_database(ADMIN_DSN, "stranger_matchbench"))
    rows = []
    try:
        print(f"{'waiting':>8} {'processes':>9} {'matches/s':>10} {'claim p50 ms':>13} "
              f"{'claim p95 ms':>13} {'claims':>7} {'CPU ms/match: bridge':>21} "
              f"{'postgres':>9}", flush=True)
        for size in (int(s) for s in args.sizes.split(",")):
            for processes in (int(p) for p in args.processes.split(",")):
                players = int(args.seconds * USERS_PER_PROCESS_SECOND)
                asyncio.run(prefill(uri, size, processes, players, args.seed))
                row = run(uri, size, processes, args.concurrency, args.seconds, players)
                rows.append(row)
                print(f"{row['waiting']:>8} {row['processes']:>9} {row['matches_per_s']:>10} "
                      f"{row['claim_p50_ms']:>13} {row['claim_p95_ms']:>13} {row['claims']:>7} "
                      f"{row['bridge_cpu_ms']:>21} {row['postgres_cpu_ms']:>9}", flush=True)
    finally:
        asyncio.run(drop_database(ADMIN_DSN, uri))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{k: row[k] for k in ("waiting", "processes", "matches_per_s",
                                            "claim_p50_ms", "claim_p95_ms")} for row in rows],
                      f, indent=2)


if __name__ == "__main__":
    main()
