"""Load: many real users on the two lab homeservers churning through the bridge — agree,
start, accept, chat, then leave, !next or !stop, and again — for a while; then everyone
stops and the bridge must have cleaned up every room and conversation it made. Used by
tests/e2e/test_load.py (small) and bench/load.py (200+ users, several minutes).

Synapse is the bottleneck here (about 20-25 sends/s per homeserver on 2 cores, and a
createRoom costs several sends), so users chat at a human pace: `message_interval`.
"""
from __future__ import annotations

import asyncio
import os
import random
import re
import statistics
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
import asyncpg
from ruamel.yaml import YAML

from .bridged import BridgedLab
from .client import LabClient, LabClientError, Seen
from .figures import percentile

GHOST = re.compile(r"@_stranger_[a-z0-9]+:")
BODY = re.compile(r"^ld (\d+) (\d+) ([0-9.]+)$")


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)
    return {"n": len(ordered), "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99),
            "max_ms": round(ordered[-1] * 1000, 1)}


@dataclass
class LoadStats:
    relay_latency: list[float] = field(default_factory=list)
    reply_latency: list[float] = field(default_factory=list)
    match_latency: list[float] = field(default_factory=list)  # !start -> invite
    sent: int = 0
    received: int = 0
    conversations: int = 0
    ended: dict[str, int] = field(default_factory=lambda: {"leave": 0, "next": 0, "stop": 0,
                                                           "partner": 0, "no_show": 0})
    errors: list[str] = field(default_factory=list)
    duplicates: int = 0
    invites_withdrawn: int = 0  # accepted after the bridge's invite_timeout


