"""Drills for several bridge processes behind HAProxy (start_bridged_lab(processes=N)):
who owns which partitions (read from pg_locks), a crowd that churns through conversations
and must never be in two at once nor miss, double or reorder a message, and pairs relaying
numbered messages while processes are killed (-9) or stopped (SIGTERM) and restarted, with
take-over times. Shared by tests/e2e/test_cluster.py and bench/cluster.py.
"""
from __future__ import annotations

import asyncio
import random
import re
import signal
import time
from dataclasses import dataclass, field

import asyncpg

from bridge.cluster.ownership import MEMBER, NAMESPACE
from bridge.cluster.partitions import partition_of

from .bridged import BridgedLab
from .client import LabClient, LabClientError, Seen
from .faults import Direction, Pair, relayed_bodies, unhandled_settles, wait_for_body
from .figures import summary

GHOST = re.compile(r"@_stranger_[a-z0-9]+:")
APPLICATION_PREFIX = "stranger-bridge "  # bridge/cluster/ownership.py names its sessions so

# Partition -> instance, from the sessions holding the locks (ownership.py's keys).
_OWNERS = f"""SELECT l.objid::bigint AS partition, a.application_name AS name
              FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                AND l.classid = {NAMESPACE}::oid AND l.objid::bigint < {MEMBER}
                AND l.database = (SELECT oid FROM pg_database
                                  WHERE datname = current_database())"""


async def owners(conn: asyncpg.Connection) -> dict[int, str]:
    """Which process (its bridge.instance) holds each owned partition, as PostgreSQL says."""
    return {row["partition"]: row["name"].removeprefix(APPLICATION_PREFIX)
            for row in await conn.fetch(_OWNERS)}


async def wait_owned(conn: asyncpg.Connection, partitions: int, by: set[str],
                     even: bool = True, timeout: float = 60) -> float:
    """Until every partition is owned by one of the processes `by` (in even shares when
    `even`); returns the seconds waited. Polls pg_locks: it has no change notification."""
    started = time.monotonic()
    while True:
        held = await owners(conn)
        shares = [sum(1 for name in held.values() if name == p) for p in by]
        if (len(held) == partitions and set(held.values()) <= by
                and (not even or max(shares) - min(shares) <= 1)):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"partitions not owned by {sorted(by)} after {timeout}s: "
                               f"{len(held)} owned, shares {dict(zip(by, shares))}")
        await asyncio.sleep(0.02)  # a poll of pg_locks


def bridge_errors(lab: BridgedLab, offsets: list[int] | None = None) -> list[str]:
    """ERROR lines in every process's log (after `offsets`, one per process)."""
    lines = []
    for i, bridge in enumerate(lab.bridges):
        data = bridge.log_path.read_bytes()[offsets[i] if offsets else 0:]
        lines += [line for line in data.decode(errors="replace").splitlines()
                  if " ERROR " in line]
    return lines


def log_offsets(lab: BridgedLab) -> list[int]:
    return [b.log_path.stat().st_size if b.log_path.exists() else 0 for b in lab.bridges]


async def settled(lab: BridgedLab, timeout: float = 120) -> dict[str, int]:
    """Once nothing is left to do: conversations not ended, sides not cleaned up, events
    not handled (what is left at the end)."""
    conn = await asyncpg.connect(lab.database_uri)
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = {
                "live_conversations": await conn.fetchval(
                    "SELECT count(*) FROM conversations WHERE state <> 'ended'"),
                "sides_not_closed": await conn.fetchval(
                    "SELECT count(*) FROM conversation_sides WHERE closed_at IS NULL"),
                "unhandled_events": await conn.fetchval(
                    "SELECT count(*) FROM inbox WHERE handled_at IS NULL")}
            if not any(left.values()) or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.2)  # polling a condition, with a deadline
    finally:
        await conn.close()


# -- the crowd --------------------------------------------------------------------------------

CROWD_MESSAGES = 3  # each side of each conversation sends this many, then it may end
CROWD_BODY = re.compile(r"^cx (\d+) (\d+) (\d+)$")  # user, conversation, sequence


@dataclass
class CrowdConversation:
    room: str
    invite_index: int  # where the ghost's invite is in the user's client log
    end_index: int | None = None  # where this user saw (or made) the end
    sent: list[str] = field(default_factory=list)


