"""Several processes' ownership of rooms, over real PostgreSQL (bridge/cluster/): the
partitions are shared out evenly and disjointly, one process leads, a process that stops or
whose connection dies has its partitions taken over, a NOTIFY wakes only a room's owner, and
events handed over mid-stream are handled once each, in order."""
from __future__ import annotations

import asyncio
import random
import string
from collections import defaultdict

import asyncpg
import pytest

from bridge.cluster import notices
from bridge.cluster.ownership import Ownership
from bridge.cluster.partitions import partition_of, partition_sql
from bridge.dispatcher import Dispatcher, Outcome
from bridge.store import inbox, room_partitions

PARTITIONS = 16
TIMEOUT = 20


class Member:
    """One process's ownership, with what it was told."""

    def __init__(self, uri: str, name: str) -> None:
        self.name = name
        self.woken: list[str] = []
        self.leading_calls: list[bool] = []
        self.gained: list[frozenset[int]] = []
        self.lost: list[frozenset[int]] = []
        self.ownership = Ownership(uri, PARTITIONS, name, gained=self._gained,
                                   losing=self._losing, leading=self._leading,
                                   woken=lambda rooms, _partitions: self.woken.extend(rooms))

    async def _gained(self, partitions):
        self.gained.append(partitions)

    async def _losing(self, partitions):
        self.lost.append(partitions)

    async def _leading(self, leading):
        self.leading_calls.append(leading)

    @property
    def owned(self) -> frozenset[int]:
        return self.ownership.owned


