"""How fast abusers are stopped, and whether honest users are wrongly suspended: 1,000
simulated users on real PostgreSQL with the bridge's own matching and moderation code
(Commands -> Pairing/Matchmaker -> Safety: !start, !stop, !report, the automatic suspension
and its weighting). No Matrix: the rooms are a no-op portal, and both users "join" at once.

The users: 5% abusers (flooders, link spammers, rude users: all kinds their partners report,
each partner with probability --report-abuser), who also report half of the honest partners
they meet (retaliation, or reporting everyone). Honest users report an honest partner by
mistake with probability --mistake. Each round every idle user who may chat sends !start,
is paired by the real matchmaker, and the chat ends with the reports (a report ends it) or a
!stop. Every round fits in one auto-suspension window (24 h by default): --rounds is about
how many chats each user has in a day.

    python bench/abuse.py [--users 1000] [--abusers 0.05] [--rounds 12] [--seed 1]
                          [--json FILE]

Prints, for the abusers, how many distinct honest users each reached (was paired with)
before being suspended (median, max; one never suspended counts all it reached), and how
many honest users were suspended. Needs PostgreSQL (STRANGER_TEST_PG, default
postgresql://postgres@127.0.0.1:5432/postgres); creates and drops its own database.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402

from bridge.background import Background  # noqa: E402
from bridge.commands import Commands  # noqa: E402
from bridge.config import Config  # noqa: E402
from bridge.lab.benchdb import create_database, drop_database  # noqa: E402
from bridge.lab.bridge_process import write_config  # noqa: E402
from bridge.moderation.safety import Safety  # noqa: E402
from bridge.pairing import Pairing  # noqa: E402
from bridge.store import conversations, users  # noqa: E402

ADMIN_DSN = os.environ.get("STRANGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
ABUSER_REPORTS_HONEST = 0.5


class NoRooms:
    """The portal without Matrix: every room is made and closed at once."""

    async def open(self, conversation_id: int) -> bool:
        return True

    async def close(self, conversation_id: int) -> None:
        return None

    async def greet(self, conv) -> None:
        return None


async def quiet(*args, **kwargs) -> None:
    """Nobody to tell: DMs and the moderation room are not simulated."""


def load_config(root: Path, uri: str) -> Config:
    path = root / "config.yaml"
    write_config(path, homeserver_url="http://127.0.0.1:1", domain="bench.test", port=29999,
                 database_uri=uri, **{"appservice.as_token": "a" * 32,
                                      "appservice.hs_token": "h" * 32,
                                      "bridge.encryption.allow": False})
    config = Config(str(path))
    config.load()
    config.update(save=False)
    config.validate()
    return config


async def simulate(uri: str, config: Config, n_users: int, abuser_share: float, rounds: int,
                   report_abuser: float, mistake: float, seed: int) -> dict:
    rnd = random.Random(seed)
    pool = await asyncpg.create_pool(uri, min_size=2, max_size=10)
    background = Background()
    pairing = Pairing(pool, config, NoRooms(), quiet, background)
    safety = Safety(pool, pairing)
    safety.post = quiet
    commands = Commands(pool, pairing, safety)
    everyone = [f"@u{i}:bench.test" for i in range(n_users)]
    abusers = set(rnd.sample(everyone, round(n_users * abuser_share)))
    for user_id in everyone:
        await users.ensure(pool, user_id)
        await users.agree(pool, user_id)
    reach: dict[str, set[str]] = {a: set() for a in abusers}
    try:
        for _ in range(rounds):
            order = everyone[:]
            rnd.shuffle(order)
            # Arrivals in the same moment, as the bridge sees them (batched by the matchmaker);
            # a restricted user's !start is refused with the statement of reasons.
            limit = asyncio.Semaphore(8)

            async def start(user_id: str) -> None:
                async with limit:
                    await commands.start(user_id)
            await asyncio.gather(*(start(user_id) for user_id in order))
            await asyncio.wait_for(background.wait(timeout=30), timeout=60)
            live = await pool.fetch("SELECT DISTINCT conversation_id FROM conversation_sides "
                                    "WHERE live ORDER BY conversation_id")
            for row in live:
                await play(pool, pairing, commands, row["conversation_id"], abusers, reach,
                           rnd, report_abuser, mistake)
            await pool.execute("DELETE FROM waiting")  # the unpaired go home for the round
        suspended = {r["user_id"] for r in await pool.fetch(
            "SELECT DISTINCT user_id FROM sanctions WHERE source = 'automatic'")}
    finally:
        await asyncio.wait_for(background.wait(timeout=30), timeout=60)
        await pool.close()
    reaches = sorted(len(reach[a]) for a in abusers)
    return {"users": n_users, "abusers": len(abusers),
            "abuser_reach_median": statistics.median(reaches) if reaches else 0,
            "abuser_reach_max": max(reaches, default=0),
            "abusers_suspended": len(suspended & abusers),
            "honest_suspended": len(suspended - abusers),
            "rounds": rounds, "seed": seed}


async def play(pool, pairing: Pairing, commands: Commands, conversation_id: int,
               abusers: set[str], reach: dict[str, set[str]], rnd: random.Random,
               report_abuser: float, mistake: float) -> None:
    """Both join; then who reports whom, or one of them stops."""
    for side in (0, 1):
        await pairing.joined(conversation_id, side)
    conv = await conversations.get(pool, conversation_id)
    a, b = (s.user_id for s in conv.sides)
    for x, y in ((a, b), (b, a)):
        if x in abusers and y not in abusers:
            reach[x].add(y)
    reported = False
    for reporter, partner in ((a, b), (b, a)):
        if reporter in abusers:
            chance = ABUSER_REPORTS_HONEST if partner not in abusers else 0.0
        else:
            chance = report_abuser if partner in abusers else mistake
        if rnd.random() < chance:
            # During the chat, or just after the partner's report ended it.
            await commands.report(reporter, "bench")
            reported = True
    if not reported:
        await commands.stop(a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--abusers", type=float, default=0.05, help="share of abusers")
    parser.add_argument("--rounds", type=int, default=12, help="chats per user in the window")
    parser.add_argument("--report-abuser", type=float, default=0.9,
                        help="chance an honest partner reports an abuser")
    parser.add_argument("--mistake", type=float, default=0.01,
                        help="chance an honest user reports an honest partner by mistake")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    uri = asyncio.run(create_database(ADMIN_DSN, "stranger_abusebench"))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = load_config(Path(tmp), uri)
            result = asyncio.run(simulate(uri, config, args.users, args.abusers, args.rounds,
                                          args.report_abuser, args.mistake, args.seed))
    finally:
        asyncio.run(drop_database(ADMIN_DSN, uri))
    print(f"{result['users']} users, {result['abusers']} abusers, {args.rounds} rounds "
          f"(seed {args.seed})")
    print(f"honest users an abuser reached before suspension: median "
          f"{result['abuser_reach_median']}, max {result['abuser_reach_max']}")
    print(f"abusers suspended: {result['abusers_suspended']} of {result['abusers']}")
    print(f"honest users wrongly suspended: {result['honest_suspended']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: result[k] for k in ("users", "abusers", "abuser_reach_median",
                                              "abuser_reach_max", "honest_suspended")},
                      f, indent=2)


if __name__ == "__main__":
    main()
