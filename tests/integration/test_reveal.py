"""Mutual reveal over real PostgreSQL (bridge/reveal), with a portal that records what it is
asked to send: simultaneous !reveal from both sides (and from two bridge processes) reveal
exactly once to each; cancel races; a request survives a restart; a reveal decided before a
crash is delivered after it, once."""
from __future__ import annotations

import asyncio
import random

import pytest
from mautrix.errors import make_request_error

from bridge.reveal import store
from bridge.reveal.exchange import Reveal
from bridge.store import conversations, users

ROUNDS = 40


class Crash(ConnectionError):
    """The process dying mid-send (a transient error, as far as the dispatcher knows)."""


class RecordingPortal:
    """Records each send (ghost, room, content); yields to other tasks in the middle of
    one, as a real send does, so concurrent work interleaves."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict, str]] = []
        self.fail: Exception | None = None  # raised by the next sends while set

    async def send(self, ghost_id: str, room_id: str, event_type: str, content: dict,
                   txn: str) -> str:
        await asyncio.sleep(random.random() / 1000)
        if self.fail is not None:
            raise self.fail
        self.sent.append((ghost_id, room_id, content, txn))
        return f"$event{len(self.sent)}"

    async def language(self, room_id: str) -> str:
        return "en"  # (each room's language: the languages tests cover the others)

    def bodies(self, room_id: str) -> list[str]:
        return [content["body"] for _, room, content, _ in self.sent if room == room_id]


class World:
    def __init__(self, pool) -> None:
        self.pool = pool
        self.portal = RecordingPortal()
        self.dm: list[tuple[str, str, dict]] = []
        self.count = 0

    async def notify_dm(self, user_id: str, key: str, cause: str, **values: str) -> None:
        self.dm.append((user_id, key, values))

    def reveal(self) -> Reveal:
        """A bridge process's Reveal (a new one: another process, or after a restart)."""
        return Reveal(self.pool, self.portal, self.notify_dm, "!")

    async def chat(self):
        """A new active conversation between two new users: its two sides."""
        self.count += 1
        a, b = f"@ann{self.count}:one.example", f"@bob{self.count}:two.example"
        for user_id in (a, b):
            await users.ensure(self.pool, user_id)
        async with self.pool.acquire() as conn:
            cid = await conversations.create(conn, a, b, f"@_g{self.count}a:bridge",
                                             f"@_g{self.count}b:bridge", 60)
        for side in (0, 1):
            await conversations.set_room(self.pool, cid, side, f"!room{self.count}{side}")
            await conversations.mark_joined(self.pool, cid, side)
        assert await conversations.activate(self.pool, cid)
        conv = await conversations.get(self.pool, cid)
        return conv.sides

    def revealed_in(self, room_id: str, partner_id: str) -> list[str]:
        return [b for b in self.portal.bodies(room_id) if partner_id in b]


@pytest.fixture
def world(pool) -> World:
    return World(pool)


def reveal_told(world: World, ann, bob) -> tuple[int, int]:
    """How many times each side was told the other's ID, in their own room."""
    return (len(world.revealed_in(ann.room_id, bob.user_id)),
            len(world.revealed_in(bob.room_id, ann.user_id)))


def nothing_crossed(world: World, ann, bob) -> None:
    """Neither ID anywhere the bridge sent (rooms or DMs)."""
    for _, _, content, _ in world.portal.sent:
        assert ann.user_id not in str(content) and bob.user_id not in str(content)
    for _, _, values in world.dm:
        assert ann.user_id not in str(values) and bob.user_id not in str(values)


async def test_one_side_alone_reveals_nothing_and_the_partner_is_told_once(world):
    ann, bob = await world.chat()
    reveal = world.reveal()
    assert (await reveal.command(ann, "")).key == "reveal_requested"
    assert (await reveal.command(ann, "")).key == "reveal_already_requested"
    assert world.portal.bodies(bob.room_id) == [
        "Stranger would like to exchange contacts. Send !reveal to agree."]
    assert world.portal.bodies(ann.room_id) == []  # (the requester's answer is the reply)
    nothing_crossed(world, ann, bob)


