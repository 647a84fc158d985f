"""Memory stays bounded as conversations come and go: the whole bridge in-process (real
PostgreSQL, fake homeserver), many conversations started and ended; every per-room,
per-ghost and per-conversation cache returns to its baseline, and neither the number of
live Python objects nor RSS grows with the number of conversations.

bench/memory.py runs the same with 10,000 conversations and prints the figures.
"""
from __future__ import annotations

import gc
import logging
from collections import Counter

import pytest

from bridge.lab.bridge_process import NO_RATE_LIMITS
from bridge.lab.inprocess import (cache_sizes, conversation_wave, existing_keys, rss_bytes,
                                  start_inprocess_bridge)

pytestmark = pytest.mark.filterwarnings("ignore:loop argument is deprecated:DeprecationWarning")

USERS = 30
WARMUP_WAVES = 4
WAVES = 8  # x USERS/2 conversations measured
# Bounded, transient or connection-pool objects: cancelled asyncio timers wait in the loop's
# heap until their deadline, asyncpg caches prepared statements per pooled connection.
TRANSIENT = {"TimerHandle", "Context", "_StatementCacheEntry", "PreparedStatementState",
             "RecordDescriptor", "Codec"}


def live_objects() -> Counter:
    gc.collect()
    return Counter(type(o).__name__ for o in gc.get_objects()
                   if type(o).__name__ not in TRANSIENT)


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
    baseline_rss = rss_bytes()

    for _ in range(WAVES):
        await conversation_wave(world, users)
        world.hs.forget_sent()
    conversations = WAVES * USERS // 2
    objects = live_objects()
    grown_objects = sum(objects.values()) - sum(baseline_objects.values())
    grown_rss = rss_bytes() - baseline_rss
    print(f"\n{conversations} conversations: objects {grown_objects:+d} "
          f"(most grown: {(objects - baseline_objects).most_common(5)}), "
          f"RSS {grown_rss / 2**20:+.1f} MiB, caches {cache_sizes(world)}")

    # Only the users' DMs stay cached (one room each, and the bot), as at the baseline.
    assert cache_sizes(world) == baseline_caches
    assert baseline_caches["members"] == USERS
    assert baseline_caches["appservice children"] == 0
    # mautrix made a logger per ghost, kept for ever by Python's logging (fixed: dropped
    # with the ghost).
    loggers = len(logging.Logger.manager.loggerDict)
    assert loggers == baseline_loggers
    assert grown_objects < 6 * conversations  # the logger leak alone was 12 per conversation
    assert grown_rss < 8 * 2**20
    # Everything the bridge made was cleaned up.
    assert await pool.fetchval("SELECT count(*) FROM conversations WHERE state <> 'ended'") == 0
    assert await pool.fetchval(
        "SELECT count(*) FROM conversation_sides WHERE closed_at IS NULL") == 0
    assert await pool.fetchval(
        "SELECT count(*) FROM conversations") == (WARMUP_WAVES + WAVES) * USERS // 2
    assert await pool.fetchval("SELECT count(*) FROM inbox WHERE handled_at IS NULL") == 0
    assert await pool.fetchval("SELECT count(*) FROM inbox WHERE event IS NOT NULL") == 0
    assert not [r for r in world.hs.rooms.values() if r.room_id not in
                {u.dm for u in users}], "every chat room was left by everyone"
    assert world.hs.unknown == []
