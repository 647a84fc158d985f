"""Faults on the real federated lab with the real bridge process, whose database is a
PostgreSQL server of this module's own (bridge/lab/pgtemp.py), so it can be stopped and
started without touching the machine's shared one.

- the bridge SIGKILLed at random moments while two users chat both ways: every message
  arrives exactly once, in order per direction;
- SIGTERM in the middle of a burst: in-flight work finishes, nothing is half-done, every
  message arrives exactly once after the restart;
- PostgreSQL restarted under load: nothing lost or doubled, the outage is noticed and the
  backlog relayed (how fast: bench/db_restart.py);
- either homeserver restarted mid-conversation: messages flow afterwards, and leaving
  still ends the chat for both.

The CI sizes are small; STRANGER_CRASH_MESSAGES / STRANGER_CRASH_KILLS make the crash run
longer, and bench/crash.py is the long run (>= 2,000 messages, >= 10 kills). The crash run
prints its seed; STRANGER_CRASH_SEED=<seed> replays its schedule.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import aiohttp
import asyncpg
import pytest
import pytest_asyncio

from bridge.lab.bridge_process import NO_RATE_LIMITS
from bridge.lab.bridged import BridgedLab, start_bridged_lab
from bridge.lab.faults import (Direction, crash_run, database_restart_run, make_pair,
                               relayed_bodies, unhandled_settles, wait_for_body)
from bridge.lab.pgtemp import TempPostgres

pytestmark = pytest.mark.e2e

CRASH_MESSAGES = int(os.environ.get("STRANGER_CRASH_MESSAGES", "300"))
CRASH_KILLS = int(os.environ.get("STRANGER_CRASH_KILLS", "5"))


@pytest_asyncio.fixture(scope="module")
async def faultlab(tmp_path_factory):
    pg = TempPostgres()
    await pg.init()
    await pg.start()
    lab = await start_bridged_lab(tmp_path_factory.mktemp("faults"), pg.admin_dsn,
                                  "stranger_faults", **{"bridge.invite_timeout": 30,
                                                        "logging.level": "INFO"},
                                  **NO_RATE_LIMITS)  # (40-message bursts)
    lab.pg = pg
    try:
        yield lab
    finally:
        await lab.shutdown(None)  # (its database goes with the server)
        await pg.destroy()


def print_log_problems(lab: BridgedLab, offset: int) -> None:
    text = lab.bridge.log_path.read_bytes()[offset:].decode(errors="replace")
    problems = [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]
    print(f"bridge log: {len(problems)} ERROR line(s)" +
          "".join(f"\n  {line[:200]}" for line in problems[:10]))


def log_offset(lab: BridgedLab) -> int:
    return lab.bridge.log_path.stat().st_size


async def test_crash_safety_under_random_sigkills(faultlab: BridgedLab):
    pair = await make_pair(faultlab)
    offset = log_offset(faultlab)
    report = await crash_run(faultlab, pair, messages=CRASH_MESSAGES, kills=CRASH_KILLS)
    print("\n" + report.summary())
    print_log_problems(faultlab, offset)
    # The start-up kills the drill claims landed before the bridge was up (its own log).
    assert report.kills_during_startup == report.startup_kills_planned > 0, report.summary()
    for direction in report.directions:
        assert direction.missing == [], f"{direction.name}: lost"
        assert direction.duplicated == [], f"{direction.name}: delivered twice"
        assert direction.exactly_once_in_order, f"{direction.name}: out of order"
    assert await unhandled_settles(faultlab) == 0


async def test_sigterm_mid_burst_loses_nothing_and_leaves_nothing_half_done(faultlab):
    lab = faultlab
    pair = await make_pair(lab)
    tag = uuid.uuid4().hex[:6]
    a2b, b2a = Direction("alice -> bob"), Direction("bob -> alice")
    a2b.sent = [f"burst {tag} a {i:03d}" for i in range(40)]
    b2a.sent = [f"burst {tag} b {i:03d}" for i in range(40)]

    async def burst(client, room, bodies):
        for body in bodies:
            await client.send_text(room, body)

    offset = log_offset(lab)
    sending = asyncio.gather(burst(pair.alice, pair.alice_room, a2b.sent),
                             burst(pair.bob, pair.bob_room, b2a.sent))
    # SIGTERM while relays are in flight: once the first few came through.
    await wait_for_body(pair.bob, pair.bob_room, a2b.sent[3], 30)
    stopped_at = time.monotonic()
    code = await lab.bridge.stop(signal.SIGTERM)
    stop_seconds = time.monotonic() - stopped_at
    await sending
    log = lab.bridge.log_path.read_bytes()[offset:].decode(errors="replace")
    assert code == 0, f"exit code {code}"
    assert "Stopping" in log
    assert "CancelledError" not in log and " ERROR " not in log, log[-3000:]
    async with aiohttp.ClientSession() as session:  # really gone
        with pytest.raises(aiohttp.ClientError):
            await session.get(f"http://127.0.0.1:{lab.bridge.port}/_matrix/mau/live")
    await lab.bridge.start()
    await asyncio.gather(wait_for_body(pair.bob, pair.bob_room, a2b.sent[-1], 60),
                         wait_for_body(pair.alice, pair.alice_room, b2a.sent[-1], 60))
    marker = f"burst {tag} a marker"
    await pair.alice.send_text(pair.alice_room, marker)
    a2b.sent.append(marker)
    await wait_for_body(pair.bob, pair.bob_room, marker, 30)
    a2b.received = relayed_bodies(pair.bob, pair.bob_room, f"burst {tag} a")
    b2a.received = relayed_bodies(pair.alice, pair.alice_room, f"burst {tag} b")
    print(f"\nSIGTERM: stopped in {stop_seconds:.2f}s (exit {code}); "
          f"{len(a2b.received)} + {len(b2a.received)} relayed after the restart")
    assert a2b.exactly_once_in_order and b2a.exactly_once_in_order, (a2b.missing, b2a.missing)
    conn = await asyncpg.connect(lab.database_uri)
    try:
        assert await conn.fetchval(
            "SELECT count(*) FROM conversations WHERE state = 'opening'") == 0
    finally:
        await conn.close()
    assert await unhandled_settles(lab) == 0


async def test_database_restart_under_load(faultlab: BridgedLab):
    """PostgreSQL stopped for 6 s while both users send 2 messages/s. How fast the bridge
    recovers is bench/db_restart.py's figure; here what holds on any machine."""
    pair = await make_pair(faultlab)
    offset = log_offset(faultlab)
    report = await database_restart_run(faultlab, faultlab.pg, pair)
    print("\n" + report.summary())
    print_log_problems(faultlab, offset)
    a2b, b2a = report.directions
    assert a2b.exactly_once_in_order, (a2b.missing, a2b.duplicated)
    assert b2a.exactly_once_in_order, (b2a.missing, b2a.duplicated)
    assert report.sent_while_down > 0 and report.refused > 0, "the outage was noticed"
    assert await unhandled_settles(faultlab) == 0


