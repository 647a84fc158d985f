"""Per-room ordered handling of the inbox, over real PostgreSQL."""
from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from bridge.dispatcher import Dispatcher, Outcome
from bridge.store import inbox

TIMEOUT = 10


def event(event_id: str, room_id: str) -> dict:
    return {"event_id": event_id, "room_id": room_id, "type": "m.room.message",
            "sender": "@alice:example.org", "content": {"msgtype": "m.text", "body": event_id}}


async def record(pool, *events: dict) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await inbox.record(conn, list(events))


class Handler:
    """Records handled event IDs per room; `until` tells when a set of events is all done."""

    def __init__(self) -> None:
        self.handled: dict[str, list[str]] = defaultdict(list)
        self.calls: list[str] = []
        self._waiters: list[tuple[set[str], asyncio.Event]] = []
        self.behaviour = {}  # event_id -> async callable(event) -> Outcome (overrides)

    async def __call__(self, ev: dict) -> Outcome:
        self.calls.append(ev["event_id"])
        special = self.behaviour.get(ev["event_id"])
        outcome = await special(ev) if special else Outcome.DONE
        if outcome is Outcome.DONE:
            self.handled[ev["room_id"]].append(ev["event_id"])
            self._notify()
        return outcome

    def _all(self) -> set[str]:
        return {e for events in self.handled.values() for e in events}

    def _notify(self) -> None:
        done = self._all()
        for wanted, flag in self._waiters:
            if wanted <= done:
                flag.set()

    async def until(self, *event_ids: str) -> None:
        flag = asyncio.Event()
        self._waiters.append((set(event_ids), flag))
        self._notify()
        await asyncio.wait_for(flag.wait(), TIMEOUT)


@pytest.fixture
async def handler():
    return Handler()


@pytest.fixture
async def dispatcher(pool, handler):
    dispatcher = Dispatcher(pool, handler, retry_max_delay=0.2)
    yield dispatcher
    await dispatcher.stop(timeout=5)


async def worker_finished(dispatcher: Dispatcher, room_id: str) -> None:
    task = dispatcher._workers.get(room_id)
    if task is not None:
        await asyncio.wait_for(asyncio.shield(task), TIMEOUT)


async def unhandled(pool) -> list[str]:
    rows = await pool.fetch("SELECT event_id FROM inbox WHERE handled_at IS NULL ORDER BY seq")
    return [r["event_id"] for r in rows]


async def test_events_of_a_room_are_handled_in_order_across_batches(pool, dispatcher, handler):
    room = "!r:x"
    release = asyncio.Event()

    async def slow_first(_):
        await release.wait()  # more batches arrive while the room's worker is busy
        return Outcome.DONE

    handler.behaviour["$0"] = slow_first
    await record(pool, *(event(f"${i}", room) for i in range(0, 3)))
    dispatcher.kick({room})
    await record(pool, *(event(f"${i}", room) for i in range(3, 60)))
    dispatcher.kick({room})
    await record(pool, *(event(f"${i}", room) for i in range(60, 120)))
    dispatcher.kick([room])
    release.set()
    await handler.until(*(f"${i}" for i in range(120)))
    assert handler.handled[room] == [f"${i}" for i in range(120)]
    assert handler.calls == handler.handled[room]  # each handled once
    await worker_finished(dispatcher, room)
    assert await unhandled(pool) == []
    assert await pool.fetchval("SELECT count(*) FROM inbox WHERE event IS NOT NULL") == 0


async def test_rooms_are_handled_in_parallel(pool, dispatcher, handler):
    b_done = asyncio.Event()

    async def a_waits_for_b(_):
        # Deadlocks (and times out) unless room B runs while room A's event is in progress.
        await asyncio.wait_for(b_done.wait(), TIMEOUT)
        return Outcome.DONE

    async def b(_):
        b_done.set()
        return Outcome.DONE

    handler.behaviour.update({"$a1": a_waits_for_b, "$b1": b})
    await record(pool, event("$a1", "!a:x"), event("$a2", "!a:x"), event("$b1", "!b:x"))
    dispatcher.kick(["!a:x"])
    dispatcher.kick(["!b:x"])
    await handler.until("$a1", "$a2", "$b1")
    assert handler.handled == {"!a:x": ["$a1", "$a2"], "!b:x": ["$b1"]}


