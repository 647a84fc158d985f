"""Memory stays bounded as conversations come and go: the whole bridge in-process (real
PostgreSQL, fake homeserver), many conversations started and ended; every per-room,
per-ghost and per-conversation cache returns to its baseline, no logger is added, and no
kind of Python object is kept per conversation. (What is true on any machine; RSS is
measured by bench/memory.py, 10,000 conversations, which prints the figures.)
"""
from __future__ import annotations

import gc
import logging
from collections import Counter

import pytest

from bridge.lab.bridge_process import NO_RATE_LIMITS
from bridge.lab.inprocess import (cache_sizes, conversation_wave, existing_keys,
                                  start_inprocess_bridge)

pytestmark = pytest.mark.filterwarnings("ignore:loop argument is deprecated:DeprecationWarning")

USERS = 30
WARMUP_WAVES = 4
WAVES = 8  # x USERS/2 conversations measured
# Bounded, transient or connection-pool objects: cancelled asyncio timers wait in the loop's
# heap until their deadline, asyncpg caches prepared statements per pooled connection.
TRANSIENT = {"TimerHandle", "Context", "_StatementCacheEntry", "PreparedStatementState",
             "RecordDescriptor", "Codec"}


# What those transient objects hold: a timer's arguments (a cancelled statement-cache timer
# holds its entry in a tuple), a cached statement's key (a tuple of the query and its record
# class) and a context's mapping (hamt nodes). Their number follows how the pool's connections
# happened to share the queries out, and the timers' 5-minute lifetime, not the conversations.
HELD_BY_TRANSIENT = {"tuple", "hamt", "hamt_bitmap_node", "hamt_array_node",
                     "hamt_collision_node"}


def held_by_transient(objects: list) -> set[int]:
    held: set[int] = set()
    todo = [o for o in objects if type(o).__name__ in TRANSIENT]
    while todo:
        for child in gc.get_referents(todo.pop()):
            if type(child).__name__ in HELD_BY_TRANSIENT and id(child) not in held:
                held.add(id(child))
                todo.append(child)
    return held


def live_objects() -> Counter:
    gc.collect()
    objects = gc.get_objects()
    held = held_by_transient(objects)
    return Counter(type(o).__name__ for o in objects
                   if type(o).__name__ not in TRANSIENT and id(o) not in held)


@pytest.fixture
async def world(tmp_path, database_uri):
    world = await start_inprocess_bridge(
        tmp_path, database_uri, timeline_limit=12,
        **existing_keys({"bridge.matching.rematch_cooldown": 0, "logging.level": "WARNING",
                         **NO_RATE_LIMITS}))
    yield world
    await world.stop()


async def test_caches_are_trimmed_and_memory_stays_flat(world, pool):
    users = [world.user(f"mem{i}") for i in range(USERS)]
    for user in users:
        await user.ready()
    for _ in range(WARMUP_WAVES):
        await conversation_wave(world, users)
        world.hs.forget_sent()
    baseline_objects = live_objects()
    baseline_caches = cache_sizes(world)
    baseline_loggers = len(logging.Logger.manager.loggerDict)

    for _ in range(WAVES):
        await conversation_wave(world, users)
        world.hs.forget_sent()
    conversations = WAVES * USERS // 2
    objects = live_objects()
    grown = objects - baseline_objects
    print(f"\n{conversations} conversations: objects "
          f"{sum(objects.values()) - sum(baseline_objects.values()):+d} "
          f"(most grown: {grown.most_common(5)}), caches {cache_sizes(world)}")

    # Only the users' DMs stay cached (one room each, and the bot), and the bot's typing
    # self-check room, as at the baseline.
    assert cache_sizes(world) == baseline_caches
    assert baseline_caches["members"] == USERS + 1
    assert baseline_caches["appservice children"] == 0
    # mautrix made a logger per ghost, kept for ever by Python's logging (fixed: dropped
    # with the ghost).
    loggers = len(logging.Logger.manager.loggerDict)
    assert loggers == baseline_loggers
    # Nothing kept per conversation: a leak keeps at least one object of some kind for each
    # (the logger leak kept 12 of several kinds). Counts, not bytes: the same on any machine.
    assert [(kind, n) for kind, n in grown.items() if n >= conversations] == []
    # Everything the bridge made was cleaned up.
    assert await pool.fetchval("SELECT count(*) FROM conversations WHERE state <> 'ended'") == 0
    assert await pool.fetchval(
        "SELECT count(*) FROM conversation_sides WHERE closed_at IS NULL") == 0
    assert await pool.fetchval(
        "SELECT count(*) FROM conversations") == (WARMUP_WAVES + WAVES) * USERS // 2
    assert await pool.fetchval("SELECT count(*) FROM inbox WHERE handled_at IS NULL") == 0
    assert await pool.fetchval("SELECT count(*) FROM inbox WHERE event IS NOT NULL") == 0
    assert not [r for r in world.hs.rooms.values() if r.room_id not in
                {u.dm for u in users} and r.members != {world.bot_id: "join"}
                ], "every chat room was left by everyone (the bot's self-check room stays)"
    assert world.hs.unknown == []
