"""Pairs relaying numbered messages while bridge processes are killed (-9) or stopped
(SIGTERM) and restarted: lost, duplicated, reordered, and each take-over's times. Used by
tests/e2e/test_cluster.py and bench/cluster.py.
"""
from __future__ import annotations

import asyncio
import random
import signal
import time
from dataclasses import dataclass, field

import asyncpg

from bridge.cluster.partitions import partition_of

from .bridged import BridgedLab
from .client import LabClient
from .cluster import bridge_errors, log_offsets, owners, wait_owned
from .faults import Direction, Pair, relayed_bodies, unhandled_settles, wait_for_body
from .figures import summary


@dataclass
class Takeover:
    process: str
    how: str  # "kill" (SIGKILL) or "stop" (SIGTERM)
    rooms: int  # rooms of the drill's pairs the process owned when it went
    partitions_s: float  # signal -> every partition owned again by the others (pg_locks)
    first_relay_s: float | None = None  # signal -> first relay seen of a message sent after
    # it from a room the process owned (None: no such room)
    restart_s: float = 0.0  # restart -> ready
    # The longest a message from its rooms sent from 1 s before to 2 s after the signal took
    # to be seen by the partner (send answered -> seen): what a user waited at worst.
    worst_latency_s: float | None = None


@dataclass
class DrillReport:
    directions: list[Direction]
    takeovers: list[Takeover]
    seconds: float
    unhandled_left: int
    bridge_errors: list[str]
    stuck: list[str] = field(default_factory=list)  # the events left unhandled
    latencies_ms: list[float] = field(default_factory=list)  # relay latency of each message

    @property
    def sent(self) -> int:
        return sum(len(d.sent) for d in self.directions)

    @property
    def lost(self) -> int:
        return sum(len(d.missing) for d in self.directions)

    @property
    def duplicated(self) -> int:
        return sum(len(d.received) - len(set(d.received)) for d in self.directions)

    @property
    def reordered(self) -> int:
        """Messages that arrived after one sent later than them (per direction)."""
        count = 0
        for d in self.directions:
            rank = {b: i for i, b in enumerate(d.sent)}
            highest = -1
            for body in dict.fromkeys(d.received):
                if body in rank:
                    if rank[body] < highest:
                        count += 1
                    highest = max(highest, rank[body])
        return count

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.reordered == 0 \
            and self.unhandled_left == 0

    def takeover_figures(self) -> dict[str, dict]:
        out = {"partitions": [t.partitions_s * 1000 for t in self.takeovers],
               "first_relay": [t.first_relay_s * 1000 for t in self.takeovers
                               if t.first_relay_s is not None],
               "worst_latency": [t.worst_latency_s * 1000 for t in self.takeovers
                                 if t.worst_latency_s is not None]}
        return {name: {**summary(samples), "max_ms": round(max(samples), 1)}
                for name, samples in out.items() if samples}

    def summary(self) -> str:
        lines = [f"{self.sent} messages in {len(self.directions)} directions over "
                 f"{self.seconds:.0f}s, {len(self.takeovers)} processes gone: lost {self.lost}, "
                 f"duplicated {self.duplicated}, reordered {self.reordered}, inbox left "
                 f"unhandled {self.unhandled_left}, bridge ERROR lines {len(self.bridge_errors)}"]
        for t in self.takeovers:
            relay = "-" if t.first_relay_s is None else f"{t.first_relay_s:.2f}s"
            worst = "-" if t.worst_latency_s is None else f"{t.worst_latency_s:.2f}s"
            lines.append(f"  {t.how} {t.process} ({t.rooms} rooms of the drill): every "
                         f"partition owned again after {t.partitions_s:.2f}s, first relay from "
                         f"its rooms of a message sent after it {relay}, worst relay latency "
                         f"from them around it {worst}; back up (ready) in {t.restart_s:.1f}s")
        if self.takeovers:
            figures = self.takeover_figures()
            for name, f in figures.items():
                lines.append(f"  {name} take-over: median {f['median_ms'] / 1000:.2f}s, "
                             f"p95 {f['p95_ms'] / 1000:.2f}s, max {f['max_ms'] / 1000:.2f}s")
        lines += [f"  left unhandled: {line}" for line in self.stuck[:5]]
        if self.latencies_ms:
            f = summary(self.latencies_ms)
            lines.append(f"  relay latency (send answered -> seen by the partner) through it "
                         f"all: median {f['median_ms']:.0f} ms, p95 {f['p95_ms']:.0f} ms, "
                         f"max {max(self.latencies_ms):.0f} ms")
        for d in self.directions:
            if not d.exactly_once_in_order:
                lines.append(f"  {d.name}: missing {d.missing[:5]}, duplicated "
                             f"{d.duplicated[:5]}, disorder {d.first_disorder()}")
        lines += [f"    {line[:300]}" for line in self.bridge_errors[:5]]
        return "\n".join(lines)


async def make_pairs(lab: BridgedLab, count: int) -> list[Pair]:
    """`count` chatting pairs, each a user on hs1 and one on hs2 (paired one pair at a time,
    so who meets whom is known)."""
    ready = await asyncio.gather(*(lab.ready_user(i % 2, f"Kd{i}") for i in range(2 * count)))
    pairs = []
    for i in range(count):
        (alice, alice_dm), (bob, bob_dm) = ready[2 * i], ready[2 * i + 1]
        alice_room, bob_room = await lab.pair(alice, alice_dm, bob, bob_dm)
        pairs.append(Pair(alice, alice_room, bob, bob_room))
    return pairs


