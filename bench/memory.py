"""Memory over many conversations: the whole bridge in this process (real PostgreSQL, the
fake homeserver of bridge/lab/fakehs.py), a fixed set of users paired again and again
(start, join, one message each way, stop, clean-up) until N conversations have come and
gone. Prints RSS and live Python objects as it goes (and the median and p95 of RSS growth
per 1,000 conversations and of a wave's time), and the bridge's per-room caches at the end,
which must be back where they started. tests/integration/test_memory.py checks, on any
machine, what does not depend on it (caches, loggers, objects kept per conversation).

    python bench/memory.py [-n 10000] [--users 100] [--json FILE]

Needs PostgreSQL (STRANGER_TEST_PG, default postgresql://postgres@127.0.0.1:5432/postgres).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402

from bridge.lab.figures import summary  # noqa: E402
from bridge.lab.bridge_process import NO_RATE_LIMITS  # noqa: E402
from bridge.lab.inprocess import (cache_sizes, conversation_wave, existing_keys,  # noqa: E402
                                  rss_bytes, start_inprocess_bridge)

ADMIN_DSN = os.environ.get("STRANGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def mib(n: int) -> float:
    return round(n / 2**20, 1)


async def main(total: int, user_count: int, json_path: str | None) -> dict:
    logging.basicConfig(level=logging.WARNING)
    db = f"stranger_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f"CREATE DATABASE {db}")
    await admin.close()
    uri = ADMIN_DSN.rsplit("/", 1)[0] + f"/{db}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as root:
        world = await start_inprocess_bridge(
            Path(root), uri, timeline_limit=12,
            **existing_keys({"bridge.matching.rematch_cooldown": 0,
                             "logging.level": "WARNING", **NO_RATE_LIMITS}))
        try:
            users = [world.user(f"bench{i}") for i in range(user_count)]
            for user in users:
                await user.ready()
            gc.collect()
            start_rss, start_objects = rss_bytes(), len(gc.get_objects())
            start_caches = cache_sizes(world)
            print(f"{user_count} users ready: RSS {mib(start_rss)} MiB, "
                  f"{start_objects} objects", flush=True)
            print(f"{'conversations':>13} {'seconds':>8} {'conv/s':>7} {'RSS MiB':>8} "
                  f"{'objects':>8}", flush=True)
            done, started, next_report = 0, time.perf_counter(), 1000
            wave_ms: list[float] = []
            while done < total:
                wave_started = time.perf_counter()
                await conversation_wave(world, users)
                wave_ms.append((time.perf_counter() - wave_started) * 1000)
                world.hs.forget_sent()
                done += user_count // 2
                if done >= next_report or done >= total:
                    next_report += 1000
                    gc.collect()
                    elapsed = time.perf_counter() - started
                    row = {"conversations": done, "seconds": round(elapsed, 1),
                           "rss_mib": mib(rss_bytes()), "objects": len(gc.get_objects())}
                    rows.append(row)
                    print(f"{done:>13} {row['seconds']:>8} {done / elapsed:>7.1f} "
                          f"{row['rss_mib']:>8} {row['objects']:>8}", flush=True)
            end_caches = cache_sizes(world)
            live = await world.bridge.pool.fetchval(
                "SELECT count(*) FROM conversations WHERE state <> 'ended'")
            unclosed = await world.bridge.pool.fetchval(
                "SELECT count(*) FROM conversation_sides WHERE closed_at IS NULL")
        finally:
            await world.stop()
            admin = await asyncpg.connect(ADMIN_DSN)
            await admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            await admin.close()
    first = rows[0]
    # RSS growth per 1,000 conversations between reports, after the first 1,000 (allocator
    # and connection warm-up).
    growth = [(b["rss_mib"] - a["rss_mib"]) * 1000 / (b["conversations"] - a["conversations"])
              for a, b in zip(rows, rows[1:])] or [0.0]
    result = {"wave_ms": summary(wave_ms),
              "rss_growth_per_1000_mib": {k.replace("_ms", ""): v for k, v in
                                          summary(growth, digits=2).items()},
              "users": user_count, "conversations": rows[-1]["conversations"],
              "rss_start_mib": mib(start_rss), "rss_after_first_1000_mib": first["rss_mib"],
              "rss_end_mib": rows[-1]["rss_mib"],
              "rss_growth_after_first_1000_mib": round(rows[-1]["rss_mib"] - first["rss_mib"], 1),
              "objects_start": start_objects, "objects_end": rows[-1]["objects"],
              "caches_start": start_caches, "caches_end": end_caches,
              "live_conversations_left": live, "sides_not_cleaned_up": unclosed, "rows": rows}
    print(f"caches at start: {start_caches}\ncaches at end:   {end_caches}")
    print(f"a wave of {user_count // 2} conversations: median {result['wave_ms']['median_ms']} "
          f"ms, p95 {result['wave_ms']['p95_ms']} ms; RSS growth per 1,000 conversations after "
          f"the first 1,000: median {result['rss_growth_per_1000_mib']['median']} MiB, "
          f"p95 {result['rss_growth_per_1000_mib']['p95']} MiB")
    print(f"RSS {result['rss_start_mib']} MiB at start, {first['rss_mib']} MiB after "
          f"{first['conversations']}, {result['rss_end_mib']} MiB after "
          f"{result['conversations']} conversations; live left {live}, unclosed {unclosed}")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--conversations", type=int, default=10000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    asyncio.run(main(args.conversations, args.users, args.json))
