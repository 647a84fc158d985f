"""A ghost's device with several processes: loaded only once its lock is held, let go (after
the use under way, stopped first) when another process asks, abandoned at once when the
locks' connection dies, and given what waited for it when taken."""
from __future__ import annotations

import asyncio

import pytest

from bridge.background import Background
from bridge.encryption import ghost_devices as module
from bridge.encryption.crypto import Crypto, DeviceMoved
from bridge.encryption.ghost_devices import GhostDevices

GHOST = "@_stranger_a:example.org"


class FakeLocks:
    def __init__(self) -> None:
        self.held: set[str] = set()
        self.log: list[str] = []

    async def acquire(self, name: str) -> None:
        self.log.append(f"acquire {name}")
        self.held.add(name)

    async def release(self, name: str) -> None:
        self.log.append(f"release {name}")
        self.held.discard(name)


class FakeCrypto(Crypto):
    """Crypto's use counting and stop, without a homeserver or a store."""

    def __init__(self, appservice, config, state_store, pool, db, *, intent, device_name):
        self.intent = intent
        self._stopping = False
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._sync_task = None
        self._cancellable = False
        self.events: list[str] = []
        self.release_use = asyncio.Event()

    device_id = "DEV"

    async def start(self) -> None:
        self.events.append(f"start, lock held: {self.locks.held}")

    async def slow_use(self) -> None:
        async with self._use():
            self.events.append("use begins")
            await self.release_use.wait()
            self.events.append("use ends")

    async def stop(self, *, forget: bool = False) -> None:
        self._stopping = True
        await self._idle.wait()
        self.events.append("stopped")


@pytest.fixture
def devices(monkeypatch):
    locks = FakeLocks()

    class Made(FakeCrypto):
        pass
    Made.locks = locks
    monkeypatch.setattr(module, "Crypto", Made)
    intents = type("I", (), {"user": lambda self, mxid: type(
        "U", (), {"mxid": mxid, "ensure_registered": staticmethod(_noop)})()})()
    appservice = type("A", (), {"intent": intents})()
    ghosts = GhostDevices(appservice, None, None, None, None, locks=locks,
                          background=Background())
    return ghosts, locks


async def _noop():
    pass


async def test_the_lock_is_taken_before_the_device_is_loaded(devices):
    ghosts, locks = devices
    taken = []

    async def on_taken(ghost_id, device):
        taken.append(ghost_id)
    ghosts.on_taken = on_taken
    device = await ghosts.get(GHOST)
    assert device.events == [f"start, lock held: {{'{GHOST}'}}"]
    assert taken == [GHOST]
    assert await ghosts.get(GHOST) is device and locks.log == [f"acquire {GHOST}"]


async def test_asked_for_it_the_device_is_let_go_after_the_use_under_way(devices):
    ghosts, locks = devices
    device = await ghosts.get(GHOST)
    use = asyncio.create_task(device.slow_use())
    await asyncio.sleep(0)  # (the use has begun)
    ghosts.release_requested(GHOST)
    ghosts.release_requested(GHOST)  # asked twice: let go once
    while not device._stopping:  # the let-go has reached stop(), which waits for the use
        await asyncio.sleep(0)
    assert GHOST in locks.held  # not let go while it is in use
    device.release_use.set()
    await use
    await ghosts.background.wait(5)
    assert device.events[1:] == ["use begins", "use ends", "stopped"]
    assert locks.log == [f"acquire {GHOST}", f"release {GHOST}"]
    assert ghosts.running(GHOST) is None
    with pytest.raises(DeviceMoved):  # a late use of the old object is refused (retried)
        await device.slow_use()
    again = await ghosts.get(GHOST)  # and it is taken again when needed
    assert again is not device and locks.log[-1] == f"acquire {GHOST}"


async def test_lost_locks_abandon_every_device_at_once(devices):
    ghosts, locks = devices
    device = await ghosts.get(GHOST)
    ghosts.lost()
    assert ghosts.running(GHOST) is None
    with pytest.raises(DeviceMoved):
        await device.slow_use()
    await ghosts.background.wait(5)
    assert device.events[-1] == "stopped"