async def process_drill(lab: BridgedLab, pairs: list[Pair], *, messages: int, events: int,
                        rate: float, how: str = "kill", partitions: int = 64,
                        seed: int = 1) -> DrillReport:
    """`messages` numbered messages over every direction of `pairs` at `rate` per second
    in all, while `events` times a process (each time another: 0, 1, 2, 0, ...) is killed
    with -9 (`how` "kill") or stopped with SIGTERM ("stop"), then restarted once the others
    own its partitions. Measures each take-over both ways (see Takeover)."""
    rng = random.Random(seed)
    offsets = log_offsets(lab)
    directions: list[tuple[Direction, LabClient, str, LabClient, str]] = []
    for p, pair in enumerate(pairs):
        directions.append((Direction(f"kd{p}a "), pair.alice, pair.alice_room, pair.bob,
                           pair.bob_room))
        directions.append((Direction(f"kd{p}b "), pair.bob, pair.bob_room, pair.alice,
                           pair.alice_room))
    per_direction = max(1, messages // len(directions))
    interval = len(directions) / rate
    sent_at: dict[str, float] = {}  # body -> when its send returned
    total_sent = [0]
    conn = await asyncpg.connect(lab.database_uri)
    names = {lab.instance_of(i) for i in range(len(lab.bridges))}

    async def send_all(d: Direction, client: LabClient, room: str) -> None:
        await asyncio.sleep(rng.uniform(0, interval))  # the directions out of step
        for n in range(per_direction):
            started = time.monotonic()
            body = f"{d.name}{n}"
            d.event_ids[await client.send_text(room, body)] = body
            sent_at[body] = time.monotonic()
            d.sent.append(body)
            total_sent[0] += 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))  # pacing

    takeovers: list[tuple[Takeover, float, set[str]]] = []

    async def drill() -> None:
        total = per_direction * len(directions)
        for k in range(events):
            while total_sent[0] < total * (k + 1) / (events + 1):
                await asyncio.sleep(0.05)  # until the next point in the stream
            victim = k % len(lab.bridges)
            name = lab.instance_of(victim)
            held = {p for p, owner in (await owners(conn)).items() if owner == name}
            rooms = {room for _, _, room, _, _ in directions
                     if partition_of(room, partitions) in held}
            signalled = time.monotonic()
            if how == "kill":
                await lab.bridges[victim].stop(signal.SIGKILL)
            else:
                stopping = asyncio.create_task(lab.bridges[victim].stop(signal.SIGTERM))
            await wait_owned(conn, partitions, names - {name}, even=False)
            takeover = Takeover(name, how, len(rooms), time.monotonic() - signalled)
            if how != "kill":
                await stopping
            takeovers.append((takeover, signalled, rooms))
            restarting = time.monotonic()
            await lab.start_process(victim)
            takeover.restart_s = time.monotonic() - restarting
            await wait_owned(conn, partitions, names)

    started = time.monotonic()
    try:
        await asyncio.gather(drill(), *(send_all(d, c, r) for d, c, r, _, _ in directions))
        # A last message each way: once it is through, all before it was relayed or lost.
        for d, client, room, _, _ in directions:
            marker = f"{d.name}end"
            await client.send_text(room, marker)
            d.sent.append(marker)
        await asyncio.gather(*(wait_for_body(to, to_room, f"{d.name}end", 120)
                               for d, _, _, to, to_room in directions))
        seconds = time.monotonic() - started
        latencies = []  # send answered -> seen by the partner, each message's first copy
        for d, _, _, to, to_room in directions:
            d.received = relayed_bodies(to, to_room, d.name)
            first = {}
            for seen in to.log:
                if (seen.room_id == to_room and seen.section == "timeline"
                        and seen.body in sent_at and seen.body.startswith(d.name)):
                    first.setdefault(seen.body, seen.at - sent_at[seen.body])
            latencies += [seconds * 1000 for seconds in first.values()]
        # The first relay, after each signal, of a message sent after it from its rooms.
        by_room = {room: (d, to, to_room) for d, _, room, to, to_room in directions}
        for takeover, signalled, rooms in takeovers:
            firsts = []
            for room in rooms:
                d, to, to_room = by_room[room]
                later = {b for b in d.sent if sent_at.get(b, 0) > signalled}
                arrivals = [s.at for s in to.log if s.room_id == to_room
                            and s.section == "timeline" and s.body in later]
                if arrivals:
                    firsts.append(min(arrivals) - signalled)
            takeover.first_relay_s = min(firsts) if firsts else None
            waits = []
            for room in rooms:
                d, to, to_room = by_room[room]
                around = {b for b in d.sent if signalled - 1 <= sent_at.get(b, 0) <= signalled + 2}
                arrived: dict[str, float] = {}
                for seen in to.log:
                    if seen.room_id == to_room and seen.body in around:
                        arrived.setdefault(seen.body, seen.at)
                waits += [arrived[b] - sent_at[b] for b in arrived]
            takeover.worst_latency_s = max(waits) if waits else None
        # (Other events may still be on their way: memberships, the markers' neighbours.)
        unhandled = await unhandled_settles(lab, timeout=30)
        if unhandled:
            stuck = [f"{r['room_id']} (partition {partition_of(r['room_id'], partitions)}, "
                     f"{r['type']}, received {r['age']:.1f}s ago)" for r in await conn.fetch(
                         """SELECT room_id, event->>'type' AS type,
                                   extract(epoch FROM now() - received_at) AS age
                            FROM inbox WHERE handled_at IS NULL""")]
            held = await owners(conn)
            stuck = [f"{line}, owner {held.get(int(line.split('partition ')[1].split(',')[0]))}"
                     for line in stuck]
    finally:
        await conn.close()
    return DrillReport([d for d, *_ in directions], [t for t, _, _ in takeovers], seconds,
                       unhandled, bridge_errors(lab, offsets), stuck if unhandled else [],
                       latencies)
