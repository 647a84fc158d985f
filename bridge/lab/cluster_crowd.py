"""A crowd churning through several bridge processes (start_bridged_lab(processes=N)): every
user in at most one conversation at a time, every message once, in order, in the right room.
Used by tests/e2e/test_cluster.py.
"""
from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field

from .bridged import BridgedLab
from .client import LabClient, LabClientError, Seen
from .cluster import GHOST, bridge_errors, log_offsets, settled

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
