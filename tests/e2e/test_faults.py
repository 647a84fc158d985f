"""Faults on the real federated lab with the real bridge process, whose database is a
PostgreSQL server of this module's own (bridge/lab/pgtemp.py), so it can be stopped and
started without touching the machine's shared one.

- the bridge SIGKILLed at random moments while two users chat both ways: every message
  arrives exactly once, in order per direction;
- SIGTERM in the middle of a burst: in-flight work finishes, nothing is half-done, every
  message arrives exactly once after the restart;
- PostgreSQL restarted under load: nothing lost or doubled, and the bridge serves and
  relays again within 5 s of the database coming back;
- either homeserver restarted mid-conversation: messages flow afterwards, and leaving
  still ends the chat for both.

The CI sizes are small; STRANGER_CRASH_MESSAGES / STRANGER_CRASH_KILLS make the crash run
longer, and bench/crash.py is the long run (>= 2,000 messages, >= 10 kills).
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
from ruamel.yaml import YAML

from bridge.lab.bridge_process import NO_RATE_LIMITS
from bridge.lab.bridged import BridgedLab, start_bridged_lab
from bridge.lab.faults import (Direction, crash_run, make_pair, relayed_bodies,
                               wait_for_body)
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


async def unhandled_settles(lab: BridgedLab, timeout: float = 60) -> int:
    """Wait until the inbox has nothing left to handle; return what is left at the end."""
    conn = await asyncpg.connect(lab.database_uri)
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = await conn.fetchval("SELECT count(*) FROM inbox WHERE handled_at IS NULL")
            if left == 0 or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.2)  # polling a condition, with a deadline
    finally:
        await conn.close()


async def test_crash_safety_under_random_sigkills(faultlab: BridgedLab):
    pair = await make_pair(faultlab)
    offset = log_offset(faultlab)
    report = await crash_run(faultlab, pair, messages=CRASH_MESSAGES, kills=CRASH_KILLS)
    print("\n" + report.summary())
    print_log_problems(faultlab, offset)
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


async def _probe(session: aiohttp.ClientSession, lab: BridgedLab, token: str) -> int:
    """Answer to one harmless transaction (an event in a room of nobody's)."""
    event = {"event_id": f"$probe-{uuid.uuid4().hex}", "room_id": "!probe:nowhere.test",
             "sender": "@probe:nowhere.test", "type": "m.room.message",
             "content": {"msgtype": "m.text", "body": "probe"}}
    try:
        async with session.put(
                f"http://127.0.0.1:{lab.bridge.port}/_matrix/app/v1/transactions/"
                f"probe-{uuid.uuid4().hex}", json={"events": [event]},
                headers={"Authorization": f"Bearer {token}"}) as response:
            return response.status
    except aiohttp.ClientError:
        return 0


async def test_database_restart_under_load(faultlab: BridgedLab):
    lab, pg = faultlab, faultlab.pg
    pair = await make_pair(lab)
    token = YAML().load(lab.bridge.config.read_text())["appservice"]["hs_token"]
    tag = uuid.uuid4().hex[:6]
    a2b, b2a = Direction("alice -> bob"), Direction("bob -> alice")
    during: list[str] = []
    phase = {"name": "before"}
    stop_sending = asyncio.Event()

    async def steady(client, room, direction, prefix):
        i = 0
        while not stop_sending.is_set():
            body = f"db {tag} {prefix} {i:04d} {phase['name']}"
            await client.send_text(room, body)
            direction.sent.append(body)
            if phase["name"] == "down":
                during.append(body)
            i += 1
            await asyncio.sleep(0.5)  # pacing: 2 messages/s each way

    offset = log_offset(lab)
    senders = asyncio.gather(steady(pair.alice, pair.alice_room, a2b, "a"),
                             steady(pair.bob, pair.bob_room, b2a, "b"))
    await wait_for_body(pair.bob, pair.bob_room, f"db {tag} a 0003 before", 30)
    phase["name"] = "down"
    await pg.stop("fast")  # terminates the bridge's connections, as a restart does
    await asyncio.sleep(6)  # the database stays down this long, under traffic
    await pg.start()  # returns once it accepts connections
    up = time.monotonic()
    phase["name"] = "after"
    async with aiohttp.ClientSession() as session:
        while await _probe(session, lab, token) != 200:
            assert time.monotonic() - up < 30, "the bridge never recorded again"
            await asyncio.sleep(0.05)  # measuring: how soon it answers 200 again
    serving = time.monotonic() - up
    first_down = next(b for b in a2b.sent if b.endswith(" down"))
    await wait_for_body(pair.bob, pair.bob_room, first_down, 60)
    flowing = time.monotonic() - up
    await wait_for_body(pair.bob, pair.bob_room, during[-1] if during[-1].startswith(
        f"db {tag} a") else [b for b in during if f"db {tag} a" in b][-1], 60)
    backlog = time.monotonic() - up
    await wait_for_body(pair.bob, pair.bob_room, f"db {tag} a " +
                        f"{int(a2b.sent[-1].split()[3]) + 2:04d} after", 60)
    stop_sending.set()
    await senders
    markers = (f"db {tag} a marker", f"db {tag} b marker")
    await pair.alice.send_text(pair.alice_room, markers[0])
    await pair.bob.send_text(pair.bob_room, markers[1])
    a2b.sent.append(markers[0])
    b2a.sent.append(markers[1])
    await asyncio.gather(wait_for_body(pair.bob, pair.bob_room, markers[0], 60),
                         wait_for_body(pair.alice, pair.alice_room, markers[1], 60))
    a2b.received = relayed_bodies(pair.bob, pair.bob_room, f"db {tag} a")
    b2a.received = relayed_bodies(pair.alice, pair.alice_room, f"db {tag} b")
    log = lab.bridge.log_path.read_bytes()[offset:].decode(errors="replace")
    refused = log.count("not recorded, asking for a retry")
    print(f"\nPostgreSQL down 6 s under load ({len(during)} messages sent meanwhile, "
          f"{refused} transactions answered 503): after it came back the bridge recorded "
          f"again in {serving:.2f}s, relayed the first held message in {flowing:.2f}s, "
          f"the whole backlog in {backlog:.2f}s; {len(a2b.received)} + {len(b2a.received)} "
          "relayed, each once, in order")
    print_log_problems(lab, offset)
    assert a2b.exactly_once_in_order, (a2b.missing, a2b.duplicated)
    assert b2a.exactly_once_in_order, (b2a.missing, b2a.duplicated)
    assert refused > 0, "the outage was noticed by the intake"
    assert serving < 5
    assert flowing < 5
    assert await unhandled_settles(lab) == 0


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
