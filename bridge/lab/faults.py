"""Fault drills on the federated lab with the real bridge process: two users chat both ways
while the bridge is killed and restarted, the database or a homeserver restarts. Shared by
the end-to-end tests (short runs) and bench/ (long runs).
"""
from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
import asyncpg
from ruamel.yaml import YAML

from .bridged import BridgedLab
from .client import LabClient
from .figures import summary

GHOST = re.compile(r"@_stranger_[a-z0-9]+:")


@dataclass
class Pair:
    alice: LabClient  # on hs1, the bridge's homeserver
    alice_room: str
    bob: LabClient  # on hs2
    bob_room: str


async def make_pair(lab: BridgedLab) -> Pair:
    alice, alice_dm = await lab.ready_user(0, "Alice")
    bob, bob_dm = await lab.ready_user(1, "Bob")
    alice_room, bob_room = await lab.pair(alice, alice_dm, bob, bob_dm)
    return Pair(alice, alice_room, bob, bob_room)


def relayed_bodies(client: LabClient, room_id: str, prefix: str) -> list[str]:
    """Bodies the ghost relayed into room_id that start with prefix, in timeline order."""
    return [s.body for s in client.log
            if s.room_id == room_id and s.section == "timeline" and s.type == "m.room.message"
            and GHOST.match(s.sender or "") and (s.body or "").startswith(prefix)]


async def wait_for_body(client: LabClient, room_id: str, body: str, timeout: float) -> float:
    seen = await client.wait_for_event(
        lambda s: s.room_id == room_id and s.section == "timeline" and s.body == body,
        timeout=timeout, description=f"relay of {body!r}")
    return seen.index


@dataclass
class Direction:
    name: str
    sent: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    event_ids: dict[str, str] = field(default_factory=dict)  # source event ID -> body
    arrival: list[str] = field(default_factory=list)  # bodies in the bridge's inbox order

    def first_disorder(self, sequence: list[str] | None = None) -> str | None:
        """Where `sequence` (default: received) first departs from the sending order."""
        sequence = self.received if sequence is None else sequence
        rank = {b: i for i, b in enumerate(self.sent)}
        ranks = [rank[b] for b in sequence if b in rank]
        for i in range(1, len(ranks)):
            if ranks[i] < ranks[i - 1]:
                return (f"position {i}: {self.sent[ranks[i - 1]]!r} before "
                        f"{self.sent[ranks[i]]!r} (context {[self.sent[r][-5:] for r in ranks[max(0, i - 4):i + 4]]})")
        return None

    @property
    def missing(self) -> list[str]:
        return [b for b in self.sent if b not in self.received]

    @property
    def duplicated(self) -> list[str]:
        return sorted({b for b in self.received if self.received.count(b) > 1})

    @property
    def exactly_once_in_order(self) -> bool:
        return self.received == self.sent


@dataclass
class CrashReport:
    messages: int
    kills: int
    startup_kills_planned: int
    kills_during_startup: int  # SIGKILLs that landed before the bridge logged it was up
    seed: int
    seconds: float
    directions: list[Direction]
    restart_seconds: list[float]
    adopted_events: int  # undelivered events the bridge found in history after a restart
    unhandled_left: int
    relayed_rows: int

    @property
    def ok(self) -> bool:
        return (all(d.exactly_once_in_order for d in self.directions)
                and self.unhandled_left == 0
                and self.kills_during_startup == self.startup_kills_planned)

    def summary(self) -> str:
        lines = [f"{self.messages} messages, {self.kills} SIGKILLs while running and "
                 f"{self.kills_during_startup} more during start-up ({self.startup_kills_planned}"
                 f" planned) in {self.seconds:.0f}s (seed {self.seed})"]
        for d in self.directions:
            lines.append(f"  {d.name}: sent {len(d.sent)}, received {len(d.received)}, "
                         f"missing {len(d.missing)}, duplicated {len(d.duplicated)}, in order: "
                         f"{d.exactly_once_in_order}")
            if d.first_disorder():
                lines.append(f"    received out of order at {d.first_disorder()}")
                lines.append(f"    the bridge's inbox got them "
                             f"{'in order' if not d.first_disorder(d.arrival) else 'out of order at ' + d.first_disorder(d.arrival)}")
        if self.restart_seconds:
            figures = summary([s * 1000 for s in self.restart_seconds])
            lines.append(f"  restart to ready: median {figures['median_ms'] / 1000:.1f}s, "
                         f"p95 {figures['p95_ms'] / 1000:.1f}s, "
                         f"max {max(self.restart_seconds):.1f}s")
        lines.append(f"  events found undelivered in history and adopted: {self.adopted_events}; "
                     f"inbox left unhandled: {self.unhandled_left}")
        return "\n".join(lines)


async def _send_all(client: LabClient, room_id: str, bodies: list[str], interval: float,
                    direction: Direction) -> None:
    for body in bodies:
        started = time.monotonic()
        direction.event_ids[await client.send_text(room_id, body)] = body
        direction.sent.append(body)
        # Pacing: a steady rate the homeservers can carry, not a wait for anything.
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


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


