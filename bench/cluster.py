"""Cluster mode (several bridge processes behind HAProxy, plain rooms): relayed messages per
second and the bridge's CPU per message with 1, 2 and 3 processes on this machine, then a
kill run: processes killed with -9 in turn (each restarted once the others own its
partitions) while pairs relay numbered messages; every message must arrive once, in order.

    python bench/cluster.py [--pairs 6] [--burst 40] [-n 2000] [-k 5] [--rate 10]
                            [--json FILE]

Throughput: each of the pairs' 2 x pairs directions sends --burst messages back to back
(each send waits for the homeserver's answer, not for the relay), all directions at once;
messages/s is what was relayed over the time from the first send to the last arrival, and
bridge CPU is the sum, over the running bridge processes, of their user + system time over
that window (/proc/<pid>/stat), per relayed message. The same lab is used throughout: 3
processes, then one stopped (SIGTERM), then another, so the homeservers are the same.
Relay latency (send answered -> seen by the partner's client) is printed as median / p95.

Kill run: -n messages over all directions at --rate per second, -k kills spread evenly
(bridge-1, bridge-2, bridge-3, bridge-1, ...). Two take-over times per kill: SIGKILL -> every
partition owned again by the others (read from pg_locks), and SIGKILL -> the first relay
seen of a message sent after the kill from a room the killed process owned (the one users
see: "takeover_max_s" in --json is its maximum).

Exits non-zero when a message was lost, doubled or reordered. Needs PostgreSQL
(STRANGER_TEST_PG, default postgresql://postgres@127.0.0.1:5432/postgres) and haproxy.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


import asyncpg  # noqa: E402

from bridge.lab.bridge_process import NO_RATE_LIMITS  # noqa: E402
from bridge.lab.bridged import start_bridged_lab  # noqa: E402
from bridge.lab.cluster import wait_owned  # noqa: E402
from bridge.lab.cluster_drill import make_pairs, process_drill  # noqa: E402
from bridge.lab.faults import relayed_bodies, wait_for_body  # noqa: E402
from bridge.lab.figures import summary  # noqa: E402
from bridge.lab.inprocess import existing_keys  # noqa: E402
from bridge.lab.load import _cpu_seconds  # noqa: E402

ADMIN_DSN = os.environ.get("STRANGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PROCESSES = 3
PARTITIONS = 64


async def burst(lab, pairs, per_direction: int, label: str) -> dict:
    """Every direction sends `per_direction` messages back to back, all at once."""
    directions = []
    for p, pair in enumerate(pairs):
        directions.append((f"{label}{p}a ", pair.alice, pair.alice_room, pair.bob, pair.bob_room))
        directions.append((f"{label}{p}b ", pair.bob, pair.bob_room, pair.alice, pair.alice_room))
    running = [b.process.pid for b in lab.bridges
               if b.process is not None and b.process.returncode is None]
    sent_at: dict[str, float] = {}

    async def send(prefix, client, room):
        for n in range(per_direction):
            body = f"{prefix}{n}"
            await client.send_text(room, body)
            sent_at[body] = time.monotonic()

    cpu_before = sum(_cpu_seconds(pid) for pid in running)
    started = time.monotonic()
    await asyncio.gather(*(send(prefix, c, r) for prefix, c, r, _, _ in directions))
    await asyncio.gather(*(wait_for_body(to, to_room, f"{prefix}{per_direction - 1}", 300)
                           for prefix, _, _, to, to_room in directions))
    elapsed = time.monotonic() - started
    cpu = sum(_cpu_seconds(pid) for pid in running) - cpu_before
    relayed, latencies, wrong = 0, [], 0
    for prefix, _, _, to, to_room in directions:
        bodies = relayed_bodies(to, to_room, prefix)
        relayed += len(bodies)
        wrong += bodies != [f"{prefix}{n}" for n in range(per_direction)]
        latencies += [(s.at - sent_at[s.body]) * 1000 for s in to.log
                      if s.room_id == to_room and s.section == "timeline"
                      and (s.body or "").startswith(prefix) and s.body in sent_at]
    return {"processes": len(running), "messages_per_s": round(relayed / elapsed, 1),
            "bridge_cpu_ms_per_message": round(cpu * 1000 / max(1, relayed), 2),
            "relayed": relayed, "seconds": round(elapsed, 1), "directions_not_exact": wrong,
            "relay_latency": summary(latencies)}


async def main(pairs_count: int, per_direction: int, messages: int, kills: int, rate: float,
               json_path: str | None) -> bool:
    db = f"stranger_bench_{uuid.uuid4().hex[:8]}"
    names = [f"bridge-{i + 1}" for i in range(PROCESSES)]
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as root:
        lab = await start_bridged_lab(Path(root), ADMIN_DSN, db, processes=PROCESSES,
                                      **{"logging.level": "WARNING",
                                         "bridge.cluster.partitions": PARTITIONS},
                                      **existing_keys(NO_RATE_LIMITS))
        conn = await asyncpg.connect(lab.database_uri)
        try:
            pairs = await make_pairs(lab, pairs_count)
            await burst(lab, pairs, 5, "warm")  # (first sends are slower on Synapse)
            rows = []
            for running in (3, 2, 1):
                for i in range(running, PROCESSES):  # fewer: stop the last ones
                    await lab.stop_process(i)
                await wait_owned(conn, PARTITIONS, set(names[:running]))
                row = await burst(lab, pairs, per_direction, f"t{running}x")
                print(f"{running} process(es): {row['messages_per_s']} relayed/s, bridge CPU "
                      f"{row['bridge_cpu_ms_per_message']} ms/message ({row['relayed']} in "
                      f"{row['seconds']}s), relay latency median "
                      f"{row['relay_latency']['median_ms']} ms, p95 "
                      f"{row['relay_latency']['p95_ms']} ms", flush=True)
                rows.append(row)
            for i in range(1, PROCESSES):
                await lab.start_process(i)
            await wait_owned(conn, PARTITIONS, set(names))
            report = await process_drill(lab, pairs, messages=messages, events=kills,
                                         rate=rate, how="kill", partitions=PARTITIONS)
        finally:
            await conn.close()
            await lab.shutdown(ADMIN_DSN)
    print(report.summary())
    exact = all(r["directions_not_exact"] == 0 for r in rows)
    ok = report.ok and exact
    print("RESULT:", "every message exactly once, in order" if ok else "FAILED")
    relays = [t.first_relay_s for t in report.takeovers if t.first_relay_s is not None]
    if json_path:
        Path(json_path).write_text(json.dumps({
            "rows": [{k: r[k] for k in ("processes", "messages_per_s",
                                        "bridge_cpu_ms_per_message")}
                     for r in sorted(rows, key=lambda r: r["processes"])],
            "kills": len(report.takeovers), "sent": report.sent, "lost": report.lost,
            "duplicated": report.duplicated, "reordered": report.reordered,
            "takeover_max_s": round(max(relays), 2) if relays else None}, indent=2) + "\n")
        print(f"wrote {json_path}")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--burst", type=int, default=40, help="messages per direction per row")
    parser.add_argument("-n", "--messages", type=int, default=2000)
    parser.add_argument("-k", "--kills", type=int, default=5)
    parser.add_argument("--rate", type=float, default=10.0, help="messages/s in the kill run")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    sys.exit(0 if asyncio.run(main(args.pairs, args.burst, args.messages, args.kills,
                                   args.rate, args.json)) else 1)