class CrowdUser:
    """Churns: !start, accept, send CROWD_MESSAGES while receiving the partner's as many,
    then ends (!next, leave or !stop) and again. Ends only once everything both ways has
    been sent and the partner's has arrived, so every message must arrive."""

    def __init__(self, index: int, lab: BridgedLab, client: LabClient, dm: str,
                 rng: random.Random, interval: float, errors: list[str]) -> None:
        self.index, self.lab, self.client, self.dm = index, lab, client, dm
        self.rng, self.interval, self.errors = rng, interval, errors
        self.conversations: list[CrowdConversation] = []
        self.mark = client.mark()
        self.withdrawn = 0
        self.no_shows = 0

    async def _command(self, text: str, *expect: str, timeout: float = 60) -> Seen:
        mark = self.client.mark()
        await self.client.send_text(self.dm, text)
        return await self.client.wait_for_event(
            lambda s: s.room_id == self.dm and s.sender == self.lab.bot_id
            and any(e in (s.body or "") for e in expect), timeout=timeout, since=mark,
            description=f"reply to {text}")

    def _invite(self, s: Seen) -> bool:
        return (s.section == "invite" and s.membership == "invite"
                and s.state_key == self.client.user_id and GHOST.match(s.sender or "") is not None)

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            try:
                await self._conversation(until)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - every failure is reported
                self.errors.append(f"user {self.index}: {type(e).__name__}: {e}"[:400])
                if self.conversations and self.conversations[-1].end_index is None:
                    self.conversations[-1].end_index = self.client.mark()
                self.mark = self.client.mark()
                await self._leave_last()

    async def _conversation(self, until: float) -> None:
        mark = self.mark  # since the last end: ending by !next or leaving queues us again
        await self._command("!start", "Looking", "already in the queue", "already chatting")
        try:
            invite = await self.client.wait_for_event(
                self._invite, since=mark, timeout=max(0.0, until - time.monotonic()) + 10,
                description="ghost invite")
        except TimeoutError:
            return  # nobody left to meet
        conv = CrowdConversation(invite.room_id, invite.index)
        self.conversations.append(conv)
        room = conv.room
        try:
            await self.client.join(room)
        except LabClientError as e:  # accepted after the invite timeout: taken back
            if "no servers" not in str(e) and e.errcode != "M_FORBIDDEN":
                raise
            self.withdrawn += 1
            conv.end_index = self.mark = self.client.mark()
            return
        opened = await self.client.wait_for_event(
            lambda s: (s.room_id == room and any(t in (s.body or "") for t in (
                "now chatting", "didn't join the chat in time", "has disconnected")))
            or (s.room_id == self.dm and "didn't accept the chat invite" in (s.body or "")),
            timeout=90, since=invite.index, description="chat opened")
        if "now chatting" not in (opened.body or ""):
            self.no_shows += 1
            conv.end_index = opened.index
            self.mark = self.client.mark()
            await self._leave_last()
            return
        number = len(self.conversations)
        partner = asyncio.create_task(self._partners_messages(room, invite.index))
        try:
            for seq in range(CROWD_MESSAGES):
                await asyncio.sleep(self.rng.uniform(0.5, 1.5) * self.interval)  # pacing
                body = f"cx {self.index} {number} {seq}"
                await self.client.send_text(room, body)
                conv.sent.append(body)
            ended_by_partner = await asyncio.wait_for(partner, 90)
        finally:
            partner.cancel()
        conv.end_index = self.mark = self.client.mark()
        if ended_by_partner:
            await self._leave_last()
            return
        how = "!stop" if time.monotonic() > until else self.rng.choice(
            ["!next", "!next", "leave", "!stop"])
        if how == "leave":
            await self._leave_last()
        else:
            await self.client.send_text(room, how)

    async def _partners_messages(self, room: str, since: int) -> bool:
        """Until the partner's CROWD_MESSAGES have arrived; then True if the partner has
        already ended too. The chat ending before they all arrived is a failure."""
        count, pos, disconnected = 0, since, False
        while count < CROWD_MESSAGES or not disconnected:
            try:
                seen = await self.client.wait_for_event(
                    lambda s: s.room_id == room and s.section == "timeline", since=pos,
                    timeout=90 if count < CROWD_MESSAGES else 0.01)
            except TimeoutError:
                if count >= CROWD_MESSAGES:
                    return False
                raise
            pos = seen.index + 1
            body = seen.body or ""
            if CROWD_BODY.match(body) and GHOST.match(seen.sender or ""):
                count += 1
            elif "has disconnected" in body:
                if count < CROWD_MESSAGES:
                    raise AssertionError(f"chat {room} ended after {count} of the partner's "
                                         f"{CROWD_MESSAGES} messages")
                disconnected = True
        return True

    async def _leave_last(self) -> None:
        if self.conversations:
            try:
                await self.client.leave(self.conversations[-1].room)
            except Exception:  # noqa: BLE001 - already out of it
                pass

    def received_in(self, room: str) -> list[str]:
        return [s.body for s in self.client.log
                if s.room_id == room and s.section == "timeline"
                and GHOST.match(s.sender or "") and CROWD_BODY.match(s.body or "")]

    def overlaps(self) -> list[str]:
        """Invites that came while another conversation of this user had not ended, as
        this user's client saw them (its log's order)."""
        found, seen_rooms = [], set()
        invites = []
        for s in self.client.log:
            if self._invite(s) and s.room_id not in seen_rooms:
                seen_rooms.add(s.room_id)
                invites.append(s)
        ends = {c.room: c.end_index for c in self.conversations}
        for earlier, later in zip(invites, invites[1:]):
            if earlier.room_id not in ends:
                continue  # never accepted (came after the user's last round)
            end = ends[earlier.room_id]
            if end is None or end > later.index:
                found.append(f"user {self.index}: invited to {later.room_id} (log {later.index})"
                             f" while in {earlier.room_id} (ended at log {end})")
        return found


