"""Fault drills on the federated lab with the real bridge process: two users chat both ways
while the bridge is killed and restarted, the database or a homeserver restarts. Shared by
the end-to-end tests (short runs) and bench/ (long runs).
"""
from __future__ import annotations

import asyncio
import random
import re
import signal
import time
import uuid
from dataclasses import dataclass, field

import asyncpg

from .bridged import BridgedLab
from .client import LabClient

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
    kills_during_startup: int
    seconds: float
    directions: list[Direction]
    restart_seconds: list[float]
    adopted_events: int  # undelivered events the bridge found in history after a restart
    unhandled_left: int
    relayed_rows: int

    @property
    def ok(self) -> bool:
        return all(d.exactly_once_in_order for d in self.directions) and self.unhandled_left == 0

    def summary(self) -> str:
        lines = [f"{self.messages} messages, {self.kills} SIGKILLs ({self.kills_during_startup} "
                 f"during start-up) in {self.seconds:.0f}s"]
        for d in self.directions:
            lines.append(f"  {d.name}: sent {len(d.sent)}, received {len(d.received)}, "
                         f"missing {len(d.missing)}, duplicated {len(d.duplicated)}, in order: "
                         f"{d.exactly_once_in_order}")
            if d.first_disorder():
                lines.append(f"    received out of order at {d.first_disorder()}")
                lines.append(f"    the bridge's inbox got them "
                             f"{'in order' if not d.first_disorder(d.arrival) else 'out of order at ' + d.first_disorder(d.arrival)}")
        if self.restart_seconds:
            ordered = sorted(self.restart_seconds)
            lines.append(f"  restart to ready: median {ordered[len(ordered) // 2]:.1f}s, "
                         f"max {ordered[-1]:.1f}s")
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


async def crash_run(lab: BridgedLab, pair: Pair, *, messages: int, kills: int,
                    rate: float = 8.0, seed: int | None = None,
                    settle_timeout: float = 180.0) -> CrashReport:
    """Alice and Bob each send messages/2 messages at rate/2 per second while the bridge is
    SIGKILLed `kills` times at random moments (some while it is still starting up) and
    restarted; then each sends a marker, and everything is compared."""
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
    during_startup = 0

    async def chaos() -> None:
        nonlocal during_startup
        # Kill moments spread over the sending time, each at a random point of its slot.
        slot = duration / kills
        began = time.monotonic()
        for k in range(kills):
            moment = began + slot * k + rng.uniform(0.2, 0.8) * slot
            await asyncio.sleep(max(0.0, moment - time.monotonic()))  # a chosen moment
            await lab.bridge.stop(signal.SIGKILL)
            await asyncio.sleep(rng.uniform(0.0, 1.5))  # down for a while
            if rng.random() < 0.3:  # killed again while starting up
                starting = asyncio.create_task(lab.bridge.start())
                await asyncio.sleep(rng.uniform(0.3, 2.0))
                if not starting.done():
                    await lab.bridge.stop(signal.SIGKILL)
                    during_startup += 1
                try:
                    await starting
                except (RuntimeError, TimeoutError):
                    pass  # it was killed before it was ready
            t0 = time.monotonic()
            if lab.bridge.process is None or lab.bridge.process.returncode is not None:
                await lab.bridge.start()
            restarts.append(time.monotonic() - t0)

    began = time.monotonic()
    await asyncio.gather(
        _send_all(pair.alice, pair.alice_room, a_bodies, interval, a2b),
        _send_all(pair.bob, pair.bob_room, b_bodies, interval, b2a),
        chaos())
    # A last message each way: the bridge handles a room's events in order, so once the
    # marker is through, everything before it has been relayed (or never will be).
    markers = (f"a2b {tag} marker", f"b2a {tag} marker")
    await pair.alice.send_text(pair.alice_room, markers[0])
    await pair.bob.send_text(pair.bob_room, markers[1])
    a2b.sent.append(markers[0])
    b2a.sent.append(markers[1])
    await asyncio.gather(wait_for_body(pair.bob, pair.bob_room, markers[0], settle_timeout),
                         wait_for_body(pair.alice, pair.alice_room, markers[1], settle_timeout))
    seconds = time.monotonic() - began
    a2b.received = relayed_bodies(pair.bob, pair.bob_room, f"a2b {tag}")
    b2a.received = relayed_bodies(pair.alice, pair.alice_room, f"b2a {tag}")
    log_text = lab.bridge.log_path.read_bytes()[log_offset:].decode(errors="replace")
    adopted = sum(int(n) for n in re.findall(r": (\d+) (?:earlier|trailing) event\(s\) were "
                                             r"never delivered", log_text))
    conn = await asyncpg.connect(lab.database_uri)
    try:
        unhandled = await conn.fetchval("SELECT count(*) FROM inbox WHERE handled_at IS NULL")
        for direction in (a2b, b2a):
            rows = await conn.fetch("SELECT event_id FROM inbox WHERE event_id = ANY($1::text[])"
                                    " ORDER BY seq", list(direction.event_ids))
            direction.arrival = [direction.event_ids[r["event_id"]] for r in rows]
        relayed_rows = await conn.fetchval("SELECT count(*) FROM relayed")
    finally:
        await conn.close()
    return CrashReport(messages + 2, kills, during_startup, seconds, [a2b, b2a], restarts,
                       adopted, unhandled, relayed_rows)