async def _finish(pair: Pair, a2b: Direction, b2a: Direction, prefixes: tuple[str, str],
                  timeout: float) -> None:
    """A last message each way: the bridge handles a room's events in order, so once the
    marker is through, everything before it has been relayed (or never will be). Then
    what each side received, of the bodies starting with its direction's prefix."""
    markers = (f"{prefixes[0]} marker", f"{prefixes[1]} marker")
    await pair.alice.send_text(pair.alice_room, markers[0])
    await pair.bob.send_text(pair.bob_room, markers[1])
    a2b.sent.append(markers[0])
    b2a.sent.append(markers[1])
    await asyncio.gather(wait_for_body(pair.bob, pair.bob_room, markers[0], timeout),
                         wait_for_body(pair.alice, pair.alice_room, markers[1], timeout))
    a2b.received = relayed_bodies(pair.bob, pair.bob_room, prefixes[0])
    b2a.received = relayed_bodies(pair.alice, pair.alice_room, prefixes[1])


SEED_VARIABLE = "STRANGER_CRASH_SEED"  # replays a drill's schedule (bench/crash.py: --seed)
UP_LINE = "Stranger Bridge is up"  # bridge/app.py logs it once start-up is complete
STARTUP_ATTEMPTS = 6  # tries at a start-up kill, each earlier, before counting it missed


def drill_seed(seed: int | None = None) -> int:
    """The seed given, else $STRANGER_CRASH_SEED, else a fresh one (always printed)."""
    if seed is None:
        seed = int(os.environ.get(SEED_VARIABLE) or random.SystemRandom().randrange(2 ** 32))
    print(f"crash drill seed {seed} (replay its schedule: {SEED_VARIABLE}={seed}, "
          f"or bench/crash.py --seed {seed})", flush=True)
    return seed


async def _kill_during_startup(lab: BridgedLab, delay: float) -> bool:
    """Start the bridge and SIGKILL it `delay` s later; True when it had not finished
    starting (its log never said it was up), as the bridge itself records it."""
    offset = lab.bridge.log_path.stat().st_size
    dead = lab.bridge.process
    starting = asyncio.create_task(lab.bridge.start())
    await asyncio.sleep(delay)  # a chosen moment inside start-up
    while lab.bridge.process is dead and not starting.done():  # spawned in start()'s first step
        await asyncio.sleep(0.01)
    await lab.bridge.stop(signal.SIGKILL)
    try:
        await starting
    except (RuntimeError, TimeoutError):
        pass  # killed before it was ready: what was wanted
    log = lab.bridge.log_path.read_bytes()[offset:].decode(errors="replace")
    return UP_LINE not in log


