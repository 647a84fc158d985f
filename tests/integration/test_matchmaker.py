"""Interests, language, fallback, cooldowns and contention, through Pairing over real
PostgreSQL (rooms are a recording fake)."""
from __future__ import annotations

import asyncio
import time

import pytest

from bridge.matching import claim, queue
from bridge.portal import NEXT
from bridge.store import conversations, recent_pairs, users
from tests.integration.test_pairing import (FakePortal, config, live_partner,  # noqa: F401
                                            new_users, settle, setup)


async def person(pool, name: str, tags=(), lang=None) -> str:
    user_id = f"@{name}:example.org"
    await users.ensure(pool, user_id)
    await users.set_tags(pool, user_id, tuple(tags))
    await users.set_lang(pool, user_id, lang)
    return user_id


async def conversation_of(pool, user_id: str):
    side = await conversations.live_side_of(pool, user_id)
    return await conversations.get(pool, side.conversation_id) if side else None


async def until(predicate, timeout: float = 10.0) -> None:
    """Wait for a condition the database will reach (checked every 20 ms)."""
    async def poll() -> None:
        while not await predicate():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), timeout)


@pytest.fixture
async def timer(setup):
    """The match timer of the Pairing under test, running."""
    pairing = setup[0]
    task = asyncio.create_task(pairing.run_match_timer())
    yield task
    task.cancel()


async def test_a_shared_interest_goes_ahead_of_an_earlier_stranger(pool, setup):
    pairing, portal, _ = setup
    ann = await person(pool, "ann", ["cinema", "cats"])
    bob = await person(pool, "bob")
    cat = await person(pool, "cat", ["cinema"])
    for user_id in (ann, bob, cat):
        await pairing.enqueue(user_id)
    assert await live_partner(pool, ann) == cat
    assert await queue.is_waiting(pool, bob)  # ann was still choosy when bob came
    conv = await conversation_of(pool, ann)
    assert conv.shared_tags == ("cinema",)
    assert [(s.interests_unmet, s.language_unmet) for s in conv.sides] == [(False, False)] * 2


async def test_a_newcomer_with_preferences_is_not_paired_at_once_with_a_stranger_lacking_them(
        pool, setup):
    """Inside their preference window a newcomer only takes a partner who shares a tag and
    their language, even when someone flexible is waiting."""
    pairing, _, _ = setup
    anyone = await person(pool, "anyone")
    jazz = await person(pool, "jazz", ["jazz"])
    french = await person(pool, "french", lang="fr")
    for user_id in (anyone, jazz, french):
        assert await pairing.enqueue(user_id)
    assert await queue.count(pool) == 3
    fan = await person(pool, "fan", ["jazz"])
    await pairing.enqueue(fan)
    assert await live_partner(pool, fan) == jazz  # not `anyone`, who came first
    fr_fan = await person(pool, "fr_fan", ["jazz"], "fr")
    await pairing.enqueue(fr_fan)
    assert await live_partner(pool, fr_fan) is None  # french lacks jazz; anyone lacks both


async def test_language_is_preferred_the_same_way(pool, setup):
    pairing, _, _ = setup
    fr1, en, fr2 = (await person(pool, "fr1", lang="fr"), await person(pool, "en", lang="en"),
                    await person(pool, "fr2", lang="fr"))
    for user_id in (fr1, en, fr2):
        await pairing.enqueue(user_id)
    assert await live_partner(pool, fr1) == fr2
    assert await queue.is_waiting(pool, en)


async def test_fallback_pairs_with_anyone_when_the_window_closes_and_says_so(pool, setup, timer):
    pairing, _, _ = setup
    pairing.config["bridge.matching.fallback_after"] = 0.5
    jazz = await person(pool, "jazz", ["jazz"], "fr")
    anyone = await person(pool, "anyone")
    began = time.monotonic()
    await pairing.enqueue(jazz)
    await pairing.enqueue(anyone)
    assert await live_partner(pool, jazz) is None
    # Nobody new arrives: the timer alone closes the window and pairs them.
    await until(lambda: live_partner(pool, jazz))
    assert time.monotonic() - began >= 0.45
    conv = await conversation_of(pool, jazz)
    assert conv.side_of(jazz).interests_unmet and conv.side_of(jazz).language_unmet
    assert not conv.side_of(anyone).interests_unmet and conv.shared_tags == ()


