"""Both sides of a conversation leaving (or asking for someone new) in the same moment: each
is queued again, whoever's leave is handled first, also across bridge processes. A leave long
after the goodbye is tidying up and queues nobody. Real PostgreSQL, recording fake portal."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest

from bridge.background import Background
from bridge.commands import Commands
from bridge.matching import queue
from bridge.pairing import CLOCK_SKEW_ALLOWANCE, Pairing
from bridge.portal import LEFT, STOP
from bridge.store import conversations, users
from tests.integration.test_pairing import (FakePortal, config, now,  # noqa: F401 (fixtures)
                                            settle, setup)


async def chatting(pool, pairing: Pairing, a: str = "@a:example.org",
                   b: str = "@b:example.org") -> tuple[int, str, str]:
    """a and b, agreed, matched and both joined: an active conversation."""
    for user_id in (a, b):
        await users.ensure(pool, user_id)
        await users.agree(pool, user_id)
        await pairing.enqueue(user_id)
    conv_id = (await conversations.live_side_of(pool, a)).conversation_id
    await pairing.joined(conv_id, 0)
    await pairing.joined(conv_id, 1)
    assert (await conversations.get(pool, conv_id)).state == "active"
    return conv_id, a, b


def requeued(notified) -> list[str]:
    return sorted(user_id for user_id, key, _ in notified if key == "requeued")


@pytest.mark.parametrize("first", [0, 1])
async def test_the_second_leave_of_a_simultaneous_pair_is_requeued(pool, setup, first):
    pairing, _, notified = setup
    conv_id, a, b = await chatting(pool, pairing)
    leavers = [a, b] if first == 0 else [b, a]
    both_left_at = now()
    await pairing.leave(conv_id, leavers[0], both_left_at)
    # The conversation has ended (by the first) before the second's leave is handled.
    assert (await conversations.get(pool, conv_id)).ended_by == leavers[0]
    await pairing.leave(conv_id, leavers[1], both_left_at)
    assert await queue.is_waiting(pool, a) or await conversations.live_side_of(pool, a)
    assert await queue.is_waiting(pool, b) or await conversations.live_side_of(pool, b)
    assert requeued(notified) == sorted([a, b])
    # (Each told once: a retried leave event changes nothing.)
    await pairing.leave(conv_id, leavers[1], both_left_at)
    assert requeued(notified) == sorted([a, b])
    await settle(pairing)


async def test_leaves_at_once_both_requeued(pool, setup):
    pairing, _, notified = setup
    conv_id, a, b = await chatting(pool, pairing)
    at = now()
    await asyncio.gather(pairing.leave(conv_id, a, at), pairing.leave(conv_id, b, at))
    assert requeued(notified) == sorted([a, b])
    assert await queue.count(pool) == 2  # (recent partners: not paired with each other)
    await settle(pairing)


async def test_leaves_at_once_in_two_processes(database_uri, config):
    """Each leave handled by another bridge process (its own pool), at the same time."""
    pools = [await asyncpg.create_pool(database_uri, min_size=1, max_size=4) for _ in range(2)]
    notified: list[tuple[str, str, str]] = []

    async def notify_dm(user_id: str, key: str, cause: str) -> None:
        notified.append((user_id, key, cause))

    backgrounds = [Background(), Background()]
    pairings = [Pairing(p, config, FakePortal(), notify_dm, bg)
                for p, bg in zip(pools, backgrounds)]
    try:
        for round_ in range(10):
            a, b = f"@a{round_}:example.org", f"@b{round_}:example.org"
            conv_id, _, _ = await chatting(pools[0], pairings[0], a, b)
            at = now()
            await asyncio.gather(pairings[0].leave(conv_id, a, at),
                                 pairings[1].leave(conv_id, b, at))
            assert await queue.is_waiting(pools[0], a), f"round {round_}: {a} lost"
            assert await queue.is_waiting(pools[0], b), f"round {round_}: {b} lost"
            await queue.dequeue(pools[0], a)
            await queue.dequeue(pools[0], b)
        assert len(requeued(notified)) == 20
    finally:
        for bg in backgrounds:
            await bg.wait(timeout=10)
        for p in pools:
            await p.close()


async def test_a_leave_long_after_the_goodbye_is_tidying_up(pool, setup):
    pairing, _, notified = setup
    conv_id, a, b = await chatting(pool, pairing)
    await pairing.leave(conv_id, a, now())
    await conversations.mark_goodbye(pool, conv_id, 1)  # b was told a left
    told_at = (await conversations.get(pool, conv_id)).sides[1].goodbye_at
    await pairing.leave(conv_id, b, told_at + CLOCK_SKEW_ALLOWANCE + timedelta(seconds=5))
    assert not await queue.is_waiting(pool, b)
    assert requeued(notified) == [a]
    await settle(pairing)


async def test_a_leave_just_after_the_goodbye_within_the_clocks_allowance(pool, setup):
    pairing, _, notified = setup
    conv_id, a, b = await chatting(pool, pairing)
    await pairing.leave(conv_id, a, now())
    await conversations.mark_goodbye(pool, conv_id, 1)
    told_at = (await conversations.get(pool, conv_id)).sides[1].goodbye_at
    await pairing.leave(conv_id, b, told_at + CLOCK_SKEW_ALLOWANCE / 2)
    assert await queue.is_waiting(pool, b)
    assert requeued(notified) == sorted([a, b])
    await settle(pairing)


async def test_who_stopped_is_not_queued_by_their_own_leave(pool, setup):
    pairing, _, notified = setup
    conv_id, a, b = await chatting(pool, pairing)
    await pairing.end(conv_id, STOP, a)  # a: !stop, then closes their room
    await pairing.leave(conv_id, a, now())
    assert not await queue.is_waiting(pool, a)
    # b, whose partner stopped, left in the same moment: b wanted someone new.
    await pairing.leave(conv_id, b, now())
    assert await queue.is_waiting(pool, b)
    assert requeued(notified) == [b]
    await settle(pairing)


async def test_next_racing_the_partners_leave(pool, setup):
    pairing, _, notified = setup
    commands = Commands(pool, pairing)
    conv_id, a, b = await chatting(pool, pairing)
    await pairing.leave(conv_id, a, now())  # handled first
    # b's !next, sent in the same moment, finds the chat over: b is queued all the same.
    assert await commands.next(b) in ("queued", "requeued")
    assert await queue.is_waiting(pool, b)
    assert (await conversations.get(pool, conv_id)).end_reason == LEFT
    await settle(pairing)


async def test_next_from_both_at_once(pool, setup):
    pairing, _, _ = setup
    commands = Commands(pool, pairing)
    conv_id, a, b = await chatting(pool, pairing)
    replies = await asyncio.gather(commands.next(a), commands.next(b))
    assert all(r in ("queued", "requeued") for r in replies), replies
    assert await queue.is_waiting(pool, a) and await queue.is_waiting(pool, b)
    await settle(pairing)


async def test_next_when_both_end_in_the_same_transaction_window(pool, setup):
    """!next and the partner's leave, truly concurrent: whichever ends it, both queued."""
    pairing, _, notified = setup
    commands = Commands(pool, pairing)
    conv_id, a, b = await chatting(pool, pairing)
    await asyncio.gather(commands.next(a), pairing.leave(conv_id, b, now()))
    assert await queue.is_waiting(pool, a) and await queue.is_waiting(pool, b)
    await settle(pairing)