class LoadUser:
    def __init__(self, index: int, lab: BridgedLab, client: LabClient, dm: str,
                 rng: random.Random, stats: LoadStats, interval: float,
                 think: tuple[float, float] = (0.0, 0.0), open_timeout: float = 90) -> None:
        self.index, self.lab, self.client, self.dm = index, lab, client, dm
        self.rng, self.stats, self.interval = rng, stats, interval
        self.think, self.open_timeout = think, open_timeout
        self.room: str | None = None
        self.seen_bodies: set[str] = set()

    def _in_room(self, text: str, room: str):
        return lambda s: s.room_id == room and text in (s.body or "")

    async def _command(self, text: str, *expect: str, timeout: float = 60) -> Seen:
        mark = self.client.mark()
        started = time.monotonic()
        await self.client.send_text(self.dm, text)
        seen = await self.client.wait_for_event(
            lambda s: s.room_id == self.dm and s.sender == self.lab.bot_id
            and any(e in (s.body or "") for e in expect), timeout=timeout, since=mark,
            description=f"reply to {text}")
        self.stats.reply_latency.append(time.monotonic() - started)
        return seen

    async def run(self, until: float) -> None:
        self.mark = self.client.mark()
        while time.monotonic() < until:
            try:
                await self._one_conversation(until)
                # A pause between chats, as people take (pacing the homeservers' load).
                pause = min(self.rng.uniform(*self.think), until - time.monotonic())
                if pause > 0:
                    await asyncio.sleep(pause)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                self.stats.errors.append(f"user {self.index}: {type(e).__name__}: {e}"[:300])
                self.mark = self.client.mark()
                await self._tidy()

    async def _one_conversation(self, until: float) -> None:
        # Since just before the last chat ended: ending it with !next or by leaving queues
        # the user again, and the next invite may come before any !start.
        mark = self.mark
        started = time.monotonic()
        await self._command("!start", "Looking", "already in the queue", "already chatting")
        # Past the end, an invite already on its way is still accepted (no one is left
        # waiting for a no-show), but no new one is waited for long.
        remaining = max(0.0, until - time.monotonic())
        try:
            room = await self.client.wait_for_invite(
                lambda s: GHOST.match(s.sender or "") is not None, since=mark,
                timeout=remaining + 5)
        except TimeoutError:
            return  # nobody left to meet before the end
        self.stats.match_latency.append(time.monotonic() - started)
        self.room = room
        try:
            await self.client.join(room)
        except LabClientError as e:
            # Accepted too late: the bridge took the invite back (its invite_timeout) and
            # its ghost left, so the room cannot be joined any more. Product behaviour.
            if "no servers" not in str(e) and e.errcode != "M_FORBIDDEN":
                raise
            self.stats.invites_withdrawn += 1
            self.mark = self.client.mark()
            self.room = None
            return
        opened = await self.client.wait_for_event(
            lambda s: (s.room_id == room and any(t in (s.body or "") for t in (
                "now chatting", "didn't join the chat in time", "has disconnected")))
            or (s.room_id == self.dm and "didn't accept the chat invite" in (s.body or "")),
            timeout=self.open_timeout, since=mark, description="chat opened")
        if "now chatting" not in (opened.body or ""):
            self.stats.ended["no_show"] += 1
            self.mark = self.client.mark()
            await self._tidy()
            return
        self.stats.conversations += 1
        ended_by_partner = self._watch_partner(room, mark)
        for seq in range(self.rng.randint(2, 4)):
            try:
                await asyncio.wait_for(asyncio.shield(ended_by_partner),
                                       self.rng.uniform(0.5, 1.5) * self.interval)
            except asyncio.TimeoutError:
                pass
            if ended_by_partner.done() or time.monotonic() > until:
                break
            await self.client.send_text(room, f"ld {self.index} {seq} {time.time():.6f}")
            self.stats.sent += 1
        self.mark = self.client.mark()
        if ended_by_partner.done():
            self.stats.ended["partner"] += 1
        else:
            how = self.rng.choice(["leave", "next", "next", "stop"])
            self.stats.ended[how] += 1
            if how == "leave":
                await self.client.leave(room)
                self.room = None
            else:
                await self.client.send_text(room, f"!{how}")
        ended_by_partner.cancel()
        await self._tidy()

    def _watch_partner(self, room: str, since: int) -> asyncio.Task:
        """Counts the partner's relayed messages (and their latency) until the chat ends."""
        async def watch() -> None:
            pos = since

            def relevant(s: Seen) -> bool:
                return s.room_id == room and s.section == "timeline"
            while True:
                seen = await self.client.wait_for_event(relevant, timeout=3600, since=pos)
                pos = seen.index + 1
                body = seen.body or ""
                match = BODY.match(body)
                if match and GHOST.match(seen.sender or ""):
                    if body in self.seen_bodies:
                        self.stats.duplicates += 1
                    self.seen_bodies.add(body)
                    self.stats.received += 1
                    self.stats.relay_latency.append(time.time() - float(match.group(3)))
                elif ("has disconnected" in body or "You have disconnected" in body
                      or (seen.membership == "leave" and GHOST.match(seen.state_key or ""))):
                    return
        return asyncio.create_task(watch())

    async def _tidy(self) -> None:
        """Leave the last chat room (if the bridge has not closed it for us already)."""
        room, self.room = self.room, None
        if room is not None:
            try:
                await self.client.leave(room)
            except Exception:  # noqa: BLE001 - already left, or kicked: nothing to tidy
                pass