async def test_both_agree_each_told_the_other_once(world):
    ann, bob = await world.chat()
    reveal = world.reveal()
    await reveal.command(ann, "")
    assert await reveal.command(bob, "") is None  # the reveal notice is the answer
    assert reveal_told(world, ann, bob) == (1, 1)
    [ann_notice] = [c for _, room, c, _ in world.portal.sent
                    if room == ann.room_id and bob.user_id in c["body"]]
    assert f'href="https://matrix.to/#/{bob.user_id}"' in ann_notice["formatted_body"]
    # Sent by each side's own ghost (the one in that side's room).
    assert {(g, r) for g, r, c, _ in world.portal.sent if "both agreed" in c["body"]} == {
        (ann.ghost_id, ann.room_id), (bob.ghost_id, bob.room_id)}
    assert (await reveal.command(ann, "")).key == "reveal_already_done"
    assert (await reveal.command(bob, "cancel")).key == "reveal_too_late"
    assert reveal_told(world, ann, bob) == (1, 1)
    assert await store.pending(world.pool) == []


async def test_simultaneous_reveals_from_two_processes_reveal_once_to_each(world):
    for _ in range(ROUNDS):
        ann, bob = await world.chat()
        # Each room's events are handled by whichever process holds it: two processes here.
        replies = await asyncio.gather(world.reveal().command(ann, ""),
                                       world.reveal().command(bob, ""))
        assert reveal_told(world, ann, bob) == (1, 1)
        # One of them asked first, the other revealed.
        assert sorted(str(r and r.key) for r in replies) == ["None", "reveal_requested"]
        for room_id, partner in ((ann.room_id, bob), (bob.room_id, ann)):
            bodies = world.portal.bodies(room_id)
            asked = [i for i, b in enumerate(bodies) if b.startswith("Stranger would like")]
            told = [i for i, b in enumerate(bodies) if partner.user_id in b]
            # The request notice at most once, and never after the reveal.
            assert len(asked) <= 1 and all(i < told[0] for i in asked)
    assert await store.pending(world.pool) == []


async def test_cancel_racing_the_partners_agreement(world):
    outcomes = set()
    for _ in range(ROUNDS):
        ann, bob = await world.chat()
        await world.reveal().command(ann, "")
        cancel, agree = await asyncio.gather(world.reveal().command(ann, "cancel"),
                                             world.reveal().command(bob, ""))
        if cancel.key == "reveal_cancelled":
            # The cancel came first: bob's !reveal is a request of his own; nothing revealed.
            assert agree.key == "reveal_requested"
            assert reveal_told(world, ann, bob) == (0, 0)
            nothing_crossed(world, ann, bob)
            assert world.portal.bodies(ann.room_id) == [
                "Stranger would like to exchange contacts. Send !reveal to agree."]
        else:
            assert (cancel.key, agree) == ("reveal_too_late", None)
            assert reveal_told(world, ann, bob) == (1, 1)
        outcomes.add(cancel.key)
    assert await store.pending(world.pool) == []
    # (Which one wins is up to the scheduler; both are correct. Seen both is not required.)
    assert outcomes <= {"reveal_cancelled", "reveal_too_late"}


async def test_cancel_tells_the_partner_and_a_new_request_is_new(world):
    ann, bob = await world.chat()
    reveal = world.reveal()
    await reveal.command(ann, "")
    assert (await reveal.command(ann, "cancel")).key == "reveal_cancelled"
    assert (await reveal.command(ann, "cancel")).key == "reveal_nothing_to_cancel"
    await reveal.command(ann, "")
    assert world.portal.bodies(bob.room_id) == [
        "Stranger would like to exchange contacts. Send !reveal to agree.",
        "Stranger took back their request to exchange contacts.",
        "Stranger would like to exchange contacts. Send !reveal to agree."]
    # Each its own transaction ID: a homeserver would not take the second for a resend.
    txns = [t for _, room, _, t in world.portal.sent if room == bob.room_id]
    assert len(set(txns)) == 3
    nothing_crossed(world, ann, bob)


