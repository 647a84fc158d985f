"""One bridge process's worth of users coming and going, for the concurrency test: run in
real OS processes (multiprocessing), each with its own pool, Pairing and match timer; and
what shows the processes really overlapped (PostgreSQL's view of their transactions)."""
from __future__ import annotations

import asyncio
import random
import time

import asyncpg
from ruamel.yaml import YAML

from bridge.background import Background
from bridge.config import Config
from bridge.matching import queue
from bridge.pairing import Pairing
from bridge.portal import NEXT, STOP
from bridge.store import conversations


class AcceptingPortal:
    """Every invite is delivered; nobody needs to join for the pairing invariants."""

    async def open(self, conversation_id: int) -> bool:
        return True

    async def close(self, conversation_id: int) -> None:
        pass

    async def greet(self, conv) -> None:
        pass


def make_config(path: str, **matching) -> Config:
    with open(path, "w") as f:
        YAML().dump({"appservice": {"as_token": "a" * 32, "hs_token": "h" * 32},
                     "homeserver": {"domain": "chat.example.net"},
                     "bridge": {"matching": matching}}, f)
    config = Config(path)
    config.load()
    config.update(save=False)
    config.validate()
    return config


APPLICATION = "churn-"  # + the process's name: how PostgreSQL tells the processes apart


async def connect_pool(uri: str, name: str, size: int) -> asyncpg.Pool:
    return await asyncpg.create_pool(uri, min_size=2, max_size=size,
                                     server_settings={"application_name": APPLICATION + name})


async def watch_overlap(uri: str, stop: asyncio.Event, overlapped) -> int:
    """Until `stop`: how many times PostgreSQL showed transactions of two or more churn
    processes open at the same instant (pg_stat_activity, read afresh each time); sets
    `overlapped` (a multiprocessing Event) at the first."""
    conn = await asyncpg.connect(uri)
    seen = 0
    try:
        while not stop.is_set():
            processes = await conn.fetchval(
                """SELECT count(DISTINCT application_name) FROM pg_stat_activity
                   WHERE datname = current_database() AND xact_start IS NOT NULL
                     AND application_name LIKE $1 || '%'""", APPLICATION)
            if processes >= 2:
                seen += 1
                overlapped.set()
            await asyncio.sleep(0.002)  # sampling: each read is one instant
    finally:
        await conn.close()
    return seen


async def churn(uri: str, config_path: str, user_ids: list[str], seed: int, operations: int,
                concurrency: int, start_at: float, overlapped, max_operations: int) -> dict:
    """Random !start / !next / !stop on random users (any process may touch any user), then
    !start for everyone not chatting. Goes on past `operations` (up to `max_operations`)
    until `overlapped` says the processes were seen in transactions at once. Returns what
    this process saw succeed, and how many of its claims met another's lock."""
    rnd = random.Random(seed)
    pool = await connect_pool(uri, str(seed), concurrency + 2)
    config = make_config(config_path, fallback_after=0.3, rematch_cooldown=3600)
    background = Background()

    async def notify_dm(*_):
        pass

    pairing = Pairing(pool, config, AcceptingPortal(), notify_dm, background)
    timer = asyncio.create_task(pairing.run_match_timer())
    counts = {"enqueued": 0, "dequeued": 0, "ended": 0, "errors": [], "operations": 0}
    await asyncio.sleep(max(0.0, start_at - time.time()))

    # (Each result is awaited before it is added: `counts[k] += await ...` would read the
    # count before the await and lose the updates other tasks make meanwhile.)
    async def one(user_id: str, op: str) -> None:
        if op == "start":
            added = await pairing.enqueue(user_id)
            counts["enqueued"] += added
            return
        side = await conversations.live_side_of(pool, user_id)
        if side is None:
            if op == "stop":
                removed = await queue.dequeue(pool, user_id)
                counts["dequeued"] += removed
            return
        if op == "next":
            ended = await pairing.end(side.conversation_id, NEXT, user_id, requeue=[user_id])
        else:
            ended = await pairing.end(side.conversation_id, STOP, user_id)
        counts["ended"] += ended

    async def worker(ops: int, most: int) -> None:
        for done in range(most):
            if done >= ops and overlapped.is_set():
                return
            counts["operations"] += 1
            op = rnd.choices(["start", "next", "stop"], [6, 3, 1])[0]
            try:
                await one(rnd.choice(user_ids), op)
            except Exception as e:  # surfaced by the test, never swallowed
                counts["errors"].append(repr(e))

    await asyncio.gather(*(worker(operations // concurrency, max_operations // concurrency)
                           for _ in range(concurrency)))
    # Everyone not chatting starts again: at the end nobody may be in limbo.
    for user_id in rnd.sample(user_ids, len(user_ids)):
        try:
            added = await pairing.enqueue(user_id)
            counts["enqueued"] += added
        except Exception as e:
            counts["errors"].append(repr(e))
    timer.cancel()
    await background.wait(timeout=10)
    await pool.close()
    counts["contended"] = pairing.matchmaker.contended
    return counts


def run(uri, config_path, user_ids, seed, operations, concurrency, start_at, overlapped,
        max_operations, results) -> None:
    results.put(asyncio.run(churn(uri, config_path, user_ids, seed, operations, concurrency,
                                  start_at, overlapped, max_operations)))


async def enqueue_all(uri: str, config_path: str, user_ids: list[str], concurrency: int,
                      start_at: float) -> dict:
    """Queue the users in order, `concurrency` at a time, with no match timer: whatever the
    claims miss stays missed."""
    pool = await connect_pool(uri, config_path, concurrency + 2)
    config = make_config(config_path, fallback_after=3600, rematch_cooldown=3600)
    background = Background()

    async def notify_dm(*_):
        pass

    pairing = Pairing(pool, config, AcceptingPortal(), notify_dm, background)
    todo = iter(user_ids)
    errors: list[str] = []
    await asyncio.sleep(max(0.0, start_at - time.time()))

    async def worker() -> None:
        for user_id in todo:
            try:
                await pairing.enqueue(user_id)
            except Exception as e:
                errors.append(repr(e))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await background.wait(timeout=10)
    await pool.close()
    return {"errors": errors, "contended": pairing.matchmaker.contended}


def run_enqueue_all(uri, config_path, user_ids, concurrency, start_at, results) -> None:
    results.put(asyncio.run(enqueue_all(uri, config_path, user_ids, concurrency, start_at)))