async def settle(members: list[Member]) -> None:
    """Until every partition has exactly one owner among the members and the shares are
    even (each member balancing at least once more after a change)."""
    async def even() -> bool:
        owned = [m.owned for m in members]
        every = [p for o in owned for p in o]
        sizes = sorted(len(o) for o in owned)
        return (sorted(every) == list(range(PARTITIONS))
                and sizes[-1] - sizes[0] <= PARTITIONS // len(members))

    async def loop():
        while not await even():
            await asyncio.gather(*(m.ownership.balanced(m.ownership.balances)
                                   for m in members))
    await asyncio.wait_for(loop(), TIMEOUT)


@pytest.fixture
async def members(database_uri):
    made: list[Member] = []

    async def make(name: str) -> Member:
        member = Member(database_uri, name)
        await member.ownership.start()
        made.append(member)
        return member
    yield make
    for member in made:
        await member.ownership.stop()


def room_ids(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + "éß漢"
    return ["!" + "".join(rng.choice(alphabet) for _ in range(18)) + ":hs.example"
            for _ in range(n)]


async def test_python_and_sql_cut_rooms_the_same_way(pool):
    rooms = room_ids(500)
    rows = await pool.fetch(f"SELECT r, {partition_sql('r', PARTITIONS)} AS p "
                            "FROM unnest($1::text[]) AS r", rooms)
    assert {row["r"]: row["p"] for row in rows} == {r: partition_of(r, PARTITIONS)
                                                    for r in rooms}
    # and they are spread: every partition gets some of 500 rooms
    assert len({partition_of(r, PARTITIONS) for r in rooms}) == PARTITIONS


def test_long_wake_lists_are_cut_below_postgres_payload_limit():
    rooms = {room_id: i % PARTITIONS for i, room_id in enumerate(room_ids(1000))}
    payloads = notices.payloads(rooms)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= notices.MAX_PAYLOAD_BYTES for p in payloads)
    heard = {}
    for payload in payloads:
        heard.update(notices.rooms(payload))
    assert heard == rooms


def test_a_malformed_wake_line_is_skipped():
    assert notices.rooms("!a:hs\t3\n!b:hs\n\tx\n!c:hs\t-1\n!d:hs\t7") == {"!a:hs": 3,
                                                                         "!d:hs": 7}


async def test_partitions_shared_evenly_and_one_leader(members):
    first = await members("a")
    assert first.owned == frozenset(range(PARTITIONS))  # alone: everything
    assert first.leading_calls == [True]
    second, third = await members("b"), await members("c")
    await settle([first, second, third])
    sizes = sorted(len(m.owned) for m in (first, second, third))
    assert sum(sizes) == PARTITIONS and sizes[-1] - sizes[0] <= 1
    assert not (first.owned & second.owned or first.owned & third.owned
                or second.owned & third.owned)
    assert [m.ownership.leader for m in (first, second, third)] == [True, False, False]
    # what the first gave away, it was told before giving it (to finish its rooms' work)
    assert frozenset().union(*first.lost) == frozenset(range(PARTITIONS)) - first.owned


async def test_a_stopped_process_hands_over_at_once(members):
    a, b, c = await members("a"), await members("b"), await members("c")
    await settle([a, b, c])
    a_had = a.owned
    await a.ownership.stop()
    await settle([b, c])
    assert a_had <= b.owned | c.owned
    assert b.ownership.leader != c.ownership.leader  # the lead moved to one of them
    # and it comes back for its share
    back = await members("a2")
    await settle([back, b, c])
    assert len(back.owned) >= PARTITIONS // 3


async def test_a_dead_process_is_taken_over(members, pool):
    a, b = await members("a"), await members("b")
    await settle([a, b])
    # As a kill -9 does: the process is gone, its session ends without a word.
    a.ownership._task.cancel()
    pid = a.ownership._conn.get_server_pid()
    await pool.execute("SELECT pg_terminate_backend($1)", pid)

    async def b_has_all():
        while b.owned != frozenset(range(PARTITIONS)) or not b.ownership.leader:
            await b.ownership.balanced(b.ownership.balances)
    await asyncio.wait_for(b_has_all(), TIMEOUT)


async def test_a_lost_connection_stops_handling_then_rejoins(members, pool):
    a, b = await members("a"), await members("b")
    await settle([a, b])
    a_had = a.owned
    await pool.execute("SELECT pg_terminate_backend($1)", a.ownership._conn.get_server_pid())

    async def a_dropped():  # at once: not one more event starts here
        while a.owned:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(a_dropped(), TIMEOUT)

    async def a_rejoined():
        while not a.owned:
            await a.ownership.balanced(a.ownership.balances)
    await asyncio.wait_for(a_rejoined(), TIMEOUT)
    assert a_had <= frozenset().union(*a.lost)  # told, so its workers stopped
    await settle([a, b])


async def test_a_notice_wakes_only_the_owner(members, pool):
    a, b = await members("a"), await members("b")
    await settle([a, b])
    rooms = room_ids(40, seed=3)
    await notices.send(pool, {r: partition_of(r, PARTITIONS) for r in rooms})

    async def told():
        while len(a.woken) + len(b.woken) < len(rooms):
            await asyncio.sleep(0.01)
    await asyncio.wait_for(told(), TIMEOUT)
    assert sorted(a.woken + b.woken) == sorted(rooms)
    assert all(partition_of(r, PARTITIONS) in a.owned for r in a.woken)
    assert all(partition_of(r, PARTITIONS) in b.owned for r in b.woken)


# -- handing rooms over mid-stream -------------------------------------------------------------

class Process:
    """A dispatcher whose rooms are decided by its ownership, as the bridge wires them."""

    def __init__(self, uri: str, pool, name: str, log: dict[str, list[str]]) -> None:
        self.log = log
        self.name = name
        self.dispatcher = Dispatcher(pool, self.handle)
        self.ownership = Ownership(
            uri, PARTITIONS, name, gained=self.gained, losing=self.losing,
            leading=self.leading, woken=self.dispatcher.kick)
        self.dispatcher.partitions = PARTITIONS
        self.dispatcher.owns_partition = self.ownership.owns_partition
        self.dispatcher.kick_elsewhere = lambda rooms: asyncio.create_task(
            notices.send(pool, rooms))
        self.pool = pool

    async def handle(self, event: dict) -> Outcome:
        await asyncio.sleep(random.random() * 0.003)  # handling takes a while
        self.log[event["room_id"]].append(event["event_id"])
        return Outcome.DONE

    async def gained(self, partitions):
        self.dispatcher.kick(await inbox.rooms_with_pending_in(self.pool, partitions,
                                                                PARTITIONS))

    async def losing(self, partitions):
        await self.dispatcher.release(partitions)

    async def leading(self, _):
        pass

    async def start(self):
        await self.ownership.start()
        await self.dispatcher.kick_all_pending()

    async def stop(self):
        await self.ownership.stop()
        await self.dispatcher.stop()


async def test_events_handed_over_mid_stream_are_handled_once_in_order(database_uri):
    """Events keep arriving (recorded by whichever process) while processes come and go,
    gracefully and by losing their connection, and while half the rooms move to another
    partition (as a chat room does when its conversation's partition is written): each event
    handled exactly once, each room in order."""
    pools = [await asyncpg.create_pool(database_uri, min_size=1, max_size=5) for _ in range(3)]
    log: dict[str, list[str]] = defaultdict(list)
    processes = [Process(database_uri, pools[i], f"p{i}", log) for i in range(3)]
    for process in processes:
        await process.start()
    rooms = room_ids(24, seed=11)
    sent: dict[str, list[str]] = defaultdict(list)
    try:
        for batch in range(60):
            recorder = processes[batch % 3]
            events = []
            for room_id in rooms[batch % 4::4]:
                event_id = f"$e{batch}-{room_id}"
                sent[room_id].append(event_id)
                events.append({"event_id": event_id, "room_id": room_id,
                               "type": "m.room.message", "sender": "@u:hs.example",
                               "content": {}})
            async with recorder.pool.acquire() as conn, conn.transaction():
                partitions = await room_partitions.of_rooms(
                    conn, {e["room_id"] for e in events}, PARTITIONS)
                await inbox.record(conn, events, partitions)
            recorder.dispatcher.kick({e["room_id"] for e in events}, partitions)
            if batch == 20:  # half the rooms: their next events go to another partition
                for room_id in rooms[::2]:
                    await room_partitions.put(pools[2], room_id,
                                              (partition_of(room_id, PARTITIONS) + 5) % PARTITIONS)
            if batch == 15:  # a graceful stop, then the process comes back
                await processes[0].stop()
                processes[0] = Process(database_uri, pools[0], "p0b", log)
                await processes[0].start()
            if batch == 35:  # a dead connection (as kill -9): the others take over
                pid = processes[1].ownership._conn.get_server_pid()
                await pools[2].execute("SELECT pg_terminate_backend($1)", pid)

        async def all_handled():
            while await pools[2].fetchval(
                    "SELECT count(*) FROM inbox WHERE handled_at IS NULL"):
                await asyncio.sleep(0.05)
        await asyncio.wait_for(all_handled(), 60)
    finally:
        for process in processes:
            await process.stop()
        for p in pools:
            await p.close()
    for room_id in rooms:
        assert log[room_id] == sent[room_id], room_id  # once each, in order


async def test_a_delivery_check_notice_reaches_every_process(database_uri, pool):
    """The bot's typing (the start-up delivery check) may come back to any process: the one
    that gets it says so on CHECKS_CHANNEL, and every process hears it."""
    heard: dict[str, list[str]] = {"a": [], "b": []}
    made = [Ownership(database_uri, PARTITIONS, name, gained=_nothing, losing=_nothing,
                      leading=_nothing, woken=lambda rooms, partitions: None,
                      checked=heard[name].append)
            for name in ("a", "b")]
    for ownership in made:
        await ownership.start()
    try:
        await pool.execute("SELECT pg_notify($1, $2)", notices.CHECKS_CHANNEL, "!check:hs")

        async def both():
            while not (heard["a"] and heard["b"]):
                await asyncio.sleep(0.01)
        await asyncio.wait_for(both(), TIMEOUT)
        assert heard == {"a": ["!check:hs"], "b": ["!check:hs"]}
    finally:
        for ownership in made:
            await ownership.stop()


async def _nothing(_):
    pass


async def test_a_graceful_stop_is_taken_over_without_waiting_for_a_balance(members, monkeypatch):
    """The others take a stopping process's partitions when it says it left, not at their
    next periodic balance: it must no longer count as live by then (its MEMBER lock gone
    before its notice). Balances every 60 s here, so only the notices can do it."""
    from bridge.cluster import ownership
    monkeypatch.setattr(ownership, "BALANCE_SECONDS", 60.0)
    a, b, c = await members("a"), await members("b"), await members("c")

    async def shared():  # (joining is said by notices too)
        while sorted(p for m in (a, b, c) for p in m.owned) != list(range(PARTITIONS)) or \
                not all(m.owned for m in (a, b, c)):
            await asyncio.sleep(0.01)
    await asyncio.wait_for(shared(), 5)
    # Its session lingers after its notice (a close takes a moment; here, until the others
    # have taken over): the notice alone must do it.
    closing = asyncio.Event()
    close = a.ownership._close

    async def slow_close():
        await closing.wait()
        await close()
    a.ownership._close = slow_close
    stopping = asyncio.create_task(a.ownership.stop())

    async def taken():
        while b.owned | c.owned != frozenset(range(PARTITIONS)):
            await asyncio.sleep(0.01)
    try:
        await asyncio.wait_for(taken(), 5)
    finally:
        closing.set()
        await stopping