async def test_homeserver_restarts_leave_no_stuck_state(faultlab: BridgedLab):
    lab = faultlab
    pair = await make_pair(lab)
    hs1, hs2 = lab.lab.homeservers

    async def both_ways(label: str) -> None:
        await pair.alice.send_text(pair.alice_room, f"{label} from alice")
        await pair.bob.send_text(pair.bob_room, f"{label} from bob")
        await wait_for_body(pair.bob, pair.bob_room, f"{label} from alice", 60)
        await wait_for_body(pair.alice, pair.alice_room, f"{label} from bob", 60)

    await both_ways("before")
    timings = {}
    for name, hs in (("hs2 (the partner's)", hs2), ("hs1 (the bridge's)", hs1)):
        started = time.monotonic()
        await hs.restart()
        await both_ways(f"after restarting {name}")
        timings[name] = time.monotonic() - started
    # Leaving still ends the chat for both, and the bridge cleans up.
    mark = pair.alice.mark()
    await pair.bob.leave(pair.bob_room)
    await pair.alice.wait_for_event(
        lambda s: s.room_id == pair.alice_room and "Stranger has disconnected" in (s.body or ""),
        since=mark, timeout=60, description="disconnect notice")
    await pair.alice.wait_for_event(
        lambda s: s.room_id == pair.alice_room and s.membership == "leave"
        and (s.state_key or "").startswith("@_stranger_"), since=mark, timeout=60,
        description="ghost leaving")
    print("\nhomeserver restart, then messages both ways: " +
          ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    conn = await asyncpg.connect(lab.database_uri)
    try:
        rows = await conn.fetch(
            """SELECT c.state, s.live, s.closed_at IS NOT NULL AS closed FROM conversations c
               JOIN conversation_sides s ON s.conversation_id = c.id
               JOIN conversation_sides me ON me.conversation_id = c.id
               WHERE me.room_id = $1""", pair.alice_room)
        assert [r["state"] for r in rows] == ["ended", "ended"]
        assert not any(r["live"] for r in rows)
        deadline = time.monotonic() + 30
        while not all(r["closed"] for r in rows):  # the ghosts' goodbyes may still be on the way
            assert time.monotonic() < deadline, "rooms never cleaned up"
            await asyncio.sleep(0.2)
            rows = await conn.fetch(
                """SELECT s.closed_at IS NOT NULL AS closed FROM conversation_sides s
                   JOIN conversation_sides me ON me.conversation_id = s.conversation_id
                   WHERE me.room_id = $1""", pair.alice_room)
    finally:
        await conn.close()
    assert await unhandled_settles(lab) == 0
