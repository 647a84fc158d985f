"""How fast the bridge recovers from a PostgreSQL restart under load: two real users (one per
homeserver) send 2 messages/s each way while the bridge's database (a PostgreSQL server of
this run's own, bridge/lab/pgtemp.py) is stopped for a while, then started; repeated.

    python bench/db_restart.py [-n 5] [--down 6] [--json FILE]

Prints, per run and as median and p95 over the runs, the seconds from the database accepting
connections again to: the bridge recording a transaction again, the first message held
during the outage relayed, the whole backlog relayed. Exits non-zero when a message was lost,
doubled or reordered. tests/e2e/test_faults.py checks what holds on any machine (exactly
once, in order, the outage noticed).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.lab.bridged import start_bridged_lab  # noqa: E402
from bridge.lab.faults import database_restart_run, make_pair  # noqa: E402
from bridge.lab.figures import summary  # noqa: E402
from bridge.lab.pgtemp import TempPostgres  # noqa: E402

FIGURES = ("serving", "flowing", "backlog")


async def main(runs: int, down: float, json_path: str | None) -> bool:
    pg = TempPostgres()
    await pg.init()
    await pg.start()
    reports = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-dbrestart-") as root:
            lab = await start_bridged_lab(Path(root), pg.admin_dsn, "stranger_bench",
                                          **{"logging.level": "INFO"})
            try:
                pair = await make_pair(lab)
                for i in range(runs):
                    report = await database_restart_run(lab, pg, pair, down_seconds=down)
                    reports.append(report)
                    print(f"run {i + 1}: {report.summary()}", flush=True)
            finally:
                await lab.shutdown(None)
    finally:
        await pg.destroy()
    ok = all(d.exactly_once_in_order for r in reports for d in r.directions)
    figures = {name: summary([getattr(r, name) * 1000 for r in reports]) for name in FIGURES}
    for name, what in zip(FIGURES, ("recording again", "first held message relayed",
                                    "whole backlog relayed")):
        print(f"{what:>28}: median {figures[name]['median_ms'] / 1000:.2f} s, "
              f"p95 {figures[name]['p95_ms'] / 1000:.2f} s ({figures[name]['n']} runs)")
    print("RESULT:", "every message exactly once, in order" if ok else "FAILED")
    if json_path:
        Path(json_path).write_text(json.dumps({
            "runs": runs, "down_seconds": down, "ok": ok, **figures,
            "per_run": [{"serving_s": round(r.serving, 3), "flowing_s": round(r.flowing, 3),
                         "backlog_s": round(r.backlog, 3), "sent_while_down": r.sent_while_down,
                         "refused": r.refused} for r in reports]}, indent=2) + "\n")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=5)
    parser.add_argument("--down", type=float, default=6.0, help="seconds the database is down")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    sys.exit(0 if asyncio.run(main(args.runs, args.down, args.json)) else 1)