async def test_wait_holds_the_room_until_kicked_again(pool, dispatcher, handler):
    room = "!r:x"
    ready = False
    waited = asyncio.Event()

    async def not_yet(_):
        waited.set()
        return Outcome.DONE if ready else Outcome.WAIT

    handler.behaviour["$2"] = not_yet
    await record(pool, event("$1", room), event("$2", room), event("$3", room),
                 event("$other", "!other:x"))
    dispatcher.kick([room])
    await asyncio.wait_for(waited.wait(), TIMEOUT)
    await worker_finished(dispatcher, room)
    assert handler.handled[room] == ["$1"]
    assert handler.calls == ["$1", "$2"]
    assert await unhandled(pool) == ["$2", "$3", "$other"]

    # A kick for another room does not wake this one.
    dispatcher.kick(["!other:x"])
    await handler.until("$other")
    await worker_finished(dispatcher, room)
    assert handler.calls == ["$1", "$2", "$other"]

    # Kicked again (e.g. the partner joined), it resumes at the same event.
    ready = True
    dispatcher.kick([room])
    await handler.until("$2", "$3")
    assert handler.handled[room] == ["$1", "$2", "$3"]
    assert handler.calls == ["$1", "$2", "$other", "$2", "$3"]
    await worker_finished(dispatcher, room)
    assert await unhandled(pool) == []


async def test_a_failing_event_is_dropped_and_the_room_goes_on(pool, dispatcher, handler):
    room = "!r:x"

    async def broken(_):
        raise KeyError("a bug, or a hostile event")

    handler.behaviour["$2"] = broken
    await record(pool, event("$1", room), event("$2", room), event("$3", room))
    dispatcher.kick([room])
    await handler.until("$1", "$3")
    assert handler.handled[room] == ["$1", "$3"]
    assert handler.calls == ["$1", "$2", "$3"]
    await worker_finished(dispatcher, room)
    assert await unhandled(pool) == []


async def test_a_transient_error_is_retried_and_handled_once(pool, dispatcher, handler):
    room = "!r:x"
    attempts = 0

    async def flaky(_):
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise OSError("homeserver briefly away")
        return Outcome.DONE

    handler.behaviour["$2"] = flaky
    await record(pool, event("$1", room), event("$2", room), event("$3", room))
    dispatcher.kick([room])
    await handler.until("$1", "$2", "$3")
    assert attempts == 2
    assert handler.handled[room] == ["$1", "$2", "$3"]
    assert handler.calls == ["$1", "$2", "$2", "$3"]  # $1 was not handled again
    await worker_finished(dispatcher, room)
    assert await unhandled(pool) == []


async def test_kick_all_pending_handles_leftovers(pool, handler):
    # Left in the inbox by a previous run: some handled, some not.
    await record(pool, event("$a1", "!a:x"), event("$b1", "!b:x"), event("$a2", "!a:x"),
                 event("$c1", "!c:x"))
    ((seq, _), _) = await inbox.pending(pool, "!a:x")
    await inbox.mark_handled(pool, seq)

    dispatcher = Dispatcher(pool, handler)
    try:
        await dispatcher.kick_all_pending()
        await handler.until("$a2", "$b1", "$c1")
    finally:
        await dispatcher.stop(timeout=5)
    assert handler.handled == {"!a:x": ["$a2"], "!b:x": ["$b1"], "!c:x": ["$c1"]}
    assert await unhandled(pool) == []


async def test_after_stop_nothing_new_is_handled(pool, dispatcher, handler):
    await record(pool, event("$1", "!r:x"))
    dispatcher.kick(["!r:x"])
    await handler.until("$1")
    await dispatcher.stop(timeout=5)
    await record(pool, event("$2", "!r:x"))
    dispatcher.kick(["!r:x"])
    assert dispatcher._workers == {}
    assert await unhandled(pool) == ["$2"]
