"""Load: 200+ real users on the two lab homeservers churn through the real bridge for
several minutes (agree, start, accept, chat, then leave / !next / !stop, again), then all
stop. Prints throughput, latency percentiles, the bridge's RSS (median, p95, peak, and how
far the second half's peak rose over the first half's: memory bounds are this script's
figures, not tests/e2e/test_load.py's), errors, and whether every room and conversation the
bridge made is live or cleaned up.

    python bench/load.py [--users 200] [--seconds 360] [--interval 30] [--think 90 240]
                         [--arrival 90] [--json FILE] [--log FILE]

`--interval` is each user's mean pause between messages, `--think` the pause between one
chat and the next, `--arrival` how long users take to show up. Synapse carries about
20-25 sends/s per homeserver on 2 cores; every relayed message costs two sends, and every
conversation two createRooms, two invites (federated for half the users), joins, greetings
and goodbyes, all on the bridge's homeserver. Needs
PostgreSQL (STRANGER_TEST_PG, default postgresql://postgres@127.0.0.1:5432/postgres).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bridge.lab.bridge_process import NO_RATE_LIMITS  # noqa: E402
from bridge.lab.bridged import start_bridged_lab  # noqa: E402
from bridge.lab.inprocess import existing_keys  # noqa: E402
from bridge.lab.load import latency_summary, load_run, ready_users  # noqa: E402

ADMIN_DSN = os.environ.get("STRANGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


async def main(users: int, seconds: float, interval: float, think: tuple[float, float],
               arrival: float, json_path: str | None, log_path: str | None) -> bool:
    db = f"stranger_bench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="bench-load-") as root:
        lab = await start_bridged_lab(Path(root), ADMIN_DSN, db, **{
            "logging.level": "INFO", "bridge.invite_timeout": 60},
            **existing_keys(NO_RATE_LIMITS))
        try:
            started = time.monotonic()
            clients = await ready_users(lab, users)
            print(f"{users} users ready in {time.monotonic() - started:.0f}s", flush=True)
            report = await load_run(lab, clients, seconds=seconds, message_interval=interval,
                                    think=think, arrival=arrival, open_timeout=150)
        finally:
            if log_path:
                shutil.copy(lab.bridge.log_path, log_path)
            await lab.shutdown(ADMIN_DSN)
    print(report.summary())
    ok = (not report.stats.errors and not report.bridge_errors and report.stats.duplicates == 0
          and report.live_conversations_left == 0 and report.sides_not_cleaned_up == 0
          and report.ghosts_still_in_rooms == 0 and not report.orphan_rooms)
    print("RESULT:", "no errors, nothing orphaned" if ok else "FAILED")
    if json_path:
        s = report.stats
        Path(json_path).write_text(json.dumps({
            "users": report.users, "seconds": round(report.seconds, 1),
            "conversations": s.conversations, "sent": s.sent, "relayed": s.received,
            "relayed_per_second": round(s.received / report.seconds, 2),
            "conversations_per_minute": round(s.conversations / report.seconds * 60, 1),
            "ended": s.ended, "latency": latency_summary(report),
            "bridge_peak_rss_mib": report.bridge_peak_rss_mib,
            "bridge_rss_mib": report.rss_figures,
            "bridge_rss_samples_mib": report.bridge_rss_mib,
            "errors": s.errors + report.bridge_errors, "duplicates": s.duplicates,
            "invites_withdrawn": s.invites_withdrawn, "cpu_seconds": report.cpu_seconds,
            "bridge_handling": report.handling,
            "orphan_rooms": report.orphan_rooms, "ghosts_still_in_rooms":
                report.ghosts_still_in_rooms, "ok": ok}, indent=2) + "\n")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=360)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--think", type=float, nargs=2, default=(90.0, 240.0))
    parser.add_argument("--arrival", type=float, default=90.0)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--log", help="keep the bridge's log here")
    args = parser.parse_args()
    sys.exit(0 if asyncio.run(main(args.users, args.seconds, args.interval, tuple(args.think),
                                   args.arrival, args.json, args.log)) else 1)