async def test_fallback_survives_a_restart(pool, setup, config):
    """Waiters queued by one bridge process are paired by the timer of another (the times
    live in the database)."""
    from bridge.background import Background
    from bridge.pairing import Pairing
    first, _, _ = setup
    first.config["bridge.matching.fallback_after"] = 0.3
    a, b = await person(pool, "a", ["x"]), await person(pool, "b", ["y"])
    await first.enqueue(a)
    await first.enqueue(b)

    async def notify_dm(*_):
        pass
    background = Background()
    second = Pairing(pool, first.config, FakePortal(), notify_dm, background)
    task = asyncio.create_task(second.run_match_timer())
    try:
        await until(lambda: live_partner(pool, a))
    finally:
        task.cancel()
        await background.wait(timeout=5)
    assert await live_partner(pool, a) == b


async def test_a_new_waiter_is_claimed_by_the_timer_if_its_process_died(pool, setup, timer,
                                                                         monkeypatch):
    monkeypatch.setattr(queue, "SAFETY_NET_SECONDS", 0.2)
    pairing, _, _ = setup
    a, b = await person(pool, "a"), await person(pool, "b")
    # Queued, but the process died before claiming: nobody looked for their partner.
    assert await queue.enqueue(pool, a) and await queue.enqueue(pool, b)
    pairing.matchmaker.wake.set()
    await until(lambda: live_partner(pool, a))
    assert await live_partner(pool, a) == b


async def test_partners_who_just_talked_are_not_paired_again_until_the_cooldown(pool, setup,
                                                                               timer):
    pairing, _, _ = setup
    pairing.config["bridge.matching.rematch_cooldown"] = 0.6
    a, b = await person(pool, "a"), await person(pool, "b")
    await pairing.enqueue(a)
    await pairing.enqueue(b)
    conv = await conversation_of(pool, a)
    await pairing.end(conv.id, NEXT, a, requeue=[a, b])
    assert await live_partner(pool, a) is None  # both waiting, but kept apart
    assert await queue.count(pool) == 2
    c = await person(pool, "c")
    await pairing.enqueue(c)
    assert await live_partner(pool, c) == a  # the longer-waiting one
    await pairing.end((await conversation_of(pool, c)).id, NEXT, c, requeue=[a])
    # a and b meet again only once their cooldown is over, with no one new arriving.
    await until(lambda: live_partner(pool, a))
    assert await live_partner(pool, a) == b
    # Expired pairs are pruned (the table stays small).
    await until(lambda: pool.fetchval("SELECT count(*) = 0 FROM recent_pairs"))


async def test_a_blocked_pair_never_meets(pool, setup):
    """Blocks plug in as a pair kept apart for good."""
    pairing, _, _ = setup
    a, b, c = await person(pool, "a"), await person(pool, "b"), await person(pool, "c")
    await recent_pairs.avoid(pool, a, b)
    await pairing.enqueue(a)
    await pairing.enqueue(b)
    await pairing.match()
    assert await queue.count(pool) == 2
    await recent_pairs.release_expired(pool)
    await pairing.match()
    assert await queue.count(pool) == 2
    await pairing.enqueue(c)
    assert await live_partner(pool, c) == a


async def test_new_preferences_apply_while_waiting_keeping_the_place(pool, setup):
    pairing, _, _ = setup
    early = await person(pool, "early", ["chess"])
    late = await person(pool, "late")
    await pairing.enqueue(early)
    await pairing.enqueue(late)
    seq = await pool.fetchval("SELECT seq FROM waiting WHERE user_id = $1", late)
    assert await live_partner(pool, late) is None
    await users.set_tags(pool, late, ("chess",))
    assert await pairing.preferences_changed(late) is True
    assert await live_partner(pool, late) == early
    assert (await conversation_of(pool, late)).shared_tags == ("chess",)
    # Not waiting: nothing to refresh.
    assert await pairing.preferences_changed(await person(pool, "idle")) is False
    other = await person(pool, "other", ["go"])
    await pairing.enqueue(other)
    await users.set_tags(pool, other, ("go", "tea"))
    await pairing.preferences_changed(other)
    assert await pool.fetchval("SELECT seq FROM waiting WHERE user_id = $1", other) > seq
    keys = await pool.fetch("SELECT tag FROM waiting_keys WHERE user_id = $1 ORDER BY tag", other)
    assert [k["tag"] for k in keys] == ["go", "tea"]


async def test_a_user_who_is_chatting_is_not_queued(pool, setup):
    pairing, _, _ = setup
    a, b = await new_users(pool, 2)
    await pairing.enqueue(a)
    await pairing.enqueue(b)
    assert await pairing.enqueue(a) is False
    assert not await queue.is_waiting(pool, a)


