"""The SQL claim chooses exactly the partner the pure policy chooses, on random queues."""
from __future__ import annotations

import random

from bridge.matching import policy
from bridge.matching import claim, queue
from bridge.matching.matchmaker import Matchmaker
from bridge.store import recent_pairs, users

TAGS = ["cinema", "jazz", "chess", "cats", "rock music", "tea"]
LANGS = [None, None, "en", "fr", "de"]


async def fill(pool, rnd: random.Random, size: int) -> tuple[list[policy.Waiter], set]:
    """A random queue: random preferences, some still choosy, some flexible; some pairs
    kept apart (recent partners or blocks). Returns the waiters and the avoided pairs."""
    await pool.execute("TRUNCATE waiting, waiting_keys, recent_pairs, users CASCADE")
    waiters = []
    for i in range(size):
        user_id = f"@r{i}:x"
        tags = tuple(sorted(rnd.sample(TAGS, rnd.choice([0, 0, 1, 1, 2, 3]))))
        lang = rnd.choice(LANGS)
        await users.ensure(pool, user_id)
        await users.set_tags(pool, user_id, tags)
        await users.set_lang(pool, user_id, lang)
        # A long window: choosy until widened below.
        assert await queue.enqueue(pool, user_id, fallback_after=3600)
        choosy = bool(tags or lang)
        if choosy and rnd.random() < 0.4:
            async with pool.acquire() as conn:
                await claim.widen(conn, user_id)
            choosy = False
        seq = await pool.fetchval("SELECT seq FROM waiting WHERE user_id = $1", user_id)
        waiters.append(policy.Waiter(user_id, seq, frozenset(tags), lang, not choosy))
    avoided = set()
    for _ in range(size // 3):
        a, b = rnd.sample(waiters, 2)
        await recent_pairs.avoid(pool, a.user_id, b.user_id,
                                 until=rnd.choice(["infinity", "2999-01-01"]))
        avoided.add((a.user_id, b.user_id))
    # An expired pair is no obstacle.
    a, b = rnd.sample(waiters, 2)
    if (a.user_id, b.user_id) not in avoided and (b.user_id, a.user_id) not in avoided:
        await recent_pairs.avoid(pool, a.user_id, b.user_id, until="2000-01-01")
    return waiters, avoided


async def sql_partner(pool, me: policy.Waiter) -> str | None:
    async with pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        try:
            locked, _ = await claim.lock_self(conn, me.user_id)
            assert locked == me
            partner = await claim.lock_partner(conn, me, policy.probes(me))
            found_any = await claim.any_candidate(conn, me, policy.probes(me))
            assert found_any == (partner is not None)
            return partner.user_id if partner else None
        finally:
            await tr.rollback()


async def test_sql_claim_equals_the_policy_on_random_queues(pool):
    rnd = random.Random(4)
    checked = found = 0
    for _ in range(25):
        waiters, avoided = await fill(pool, rnd, rnd.randint(2, 24))
        avoid = policy.avoid_pairs(avoided)
        for me in waiters:
            expected = policy.choose_partner(me, waiters, avoid)
            got = await sql_partner(pool, me)
            assert got == (expected.user_id if expected else None), (me, waiters, avoided)
            checked += 1
            found += got is not None
    # The random queues exercise both outcomes plentifully.
    assert checked > 200 and 0.2 < found / checked < 0.9


async def test_many_equal_candidates_beyond_the_per_probe_limit(pool):
    """More compatible waiters than one look-up fetches, the first ones kept apart from the
    claimant: the claim still finds the next one."""
    await users.ensure(pool, "@me:x")
    await users.set_tags(pool, "@me:x", ("jazz",))
    others = [f"@o{i:02}:x" for i in range(claim.CANDIDATES_PER_PROBE + 3)]
    for user_id in others:
        await users.ensure(pool, user_id)
        await users.set_tags(pool, user_id, ("jazz",))
        await queue.enqueue(pool, user_id, fallback_after=3600)
    for user_id in others[:claim.CANDIDATES_PER_PROBE + 1]:
        await recent_pairs.avoid(pool, "@me:x", user_id)
    await queue.enqueue(pool, "@me:x", fallback_after=3600)
    me = policy.Waiter("@me:x", await pool.fetchval(
        "SELECT seq FROM waiting WHERE user_id = '@me:x'"), frozenset({"jazz"}), None, False)
    assert await sql_partner(pool, me) == others[claim.CANDIDATES_PER_PROBE + 1]


async def newcomers_for(pool, rnd: random.Random, waiters, avoided: set, count: int
                        ) -> list[policy.Waiter]:
    """Users about to arrive (not queued), some kept apart from some waiters."""
    newcomers = []
    for i in range(count):
        user_id = f"@n{i}:x"
        tags = tuple(sorted(rnd.sample(TAGS, rnd.choice([0, 0, 1, 1, 2, 3]))))
        lang = rnd.choice(LANGS)
        await users.ensure(pool, user_id)
        await users.set_tags(pool, user_id, tags)
        await users.set_lang(pool, user_id, lang)
        flexible = not (tags or lang) or rnd.random() < 0.3  # (fallback_after 0: anyone)
        newcomers.append(policy.Waiter(user_id, claim.NEWEST, frozenset(tags), lang, flexible))
        for other in rnd.sample(waiters, min(len(waiters), rnd.choice([0, 0, 1, 2]))):
            await recent_pairs.avoid(pool, user_id, other.user_id)
            avoided.add((user_id, other.user_id))
    return newcomers


async def test_a_batch_of_newcomers_gets_the_policy_s_partners_one_after_the_other(pool):
    """The batched short cut for arrivals (several look-ups at once, again for those whose
    find was taken) pairs each newcomer exactly as looking one after the other would."""
    rnd = random.Random(11)
    checked = found = clashes = 0
    for _ in range(25):
        waiters, avoided = await fill(pool, rnd, rnd.randint(2, 24))
        newcomers = await newcomers_for(pool, rnd, waiters, avoided, rnd.randint(1, 8))
        avoid = policy.avoid_pairs(avoided)
        expected, left = [], list(waiters)
        for me in newcomers:
            partner = policy.choose_partner(me, left, avoid)
            left = [w for w in left if partner is None or w.user_id != partner.user_id]
            expected.append((me.user_id, partner.user_id if partner else None))
        async with pool.acquire() as conn:
            tr = conn.transaction()
            await tr.start()
            try:
                async with counting(claim, "lock_partners") as rounds:
                    got = await Matchmaker._find_partners(conn, newcomers)
            finally:
                await tr.rollback()
        assert [(me.user_id, p.user_id if p else None) for me, p in got] == expected, (
            newcomers, waiters, avoided)
        checked += len(newcomers)
        found += sum(p is not None for _, p in got)
        clashes += rounds[0] > 1
    assert checked > 80 and 0.2 < found / checked < 0.95 and clashes > 3


class counting:
    """Counts the calls of module.name while in use."""

    def __init__(self, module, name: str) -> None:
        self.module, self.name, self.calls = module, name, [0]

    async def __aenter__(self):
        original = self.original = getattr(self.module, self.name)

        async def counted(*args, **kwargs):
            self.calls[0] += 1
            return await original(*args, **kwargs)
        setattr(self.module, self.name, counted)
        return self.calls

    async def __aexit__(self, *_):
        setattr(self.module, self.name, self.original)


async def test_the_claim_uses_the_indexes(pool):
    """Each look-up is an index probe: no sequential scan of the queue, whatever its size,
    in the generic plan the claim's transaction asks for too."""
    me = policy.Waiter("@me:x", 1, frozenset({"jazz", "cats"}), None, False)
    p = policy.probes(me)
    single = ("text, text[], text[], text[], text[], boolean", claim._args(me, p))
    batch = ("text[], text[], bigint[], text[], text[], bigint[], text[], bigint[], text[], "
             "bigint[]",
             (["@me:x", "@you:x"], ["@taken:x"], [1, 1, 2], ["", "", "en"], ["cats", "jazz", ""],
              [1, 1], ["cats", "jazz"], [2], ["en"], [2]))
    async with pool.acquire() as conn:
        # Tiny tables favour scans; forbidding them shows whether an index path exists.
        await conn.execute("SET enable_seqscan = off")
        for name, sql, (types, args) in (
                ("waiter", claim._LOCK_PARTNER_FOR_WAITER, single),
                ("newcomers", claim._LOCK_PARTNERS_FOR_NEWCOMERS, batch),
                ("candidates", claim._ANY_CANDIDATE, single)):
            plans = ["\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))]
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            await conn.execute(f"PREPARE {name}({types}) AS {sql}")
            literals = await conn.fetchval(  # (EXPLAIN EXECUTE takes no bound parameters)
                "SELECT concat_ws(', ', " + ", ".join(
                    f"quote_literal(${i}::{t.strip()})" for i, t in
                    enumerate(types.split(","), start=1)) + ")", *args)
            plans.append("\n".join(r[0] for r in await conn.fetch(
                f"EXPLAIN EXECUTE {name}({literals})")))
            await conn.execute("RESET plan_cache_mode")
            for plan in plans:
                assert "Seq Scan on waiting" not in plan, plan