@dataclass
class CrowdReport:
    users: int
    seconds: float
    conversations: int
    sent: int
    received: int
    lost: list[str]
    duplicated: list[str]
    reordered: list[str]
    misrouted: list[str]
    overlaps: list[str]
    errors: list[str]
    bridge_errors: list[str]
    left: dict[str, int]
    per_process_matched: dict[str, int]

    def summary(self) -> str:
        return "\n".join([
            f"{self.users} users for {self.seconds:.0f}s: {self.conversations} conversations, "
            f"{self.sent} messages sent, {self.received} relayed; lost {len(self.lost)}, "
            f"duplicated {len(self.duplicated)}, reordered {len(self.reordered)}, misrouted "
            f"{len(self.misrouted)}; two chats at once: {len(self.overlaps)}",
            f"  conversations matched per process: "
            f"{self.per_process_matched}",
            f"  left at the end: {self.left}; errors: harness {len(self.errors)}, "
            f"bridge logs {len(self.bridge_errors)}",
            *[f"    {line[:300]}" for line in (self.errors + self.bridge_errors + self.lost
                                               + self.duplicated + self.reordered
                                               + self.misrouted + self.overlaps)[:10]]])


async def crowd_run(lab: BridgedLab, users: list[tuple[LabClient, str]], *, seconds: float,
                    interval: float = 1.5, arrival: float = 5.0, seed: int = 1) -> CrowdReport:
    rng = random.Random(seed)
    errors: list[str] = []
    offsets = log_offsets(lab)
    crowd = [CrowdUser(i, lab, client, dm, random.Random(rng.random()), interval, errors)
             for i, (client, dm) in enumerate(users)]
    started = time.monotonic()
    until = started + seconds

    async def staggered(user: CrowdUser) -> None:
        await asyncio.sleep(rng.uniform(0, arrival))  # arriving over a few seconds
        await user.run(until)
    await asyncio.gather(*(staggered(u) for u in crowd))
    elapsed = time.monotonic() - started
    for user in crowd:  # out of the queue (their last chat has ended: see _conversation)
        try:
            await user._command("!stop", "left the queue", "not chatting", "ended the chat",
                                "not in the queue", "aren't")
        except Exception as e:  # noqa: BLE001
            errors.append(f"user {user.index}: final !stop: {e}"[:300])
    left = await settled(lab)
    # Every conversation's messages, each way, exactly once and in order in one room.
    sent = {(u.index, n + 1): c.sent for u in crowd for n, c in enumerate(u.conversations)
            if c.sent}
    found: dict[tuple[int, int], list[tuple[str, list[str]]]] = {}
    misrouted = []
    for user in crowd:
        for conv in user.conversations:
            bodies = user.received_in(conv.room)
            keys = {tuple(int(x) for x in CROWD_BODY.match(b).groups()[:2]) for b in bodies}
            if len(keys) > 1:
                misrouted.append(f"{conv.room} got messages of {sorted(keys)}")
            for key in keys:
                found.setdefault(key, []).append(
                    (conv.room, [b for b in bodies if b.startswith(f"cx {key[0]} {key[1]} ")]))
    lost, duplicated, reordered = [], [], []
    for key, bodies in sent.items():
        rooms = found.get(key, [])
        got = [b for _, received in rooms for b in received]
        if len(rooms) > 1:
            misrouted.append(f"{key} relayed into {len(rooms)} rooms")
        lost += [f"{b} (lost)" for b in bodies if b not in got]
        duplicated += [f"{b} x{got.count(b)}" for b in set(got) if got.count(b) > 1]
        if list(dict.fromkeys(got)) != [b for b in bodies if b in got]:
            reordered.append(f"{key}: {got} != {bodies}")
    per_process = {}
    for i, bridge in enumerate(lab.bridges):
        text = bridge.log_path.read_bytes()[offsets[i]:].decode(errors="replace")
        per_process[lab.instance_of(i)] = text.count("Matched conversation")
    return CrowdReport(
        users=len(users), seconds=elapsed,
        conversations=sum(1 for u in crowd for c in u.conversations if c.sent),
        sent=sum(len(b) for b in sent.values()),
        received=sum(len(received) for rooms in found.values() for _, received in rooms),
        lost=lost, duplicated=duplicated, reordered=reordered, misrouted=misrouted,
        overlaps=[o for u in crowd for o in u.overlaps()], errors=errors,
        bridge_errors=bridge_errors(lab, offsets), left=left, per_process_matched=per_process)


# -- pairs relaying numbered messages while processes die ---------------------------------------

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