async def test_a_request_dies_with_its_conversation(world):
    ann, bob = await world.chat()
    await world.reveal().command(ann, "")
    async with world.pool.acquire() as conn:
        await conversations.end(conn, ann.conversation_id, "stop", ann.user_id)
    # bob's !reveal in his (ended) chat room: nothing, whatever ann asked.
    assert (await world.reveal().command(bob, "")).key == "reveal_chat_ended"
    assert (await world.reveal().command(ann, "cancel")).key == "reveal_chat_ended"
    assert reveal_told(world, ann, bob) == (0, 0)
    nothing_crossed(world, ann, bob)
    # The two meet again in a new chat: the old request does not count there.
    async with world.pool.acquire() as conn:
        cid = await conversations.create(conn, ann.user_id, bob.user_id, "@_gx:b", "@_gy:b", 60)
    for side in (0, 1):
        await conversations.set_room(world.pool, cid, side, f"!again{side}")
        await conversations.mark_joined(world.pool, cid, side)
    await conversations.activate(world.pool, cid)
    again = (await conversations.get(world.pool, cid)).sides
    assert (await world.reveal().command(again[1], "")).key == "reveal_requested"


async def test_a_request_survives_a_restart(world):
    ann, bob = await world.chat()
    await world.reveal().command(ann, "")
    after_restart = world.reveal()
    await after_restart.deliver()  # start-up: nothing was left due
    assert await after_restart.command(bob, "") is None
    assert reveal_told(world, ann, bob) == (1, 1)


async def test_a_reveal_decided_before_a_crash_is_delivered_after_it_once(world):
    ann, bob = await world.chat()
    await world.reveal().command(ann, "")
    world.portal.fail = Crash("the bridge died while sending")
    with pytest.raises(Crash):
        await world.reveal().command(bob, "")
    assert reveal_told(world, ann, bob) == (0, 0)
    world.portal.fail = None
    # Start-up sends what is due, while the dispatcher handles bob's event again (it was
    # never marked handled): each side is still told once.
    restarted = world.reveal()
    results = await asyncio.gather(restarted.deliver(), restarted.command(bob, ""))
    assert reveal_told(world, ann, bob) == (1, 1)
    # bob's answer is the reveal (if this handling sent it) or that it was done already.
    assert results[1] is None or results[1].key == "reveal_already_done"
    assert await restarted.deliver() == []
    assert reveal_told(world, ann, bob) == (1, 1)


async def test_a_request_notice_lost_in_a_crash_is_sent_when_handled_again(world):
    ann, bob = await world.chat()
    world.portal.fail = Crash("the bridge died while sending")
    with pytest.raises(Crash):
        await world.reveal().command(ann, "")
    world.portal.fail = None
    # Handled again: the same answer as the first time, and bob told once.
    assert (await world.reveal().command(ann, "")).key == "reveal_requested"
    assert world.portal.bodies(bob.room_id) == [
        "Stranger would like to exchange contacts. Send !reveal to agree."]


async def test_a_reveal_decided_as_the_chat_ended_reaches_the_dm(world):
    ann, bob = await world.chat()
    await world.reveal().command(ann, "")
    world.portal.fail = Crash("the bridge died while sending")
    with pytest.raises(Crash):
        await world.reveal().command(bob, "")
    world.portal.fail = None
    async with world.pool.acquire() as conn:  # ended while the bridge was down
        await conversations.end(conn, ann.conversation_id, "left", ann.user_id)
    await world.reveal().deliver()
    assert reveal_told(world, ann, bob) == (0, 0)
    assert sorted((u, k, v["contact"]) for u, k, v in world.dm) == sorted([
        (ann.user_id, "reveal_done_dm", f"{bob.user_id} (https://matrix.to/#/{bob.user_id})"),
        (bob.user_id, "reveal_done_dm", f"{ann.user_id} (https://matrix.to/#/{ann.user_id})")])


async def test_a_ghost_gone_from_its_room_means_the_dm(world):
    ann, bob = await world.chat()
    await world.reveal().command(ann, "")
    world.portal.fail = make_request_error(403, "", "M_FORBIDDEN", "not in room")
    assert await world.reveal().command(bob, "") is None
    assert [(u, k) for u, k, _ in world.dm] == [(ann.user_id, "reveal_done_dm"),
                                                (bob.user_id, "reveal_done_dm")]
    assert await store.pending(world.pool) == []


async def test_bad_arguments_change_nothing(world):
    ann, bob = await world.chat()
    assert (await world.reveal().command(ann, "please now")).key == "reveal_usage"
    assert await store.pending(world.pool) == []
    assert world.portal.sent == []
