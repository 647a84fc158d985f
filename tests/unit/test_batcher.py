"""Group commit (bridge.matching.batcher): who runs together, and who gets which result."""
from __future__ import annotations

import asyncio

import pytest

from bridge.matching.batcher import Batcher


class Recorder:
    """A batch runner that records its batches and holds each until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def run(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await self.release.wait()
        if any(item < 0 for item in items):
            raise ValueError(f"bad batch {items}")
        return [item * 10 for item in items]


async def test_a_call_alone_runs_at_once_in_a_batch_of_its_own():
    recorder = Recorder()
    batcher = Batcher(recorder.run, max_size=8)
    assert await batcher.submit(1) == 10
    assert await batcher.submit(2) == 20
    assert recorder.batches == [[1], [2]]


async def test_calls_made_in_the_same_moment_share_a_batch_and_each_gets_its_result():
    recorder = Recorder()
    batcher = Batcher(recorder.run, max_size=8)
    assert await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3))) == [10, 20, 30]
    assert recorder.batches == [[1, 2, 3]]


async def test_calls_made_while_a_batch_runs_wait_and_run_together_next():
    recorder = Recorder()
    recorder.release.clear()
    batcher = Batcher(recorder.run, max_size=8)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0.01)
    assert recorder.batches == [[1]]  # the first still runs: the others wait for it
    recorder.release.set()
    assert await first == 10 and await asyncio.gather(*later) == [20, 30, 40]
    assert recorder.batches == [[1], [2, 3, 4]]


async def test_batches_are_capped_and_several_may_run_at_once():
    recorder = Recorder()
    recorder.release.clear()
    batcher = Batcher(recorder.run, max_size=2, concurrency=2)
    calls = [asyncio.create_task(batcher.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0.01)
    assert recorder.batches == [[1, 2], [3, 4]]
    recorder.release.set()
    assert await asyncio.gather(*calls) == [10, 20, 30, 40, 50]
    assert recorder.batches == [[1, 2], [3, 4], [5]]


async def test_a_failing_batch_fails_its_own_callers_only():
    recorder = Recorder()
    recorder.release.clear()
    batcher = Batcher(recorder.run, max_size=8)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)
    bad = [asyncio.create_task(batcher.submit(i)) for i in (2, -3)]
    await asyncio.sleep(0.01)
    recorder.release.set()
    assert await first == 10
    for call in bad:
        with pytest.raises(ValueError, match="bad batch"):
            await call
    assert await batcher.submit(4) == 40  # the batcher carries on


async def test_a_caller_that_gives_up_leaves_the_others_their_results():
    recorder = Recorder()
    recorder.release.clear()
    batcher = Batcher(recorder.run, max_size=8)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)
    quitter = asyncio.create_task(batcher.submit(2))
    stayer = asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0.01)
    quitter.cancel()   # while waiting for its batch to start
    first.cancel()     # while its batch runs
    await asyncio.sleep(0.01)
    recorder.release.set()
    assert await stayer == 30
    assert recorder.batches == [[1], [3]]
    assert first.cancelled() and quitter.cancelled()