async def test_a_stale_waiting_row_is_dropped_by_the_claim_that_meets_it(pool, setup):
    pairing, _, _ = setup
    a, b, c = await new_users(pool, 3)
    await pairing.enqueue(a)
    await pairing.enqueue(b)
    # A row that slipped in for a user already chatting (what the enqueue check prevents).
    await pool.execute("INSERT INTO waiting (user_id, next_check) VALUES ($1, NULL)", a)
    await pool.execute("INSERT INTO waiting_keys (user_id, tag, lang, seq, flexible) "
                       "SELECT user_id, '', '', seq, true FROM waiting WHERE user_id = $1", a)
    await pairing.enqueue(c)
    assert not await queue.is_waiting(pool, a)
    assert await queue.is_waiting(pool, c)
    assert await live_partner(pool, a) == b


async def test_a_claim_waits_out_a_partner_another_claim_holds(pool, setup):
    """The partner's row is locked by another process's claim that then lets go: the claim
    retries and gets them (it must not settle for 'nobody')."""
    pairing, _, _ = setup
    a = await person(pool, "a", ["rare"])
    b = await person(pool, "b", ["rare"])
    assert await queue.enqueue(pool, a, 3600)
    async with pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        await conn.execute("SELECT 1 FROM waiting WHERE user_id = $1 FOR UPDATE", a)
        enqueued = asyncio.create_task(pairing.enqueue(b))

        async def met_the_lock() -> bool:  # (counted: the concurrency tests rely on it)
            return pairing.matchmaker.contended > 0
        await until(met_the_lock)
        assert not enqueued.done()  # retrying, not settled for 'nobody'
        await tr.rollback()
    assert await asyncio.wait_for(enqueued, 5) is True
    assert await live_partner(pool, b) == a


async def test_a_claim_that_keeps_meeting_contention_leaves_it_to_the_timer(pool, setup,
                                                                            monkeypatch):
    from bridge.matching import matchmaker
    monkeypatch.setattr(matchmaker, "CLAIM_PATIENCE_SECONDS", 0.1)
    pairing, _, _ = setup
    a, b = await person(pool, "a", ["rare"]), await person(pool, "b", ["rare"])
    assert await queue.enqueue(pool, a, 3600)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM waiting WHERE user_id = $1 FOR UPDATE", a)
        assert await pairing.enqueue(b) is True
    assert await live_partner(pool, b) is None
    due_in = await pool.fetchval(
        "SELECT extract(epoch FROM next_check - now()) FROM waiting WHERE user_id = $1", b)
    assert 0 < due_in <= 1
    await pairing.match()
    assert await claim.due(pool, 10) == []
    assert await live_partner(pool, b) is None  # not due yet
    await pool.execute("UPDATE waiting SET next_check = now() WHERE user_id = $1", b)
    await pairing.match()
    assert await live_partner(pool, b) == a
    await settle(pairing)


async def test_a_user_started_twice_at_once_in_two_processes_is_never_waiting_and_chatting(
        database_uri, config):
    """The same !start handled by two bridge processes at the same moment (one pairing the
    newcomer at once, the other queueing them): never both waiting and chatting."""
    import asyncpg
    from bridge.background import Background
    from bridge.pairing import Pairing

    async def notify_dm(*_):
        pass
    pools = [await asyncpg.create_pool(database_uri, min_size=1, max_size=6) for _ in range(2)]
    backgrounds = [Background() for _ in pools]
    try:
        pairings = [Pairing(p, config, FakePortal(), notify_dm, bg)
                    for p, bg in zip(pools, backgrounds)]
        waiting = await new_users(pools[0], 150, prefix="w")
        for user_id in waiting:
            await pairings[0].enqueue(user_id)
        newcomers = await new_users(pools[0], 150, prefix="n")
        results = await asyncio.wait_for(asyncio.gather(
            *(p.enqueue(user_id) for user_id in newcomers for p in pairings)), timeout=120)
        # Each newcomer was taken once: by one process or the other.
        assert sum(results) >= len(newcomers)
        pool = pools[0]
        assert await pool.fetchval(
            "SELECT count(*) FROM waiting w JOIN conversation_sides s "
            "ON s.user_id = w.user_id AND s.live") == 0
        assert await pool.fetchval(
            "SELECT count(*) FROM (SELECT user_id FROM conversation_sides WHERE live "
            "GROUP BY user_id HAVING count(*) > 1) d") == 0
        live = await pool.fetchval("SELECT count(*) FROM conversation_sides WHERE live")
        assert live + await queue.count(pool) == 300
    finally:
        for bg in backgrounds:
            await bg.wait(timeout=10)
        for p in pools:
            await p.close()