@dataclass
class LoadReport:
    users: int
    seconds: float
    stats: LoadStats
    bridge_peak_rss_mib: float
    bridge_rss_mib: list[float]
    bridge_errors: list[str]
    live_conversations_left: int
    sides_not_cleaned_up: int
    ghosts_still_in_rooms: int
    ghost_leftovers: list[str]
    rooms_created_by_ghosts: int
    orphan_rooms: list[str]
    unhandled_inbox: int
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    # inbox received -> handled (the bridge's own time, including its sends to the homeserver)
    handling: dict[str, float] = field(default_factory=dict)

    @property
    def rss_figures(self) -> dict[str, float]:
        """The bridge's RSS samples (MiB): median, p95, peak, and how far the second half's
        peak rose over the first half's (a leak per conversation keeps it climbing)."""
        samples = self.bridge_rss_mib or [0.0]
        half = len(samples) // 2
        ordered = sorted(samples)
        return {"median": ordered[len(ordered) // 2], "p95": percentile(ordered, 0.95),
                "peak": ordered[-1], "second_half_over_first_half_peak": round(
                    max(samples[half:]) - max(samples[:half] or samples), 1)}

    def summary(self) -> str:
        s = self.stats
        lines = [
            f"{self.users} users for {self.seconds:.0f}s: {s.conversations} conversations "
            f"({s.conversations / self.seconds * 60:.1f}/min), {s.sent} messages sent, "
            f"{s.received} relayed ({s.received / self.seconds:.2f}/s), duplicates {s.duplicates}",
            f"  ended by: {s.ended}; invites taken back before they were accepted: "
            f"{s.invites_withdrawn}",
            f"  CPU seconds: {self.cpu_seconds} (of {self.seconds:.0f}s on 2 shared cores)",
            f"  relay latency {percentiles(s.relay_latency)}",
            f"  bridge handling (received -> handled, incl. its own sends) {self.handling}",
            f"  command reply latency {percentiles(s.reply_latency)}",
            f"  !start -> invite {percentiles(s.match_latency)}",
            f"  bridge RSS (MiB): {self.rss_figures}, samples "
            f"{self.bridge_rss_mib[:1] + self.bridge_rss_mib[len(self.bridge_rss_mib) // 2::max(1, len(self.bridge_rss_mib) // 4)]}",
            f"  errors: harness {len(s.errors)}, bridge log {len(self.bridge_errors)}",
            f"  after everyone stopped: live conversations {self.live_conversations_left}, "
            f"sides not cleaned up {self.sides_not_cleaned_up}, ghosts still in a room "
            f"{self.ghosts_still_in_rooms}, rooms made by ghosts {self.rooms_created_by_ghosts} "
            f"(orphans {len(self.orphan_rooms)}), inbox unhandled {self.unhandled_inbox}"]
        for leftover in self.ghost_leftovers[:5]:
            lines.append(f"    ghost still in a room: {leftover}")
        for error in (s.errors + self.bridge_errors)[:8]:
            lines.append(f"    {error[:240]}")
        return "\n".join(lines)


def _rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


async def ready_users(lab: BridgedLab, count: int, concurrency: int = 8
                      ) -> list[tuple[LabClient, str]]:
    """`count` users, alternating between the two homeservers, each agreed in a DM."""
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> tuple[LabClient, str]:
        async with limit:
            for attempt in range(3):
                try:
                    return await lab.ready_user(i % 2, f"Load{i}")
                except (TimeoutError, RuntimeError):
                    if attempt == 2:
                        raise
    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def load_run(lab: BridgedLab, users: list[tuple[LabClient, str]], *, seconds: float,
                   message_interval: float, think: tuple[float, float] = (0.0, 0.0),
                   arrival: float = 10.0, open_timeout: float = 90,
                   seed: int = 1) -> LoadReport:
    """Users arrive over `arrival` seconds, chat (a message every ~message_interval s, 2-4
    each), end the chat one way or another, pause `think` seconds, and start again."""
    rng = random.Random(seed)
    stats = LoadStats()
    pid = lab.bridge.process.pid
    log_offset = lab.bridge.log_path.stat().st_size
    load_users = [LoadUser(i, lab, client, dm, random.Random(rng.random()), stats,
                           message_interval, think, open_timeout)
                  for i, (client, dm) in enumerate(users)]
    rss: list[float] = []
    started = time.monotonic()
    until = started + seconds

    async def sample() -> None:
        while True:
            rss.append(_rss_mib(pid))
            await asyncio.sleep(1.0)  # a sampling period

    processes = {"bridge": pid, "hs1": lab.lab.homeservers[0]._process.pid,
                 "hs2": lab.lab.homeservers[1]._process.pid}
    cpu_before = {name: _cpu_seconds(p) for name, p in processes.items()}
    harness_before = time.process_time()
    sampler = asyncio.create_task(sample())
    try:
        # Users arrive over the first few seconds rather than all at once.
        async def staggered(user: LoadUser) -> None:
            await asyncio.sleep(rng.uniform(0, min(arrival, seconds / 2)))
            await user.run(until)
        await asyncio.gather(*(staggered(u) for u in load_users))
        elapsed = time.monotonic() - started
        # Everyone stops: out of their chat, out of the queue.
        await asyncio.gather(*(u._tidy() for u in load_users))
        await asyncio.gather(*(_quietly(u._command("!stop", "left the queue", "not chatting",
                                                   "ended the chat")) for u in load_users))
    finally:
        sampler.cancel()
    peak = _rss_mib(pid, "VmHWM")
    cpu = {name: round(_cpu_seconds(p) - cpu_before[name], 1) for name, p in processes.items()}
    cpu["harness (all the clients)"] = round(time.process_time() - harness_before, 1)
    report = await _inspect(lab, stats, len(users), elapsed, peak, rss, log_offset)
    report.cpu_seconds = cpu
    return report


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


async def _quietly(coro) -> None:
    try:
        await coro
    except Exception:  # noqa: BLE001 - best effort at the end
        pass


async def _inspect(lab: BridgedLab, stats: LoadStats, user_count: int, elapsed: float,
                   peak: float, rss: list[float], log_offset: int) -> LoadReport:
    """Once the bridge is idle: is everything it made either live or cleaned up?"""
    conn = await asyncpg.connect(lab.database_uri)
    try:
        deadline = time.monotonic() + 120
        while True:  # the last goodbyes and leaves may still be under way
            live = await conn.fetchval("SELECT count(*) FROM conversations WHERE state <> 'ended'")
            unclosed = await conn.fetchval(
                "SELECT count(*) FROM conversation_sides WHERE closed_at IS NULL")
            unhandled = await conn.fetchval("SELECT count(*) FROM inbox WHERE handled_at IS NULL")
            if (live == 0 and unclosed == 0 and unhandled == 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)  # polling a condition, with a deadline
        row = await conn.fetchrow(
            """SELECT count(*) AS n, percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP
                   (ORDER BY extract(epoch FROM handled_at - received_at)) AS q
               FROM inbox WHERE handled_at IS NOT NULL""")
        handling = {"n": row["n"], **{f"p{k}_ms": round(v * 1000, 1) for k, v in
                                      zip((50, 90, 99), row["q"] or ())}}
        sides = await conn.fetch(
            """SELECT s.ghost_id, s.room_id, s.conversation_id, s.joined_at IS NOT NULL AS joined,
                      s.closed_at IS NOT NULL AS closed, c.state, c.end_reason
               FROM conversation_sides s JOIN conversations c ON c.id = s.conversation_id""")
    finally:
        await conn.close()
    hs1 = lab.lab.homeservers[0]
    config = YAML().load(lab.bridge.config.read_text())
    as_token = config["appservice"]["as_token"]
    ghost_rooms = 0
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {as_token}"}) as session:
        limit = asyncio.Semaphore(8)

        leftovers: list[str] = []

        async def joined(side) -> int:
            async with limit:
                async with session.get(f"{hs1.client_url}/_matrix/client/v3/joined_rooms",
                                       params={"user_id": side["ghost_id"]}) as response:
                    rooms = (await response.json()).get("joined_rooms", [])
            if rooms:
                leftovers.append(f"conversation {side['conversation_id']} {side['state']} "
                                 f"({side['end_reason']}), user joined: {side['joined']}, "
                                 f"closed: {side['closed']}")
            return len(rooms)
        ghost_rooms = sum(await asyncio.gather(*(joined(s) for s in sides)))
    admin = await hs1.register_user(f"loadadmin{uuid.uuid4().hex[:6]}", admin=True)
    created: set[str] = set()
    async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {admin.access_token}"}) as session:
        start = 0
        while True:
            async with session.get(f"{hs1.client_url}/_synapse/admin/v1/rooms",
                                   params={"from": str(start), "limit": "500"}) as response:
                data = await response.json()
            for room in data.get("rooms", []):
                if GHOST.match(room.get("creator") or ""):
                    created.add(room["room_id"])
            if data.get("next_batch") is None:
                break
            start = data["next_batch"]
    recorded = {s["room_id"] for s in sides if s["room_id"]}
    text = lab.bridge.log_path.read_bytes()[log_offset:].decode(errors="replace")
    bridge_errors = [line for line in text.splitlines() if " ERROR " in line]
    return LoadReport(user_count, elapsed, stats, peak, rss, bridge_errors, live, unclosed,
                      ghost_rooms, leftovers, len(created), sorted(created - recorded), unhandled,
                      handling=handling)


def latency_summary(report: LoadReport) -> dict:
    s = report.stats
    return {"relay": percentiles(s.relay_latency), "reply": percentiles(s.reply_latency),
            "match": percentiles(s.match_latency),
            "relay_mean_ms": round(statistics.mean(s.relay_latency) * 1000, 1)
            if s.relay_latency else None}