async def crash_run(lab: BridgedLab, pair: Pair, *, messages: int, kills: int,
                    rate: float = 8.0, seed: int | None = None, startup_share: float = 0.3,
                    settle_timeout: float = 180.0) -> CrashReport:
    """Alice and Bob each send messages/2 messages at rate/2 per second while the bridge is
    SIGKILLed `kills` times at random moments and restarted; after round(kills *
    startup_share) of those kills (chosen by the seed) the restarted bridge is SIGKILLed
    again while still starting up (retried, at an earlier moment, until one lands before
    it is up: the report counts those that did). Then each sends a marker, and everything
    is compared. The seed (drill_seed) fixes the schedule: moments, downtimes, which kills."""
    seed = drill_seed(seed)
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    half = messages // 2
    a2b, b2a = Direction("alice -> bob"), Direction("bob -> alice")
    a_bodies = [f"a2b {tag} {i:05d}" for i in range(half)]
    b_bodies = [f"b2a {tag} {i:05d}" for i in range(messages - half)]
    interval = 2.0 / rate
    duration = half * interval
    log_offset = lab.bridge.log_path.stat().st_size if lab.bridge.log_path.exists() else 0
    restarts: list[float] = []
    planned_startup = set(rng.sample(range(kills), round(kills * startup_share)))
    # The whole schedule is drawn now, so a replay gets it whatever happens meanwhile: per
    # kill, where in its slot, how long down, and start-up kill moments as fractions of the
    # median start-up time so far (each attempt at half the previous one's).
    schedule = [(rng.uniform(0.2, 0.8), rng.uniform(0.0, 1.5),
                 [rng.uniform(0.1, 0.9) / 2 ** attempt for attempt in range(STARTUP_ATTEMPTS)])
                for _ in range(kills)]
    during_startup = 0

    async def chaos() -> None:
        nonlocal during_startup
        # Kill moments spread over the sending time, each at a random point of its slot.
        slot = duration / kills
        began = time.monotonic()
        for k, (where, down, startup_moments) in enumerate(schedule):
            await asyncio.sleep(max(0.0, began + slot * (k + where) - time.monotonic()))
            await lab.bridge.stop(signal.SIGKILL)
            await asyncio.sleep(down)  # down for a while
            if k in planned_startup:  # killed again while starting up
                startup = sorted(restarts)[len(restarts) // 2] if restarts else 1.5
                for fraction in startup_moments:
                    if await _kill_during_startup(lab, fraction * startup):
                        during_startup += 1
                        break
            t0 = time.monotonic()
            await lab.bridge.start()
            restarts.append(time.monotonic() - t0)

    began = time.monotonic()
    await asyncio.gather(
        _send_all(pair.alice, pair.alice_room, a_bodies, interval, a2b),
        _send_all(pair.bob, pair.bob_room, b_bodies, interval, b2a),
        chaos())
    await _finish(pair, a2b, b2a, (f"a2b {tag}", f"b2a {tag}"), settle_timeout)
    seconds = time.monotonic() - began
    log_text = lab.bridge.log_path.read_bytes()[log_offset:].decode(errors="replace")
    adopted = sum(int(n) for n in re.findall(r": (\d+) (?:earlier|trailing) event\(s\) were "
                                             r"never delivered", log_text))
    unhandled = await unhandled_settles(lab)  # (the other rooms' events may still be handled)
    conn = await asyncpg.connect(lab.database_uri)
    try:
        for direction in (a2b, b2a):
            rows = await conn.fetch("SELECT event_id FROM inbox WHERE event_id = ANY($1::text[])"
                                    " ORDER BY seq", list(direction.event_ids))
            direction.arrival = [direction.event_ids[r["event_id"]] for r in rows]
        relayed_rows = await conn.fetchval("SELECT count(*) FROM relayed")
    finally:
        await conn.close()
    return CrashReport(messages + 2, kills, len(planned_startup), during_startup, seed,
                       seconds, [a2b, b2a], restarts, adopted, unhandled, relayed_rows)


@dataclass
class DatabaseRestartReport:
    down_seconds: float
    sent_while_down: int
    refused: int  # transactions the intake answered 503 meanwhile
    serving: float  # database accepting connections -> the bridge records a transaction again
    flowing: float  # ... -> the first message held during the outage relayed
    backlog: float  # ... -> everything sent during the outage relayed
    directions: list[Direction]

    def summary(self) -> str:
        return (f"PostgreSQL down {self.down_seconds:.0f} s under load ({self.sent_while_down} "
                f"messages sent meanwhile, {self.refused} transactions answered 503): after it "
                f"came back the bridge recorded again in {self.serving:.2f}s, relayed the first "
                f"held message in {self.flowing:.2f}s, the whole backlog in {self.backlog:.2f}s; "
                + " + ".join(str(len(d.received)) for d in self.directions) + " relayed")


async def _probe(session: aiohttp.ClientSession, lab: BridgedLab, token: str) -> int:
    """Answer to one harmless transaction (an event in a room of nobody's); 0: no answer."""
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


async def database_restart_run(lab: BridgedLab, pg, pair: Pair, *, down_seconds: float = 6,
                               timeout: float = 60) -> DatabaseRestartReport:
    """Both users send 2 messages/s; the bridge's PostgreSQL (`pg`, a bridge.lab.pgtemp
    TempPostgres of the lab's own) is stopped with `pg_ctl -m fast` for `down_seconds`, then
    started; measured from when it accepts connections again. Ends with a marker each way."""
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

    offset = lab.bridge.log_path.stat().st_size
    senders = asyncio.gather(steady(pair.alice, pair.alice_room, a2b, "a"),
                             steady(pair.bob, pair.bob_room, b2a, "b"))
    await wait_for_body(pair.bob, pair.bob_room, f"db {tag} a 0003 before", timeout)
    phase["name"] = "down"
    await pg.stop("fast")  # terminates the bridge's connections, as a restart does
    await asyncio.sleep(down_seconds)  # the database stays down this long, under traffic
    await pg.start()  # returns once it accepts connections
    up = time.monotonic()
    phase["name"] = "after"
    async with aiohttp.ClientSession() as session:
        while await _probe(session, lab, token) != 200:
            if time.monotonic() - up > timeout:
                raise TimeoutError("the bridge never recorded a transaction again")
            await asyncio.sleep(0.05)  # measuring: how soon it answers 200 again
    serving = time.monotonic() - up
    a_during = [b for b in during if b.startswith(f"db {tag} a")]
    await wait_for_body(pair.bob, pair.bob_room, a_during[0], timeout)
    flowing = time.monotonic() - up
    await wait_for_body(pair.bob, pair.bob_room, a_during[-1], timeout)
    backlog = time.monotonic() - up
    await wait_for_body(pair.bob, pair.bob_room, f"db {tag} a " +
                        f"{int(a2b.sent[-1].split()[3]) + 2:04d} after", timeout)
    stop_sending.set()
    await senders
    await _finish(pair, a2b, b2a, (f"db {tag} a", f"db {tag} b"), timeout)
    log = lab.bridge.log_path.read_bytes()[offset:].decode(errors="replace")
    return DatabaseRestartReport(down_seconds, len(during),
                                 log.count("not recorded, asking for a retry"),
                                 serving, flowing, backlog, [a2b, b2a])
