"""Crash safety, the long run: two real users (one per homeserver) exchange messages both
ways while the real bridge process is SIGKILLed at random moments (some while it is still
starting up) and restarted. Every message must arrive exactly once, in order per direction.

    python bench/crash.py [-n 2000] [-k 10] [--rate 8] [--seed S] [--json FILE]

It prints its seed; --seed (or STRANGER_CRASH_SEED) replays the same schedule of kills.
Exits non-zero when a message was lost, doubled or reordered, or fewer start-up kills
landed than planned. Needs PostgreSQL
(STRANGER_TEST_PG, default postgresql://postgres@127.0.0.1:5432/postgres).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bridge.lab.bridge_process import NO_RATE_LIMITS  # noqa: E402
from bridge.lab.bridged import start_bridged_lab  # noqa: E402
from bridge.lab.inprocess import existing_keys  # noqa: E402
from bridge.lab.faults import crash_run, make_pair  # noqa: E402
from bridge.lab.figures import summary  # noqa: E402

ADMIN_DSN = os.environ.get("STRANGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


async def main(messages: int, kills: int, rate: float, seed: int | None,
               json_path: str | None) -> bool:
    db = f"stranger_bench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="bench-crash-") as root:
        lab = await start_bridged_lab(Path(root), ADMIN_DSN, db, **{"logging.level": "INFO"},
                                      **existing_keys(NO_RATE_LIMITS))
        try:
            pair = await make_pair(lab)
            report = await crash_run(lab, pair, messages=messages, kills=kills, rate=rate,
                                     seed=seed, settle_timeout=600)
        finally:
            await lab.shutdown(ADMIN_DSN)
    print(report.summary())
    print("RESULT:", "every message exactly once, in order" if report.ok else "FAILED")
    if json_path:
        Path(json_path).write_text(json.dumps({
            "seed": report.seed, "messages": report.messages, "kills": report.kills,
            "startup_kills_planned": report.startup_kills_planned,
            "kills_during_startup": report.kills_during_startup,
            "seconds": round(report.seconds, 1),
            "directions": [{"name": d.name, "sent": len(d.sent), "received": len(d.received),
                            "missing": len(d.missing), "duplicated": len(d.duplicated),
                            "in_order": d.exactly_once_in_order} for d in report.directions],
            "restart_seconds": [round(s, 2) for s in report.restart_seconds],
            "restart_ms": summary([s * 1000 for s in report.restart_seconds]),
            "adopted_events": report.adopted_events, "ok": report.ok}, indent=2) + "\n")
    return report.ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--messages", type=int, default=2000)
    parser.add_argument("-k", "--kills", type=int, default=10)
    parser.add_argument("--rate", type=float, default=8.0, help="messages/s, both ways together")
    parser.add_argument("--seed", type=int, help="replay a run's schedule (default: "
                        "$STRANGER_CRASH_SEED, else a fresh seed, printed)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    sys.exit(0 if asyncio.run(main(args.messages, args.kills, args.rate, args.seed,
                                   args.json)) else 1)
