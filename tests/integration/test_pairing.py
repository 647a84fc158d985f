"""Queueing, matching and ending, over real PostgreSQL with a recording fake portal."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from ruamel.yaml import YAML

from bridge.background import Background
from bridge.config import Config
from bridge.matching import queue
from bridge.pairing import Pairing
from bridge.portal import INVITE_TIMEOUT, LEFT, NEXT
from bridge.store import conversations, users


class FakePortal:
    """Records the room work pairing asks for; every invite is delivered."""

    def __init__(self) -> None:
        self.opened: list[int] = []
        self.closed: list[int] = []
        self.greeted: list[int] = []
        self.deliver = True

    async def open(self, conversation_id: int) -> bool:
        self.opened.append(conversation_id)
        return self.deliver

    async def close(self, conversation_id: int) -> None:
        self.closed.append(conversation_id)

    async def greet(self, conv) -> None:
        self.greeted.append(conv.id)


@pytest.fixture
def config(tmp_path) -> Config:
    path = tmp_path / "config.yaml"
    with open(path, "w") as f:
        YAML().dump({"appservice": {"as_token": "a" * 32, "hs_token": "h" * 32},
                     "homeserver": {"domain": "chat.example.net"}}, f)
    config = Config(str(path))
    config.load()
    config.update(save=False)
    config.validate()
    return config


@pytest.fixture
async def setup(pool, config):
    portal = FakePortal()
    notified: list[tuple[str, str, str]] = []

    async def notify_dm(user_id: str, key: str, cause: str) -> None:
        notified.append((user_id, key, cause))

    background = Background()
    pairing = Pairing(pool, config, portal, notify_dm, background)
    yield pairing, portal, notified
    await asyncio.wait_for(background.wait(timeout=10), timeout=15)


def now() -> datetime:
    return datetime.now(timezone.utc)


async def settle(pairing: Pairing) -> None:
    """Let the background room work spawned so far finish."""
    await asyncio.wait_for(pairing.background.wait(timeout=10), timeout=15)


async def new_users(pool, count: int, prefix: str = "u") -> list[str]:
    user_ids = [f"@{prefix}{i}:example.org" for i in range(count)]
    for user_id in user_ids:
        await users.ensure(pool, user_id)
    return user_ids


async def live_partner(pool, user_id: str) -> str | None:
    side = await conversations.live_side_of(pool, user_id)
    if side is None:
        return None
    conv = await conversations.get(pool, side.conversation_id)
    return conv.partner_of(side).user_id


async def test_two_users_are_matched_and_leave_the_queue(pool, setup):
    pairing, portal, _ = setup
    a, b = await new_users(pool, 2)
    assert await pairing.enqueue(a) is True
    assert await queue.is_waiting(pool, a)
    assert await pairing.enqueue(b) is True
    assert await queue.count(pool) == 0
    assert await live_partner(pool, a) == b
    assert await live_partner(pool, b) == a
    conv_id = (await conversations.live_side_of(pool, a)).conversation_id
    conv = await conversations.get(pool, conv_id)
    assert conv.state == "opening"
    assert [s.user_id for s in conv.sides] == [a, b]  # the one waiting longer is side 0
    # Each side's ghost is fresh, distinct, and a ghost of this bridge.
    assert conv.sides[0].ghost_id != conv.sides[1].ghost_id
    assert all(pairing.config.is_ghost(s.ghost_id) for s in conv.sides)
    await settle(pairing)
    assert portal.opened == [conv_id]


async def test_enqueue_twice_is_refused(pool, setup):
    pairing, _, _ = setup
    (a,) = await new_users(pool, 1)
    assert await pairing.enqueue(a) is True
    assert await pairing.enqueue(a) is False
    assert await queue.count(pool) == 1


async def test_a_third_user_waits(pool, setup):
    pairing, _, _ = setup
    a, b, c = await new_users(pool, 3)
    for user_id in (a, b, c):
        await pairing.enqueue(user_id)
    assert await live_partner(pool, a) == b
    assert await live_partner(pool, c) is None
    assert await queue.is_waiting(pool, c)
    assert await conversations.count_live(pool) == 1


async def test_end_with_requeue_matches_the_leaver_with_the_next_waiting(pool, setup):
    pairing, portal, _ = setup
    a, b, c = await new_users(pool, 3)
    for user_id in (a, b, c):
        await pairing.enqueue(user_id)
    first = (await conversations.live_side_of(pool, a)).conversation_id

    assert await pairing.end(first, NEXT, a, requeue=[a]) is True
    assert (await conversations.get(pool, first)).state == "ended"
    assert await live_partner(pool, a) == c
    assert await live_partner(pool, b) is None
    assert not await queue.is_waiting(pool, b)  # the partner is not queued for them
    assert await queue.count(pool) == 0

    # Ending again changes nothing and queues nobody.
    assert await pairing.end(first, NEXT, a, requeue=[b]) is False
    assert not await queue.is_waiting(pool, b)
    await settle(pairing)
    second = (await conversations.live_side_of(pool, a)).conversation_id
    assert portal.closed == [first]
    assert sorted(portal.opened) == [first, second]


async def test_end_with_requeue_and_nobody_waiting(pool, setup):
    pairing, _, _ = setup
    a, b = await new_users(pool, 2)
    await pairing.enqueue(a)
    await pairing.enqueue(b)
    conv_id = (await conversations.live_side_of(pool, a)).conversation_id
    await pairing.end(conv_id, NEXT, b, requeue=[b])
    assert await queue.is_waiting(pool, b)
    assert not await queue.is_waiting(pool, a)
    assert await conversations.count_live(pool) == 0


async def test_leave_requeues_the_leaver_and_tells_them(pool, setup):
    pairing, _, notified = setup
    a, b = await new_users(pool, 2)
    await pairing.enqueue(a)
    await pairing.enqueue(b)
    conv_id = (await conversations.live_side_of(pool, a)).conversation_id
    await pairing.leave(conv_id, b, now())
    assert (await conversations.get(pool, conv_id)).end_reason == LEFT
    assert await queue.is_waiting(pool, b)
    assert [(u, k) for u, k, _ in notified] == [(b, "requeued")]
    await pairing.leave(conv_id, b, now())  # a second leave (a retried event) is a no-op
    assert len(notified) == 1


async def test_joins_activate_and_greet_once(pool, setup):
    pairing, portal, _ = setup
    changed: list[int] = []

    async def on_change(conversation_id: int) -> None:
        changed.append(conversation_id)

    pairing.on_change = on_change
    a, b = await new_users(pool, 2)
    await pairing.enqueue(a)
    await pairing.enqueue(b)
    conv_id = (await conversations.live_side_of(pool, a)).conversation_id
    assert await pairing.joined(conv_id, 1) is False
    assert portal.greeted == []
    assert await pairing.joined(conv_id, 0) is True
    assert await pairing.joined(conv_id, 0) is False
    assert portal.greeted == [conv_id]
    assert changed == [conv_id]
    assert (await conversations.get(pool, conv_id)).state == "active"


async def test_expire_requeues_only_the_side_that_joined(pool, setup):
    pairing, _, notified = setup
    a, b = await new_users(pool, 2)
    await pairing.enqueue(a)
    await pairing.enqueue(b)
    conv_id = (await conversations.live_side_of(pool, a)).conversation_id
    await pairing.joined(conv_id, 0)  # a accepted, b never did

    await pairing.expire(conv_id)
    conv = await conversations.get(pool, conv_id)
    assert (conv.state, conv.end_reason, conv.ended_by) == ("ended", INVITE_TIMEOUT, None)
    assert await queue.is_waiting(pool, a)
    assert not await queue.is_waiting(pool, b)
    assert [(u, k) for u, k, _ in notified] == [(b, "invite_expired")]

    await pairing.expire(conv_id)  # expiring again does nothing
    assert len(notified) == 1


async def test_expire_activates_when_both_joined_but_nobody_activated(pool, setup):
    """Two joins recorded at the same moment can each miss the other; the invite deadline
    then finds both in and activates instead of ending."""
    pairing, portal, notified = setup
    a, b = await new_users(pool, 2)
    await pairing.enqueue(a)
    await pairing.enqueue(b)
    conv_id = (await conversations.live_side_of(pool, a)).conversation_id
    for side in (0, 1):
        await conversations.mark_joined(pool, conv_id, side)
    await pairing.expire(conv_id)
    assert (await conversations.get(pool, conv_id)).state == "active"
    assert portal.greeted == [conv_id]
    assert notified == [] and await queue.count(pool) == 0


async def test_expire_with_nobody_joined_requeues_nobody(pool, setup):
    pairing, _, notified = setup
    a, b = await new_users(pool, 2)
    await pairing.enqueue(a)
    await pairing.enqueue(b)
    conv_id = (await conversations.live_side_of(pool, a)).conversation_id
    await pairing.expire(conv_id)
    assert await queue.count(pool) == 0
    assert sorted((u, k) for u, k, _ in notified) == [(a, "invite_expired"),
                                                      (b, "invite_expired")]


async def test_expire_leaves_an_active_conversation_alone(pool, setup):
    pairing, _, notified = setup
    a, b = await new_users(pool, 2)
    await pairing.enqueue(a)
    await pairing.enqueue(b)
    conv_id = (await conversations.live_side_of(pool, a)).conversation_id
    await pairing.joined(conv_id, 0)
    await pairing.joined(conv_id, 1)
    await pairing.expire(conv_id)
    assert (await conversations.get(pool, conv_id)).state == "active"
    assert notified == []


async def test_undeliverable_invites_end_the_conversation(pool, setup):
    pairing, portal, notified = setup
    portal.deliver = False
    a, b = await new_users(pool, 2)
    await pairing.enqueue(a)
    await pairing.enqueue(b)
    await settle(pairing)  # open() fails in the background, which expires the match
    await settle(pairing)  # ... and close() runs for it
    conv_id = portal.opened[0]
    conv = await conversations.get(pool, conv_id)
    assert (conv.state, conv.end_reason) == ("ended", "invite_failed")
    assert portal.closed == [conv_id]
    assert {u for u, k, _ in notified if k == "invite_expired"} == {a, b}


async def test_invite_timer_expires_overdue_invites(pool, setup):
    pairing, _, notified = setup
    pairing.config["bridge.invite_timeout"] = 0
    a, b = await new_users(pool, 2)
    await pairing.enqueue(a)
    await pairing.enqueue(b)
    conv_id = (await conversations.live_side_of(pool, a)).conversation_id
    timer = asyncio.create_task(pairing.run_invite_timer())
    try:
        async def ended() -> None:
            while (await conversations.get(pool, conv_id)).state != "ended":
                await asyncio.sleep(0.02)
        await asyncio.wait_for(ended(), timeout=10)
    finally:
        timer.cancel()
    assert (await conversations.get(pool, conv_id)).end_reason == INVITE_TIMEOUT


async def test_concurrent_enqueues_match_everyone_exactly_once(pool, setup):
    pairing, portal, _ = setup
    user_ids = await new_users(pool, 200)
    results = await asyncio.wait_for(
        asyncio.gather(*(pairing.enqueue(user_id) for user_id in user_ids)), timeout=120)
    assert all(results)

    assert await queue.count(pool) == 0
    assert await pool.fetchval("SELECT count(*) FROM conversations") == 100
    assert await conversations.count_live(pool) == 100
    rows = await pool.fetch("SELECT user_id, count(*) AS n FROM conversation_sides "
                            "WHERE live GROUP BY user_id")
    assert len(rows) == 200 and all(r["n"] == 1 for r in rows)
    assert await pool.fetchval(
        "SELECT count(*) FROM conversation_sides a JOIN conversation_sides b "
        "ON a.conversation_id = b.conversation_id AND a.side < b.side "
        "WHERE a.user_id = b.user_id") == 0
    await settle(pairing)
    assert len(portal.opened) == 100 and len(set(portal.opened)) == 100


async def test_concurrent_matchers_from_several_pools(database_uri, config):
    """Several bridge processes (here: several pools) matching the same queue at once."""
    import asyncpg

    pools = [await asyncpg.create_pool(database_uri, min_size=1, max_size=5) for _ in range(4)]
    backgrounds = [Background() for _ in pools]
    try:
        async def notify_dm(*_):
            pass
        pairings = [Pairing(p, config, FakePortal(), notify_dm, bg)
                    for p, bg in zip(pools, backgrounds)]
        user_ids = await new_users(pools[0], 101, prefix="m")
        await asyncio.wait_for(asyncio.gather(
            *(pairings[i % 4].enqueue(user_id) for i, user_id in enumerate(user_ids))),
            timeout=120)
        assert await queue.count(pools[0]) == 1
        assert await conversations.count_live(pools[0]) == 50
        assert await pools[0].fetchval(
            "SELECT count(DISTINCT user_id) FROM conversation_sides WHERE live") == 100
    finally:
        for bg in backgrounds:
            await bg.wait(timeout=10)
        for p in pools:
            await p.close()