async def test_a_newcomer_is_not_paired_while_another_process_is_queueing_them(pool, setup):
    """Process A is queueing x (its transaction not yet committed) when process B takes
    x's !start too, with a partner free: B waits for A, then sees x waiting."""
    pairing, _, _ = setup
    partner, x = await new_users(pool, 2)
    await pairing.enqueue(partner)
    async with pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        assert await queue.enqueue(conn, x, 0)
        arrival = asyncio.create_task(pairing.enqueue(x))
        # B blocks on A's lock on x (rather than pairing x at once).
        await until(lambda: pool.fetchval(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"))
        assert not arrival.done()
        await tr.commit()
    assert await asyncio.wait_for(arrival, 5) is False  # already waiting
    assert await live_partner(pool, x) is None and await queue.is_waiting(pool, x)


async def test_newcomers_arriving_at_once_are_paired_as_if_one_after_the_other(pool, setup):
    """Arrivals in the same moment share one transaction (bridge.matching.batcher): each still gets
    the partner the policy gives when they come one after the other, the same user arriving
    twice is paired once, an unknown user is refused, and nobody is lost."""
    import random

    from bridge.matching import policy
    pairing, _, _ = setup
    rnd = random.Random(5)
    tags, langs = ["cinema", "jazz", "chess"], [None, None, "en", "fr"]
    waiting = []
    for i in range(30):
        user_id = await person(pool, f"w{i}", rnd.sample(tags, rnd.choice([0, 1, 1, 2])),
                               rnd.choice(langs))
        assert await queue.enqueue(pool, user_id, 3600)
        waiting.append(queue.waiter(await pool.fetchrow(
            "SELECT user_id, seq, tags, lang, flexible FROM waiting WHERE user_id = $1",
            user_id)))
    newcomers = []
    for i in range(30):
        t, lang = rnd.sample(tags, rnd.choice([0, 1, 1, 2])), rnd.choice(langs)
        newcomers.append(policy.Waiter(await person(pool, f"n{i}", t, lang), claim.NEWEST,
                                         frozenset(t), lang, not (t or lang)))
    # What one arrival after the other would give (the window is long: choosy stay choosy).
    expected, left = {}, list(waiting)
    for me in newcomers:
        partner = policy.choose_partner(me, left)
        left = [w for w in left if partner is None or w.user_id != partner.user_id]
        expected[me.user_id] = partner.user_id if partner else None
    assert 5 < sum(p is not None for p in expected.values()) < 30
    pairing.config["bridge.matching.fallback_after"] = 3600
    arrivals = [me.user_id for me in newcomers] + [newcomers[0].user_id, "@ghost:example.org"]
    results = await asyncio.gather(*(pairing.enqueue(user_id) for user_id in arrivals))
    assert results[:30] == [True] * 30
    assert results[30:] == [False, False]  # already chatting or waiting; unknown
    for me in newcomers:
        if expected[me.user_id] is not None:
            assert await live_partner(pool, me.user_id) == expected[me.user_id]
    # The unmatched joined the queue, where their claims paired them if anyone could be.
    rows = await pool.fetch("SELECT user_id, seq, tags, lang, flexible FROM waiting")
    left = [queue.waiter(r) for r in rows]
    assert any(w.user_id.startswith("@n") for w in left)
    for me in left:
        if me.user_id.startswith("@n"):
            assert policy.choose_partner(me, left) is None
    live = await pool.fetchval("SELECT count(*) FROM conversation_sides WHERE live")
    assert live + len(rows) == 60
    assert await pool.fetchval(
        "SELECT count(*) FROM (SELECT user_id FROM conversation_sides WHERE live "
        "GROUP BY user_id HAVING count(*) > 1) d") == 0
    await settle(pairing)


async def test_one_match_failing_to_start_opening_leaves_the_batch_s_others_opening(pool, config):
    """Matches made together are each handed on (opened) even when one hand-over fails."""
    from bridge.matching.matchmaker import Matchmaker
    handed: list[int] = []

    async def on_matched(conversation_id: int) -> None:
        handed.append(conversation_id)
        if len(handed) == 1:
            raise RuntimeError("the portal is away")
    matchmaker = Matchmaker(pool, config, on_matched)
    waiting = [await person(pool, f"w{i}") for i in range(3)]
    for user_id in waiting:
        assert await queue.enqueue(pool, user_id, 0)
    newcomers = [await person(pool, f"n{i}") for i in range(3)]
    assert await asyncio.gather(*(matchmaker.arrive(u, 0) for u in newcomers)) == [True] * 3
    assert len(handed) == 3
    assert [await live_partner(pool, u) for u in newcomers] == waiting
