"""Group commit: calls made while a batch is running wait and run together in the next one.

Alone, a call runs at once (in the next turn of the event loop, which lets calls made in the
same moment join it). Under load, the work of many callers shares one transaction: its
round trips and its commit, which cost more than a match's own work. Each caller still gets
its own result, or the batch's exception.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(self, run: Callable[[list[T]], Awaitable[Sequence[R]]], *, max_size: int,
                 concurrency: int = 1) -> None:
        """`run` takes a batch of items and returns one result per item, in order.
        `concurrency`: batches running at once (one can run in the database while the next
        is prepared)."""
        self._run = run
        self._max_size = max_size
        self._concurrency = concurrency
        self._pending: list[tuple[T, asyncio.Future]] = []
        self._running: set[asyncio.Task] = set()  # (also keeps the tasks referenced)
        self._start_scheduled = False

    async def submit(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._start_scheduled:
            self._start_scheduled = True
            asyncio.get_running_loop().call_soon(self._start)
        return await future

    def _start(self) -> None:
        self._start_scheduled = False
        while self._pending and len(self._running) < self._concurrency:
            batch = [(item, f) for item, f in self._pending[:self._max_size]
                     if not f.cancelled()]  # (a caller that gave up before its batch ran)
            del self._pending[:self._max_size]
            if batch:
                task = asyncio.create_task(self._go(batch))
                self._running.add(task)

    async def _go(self, batch: list[tuple[T, asyncio.Future]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as e:
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
        else:
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
        finally:
            self._running.discard(asyncio.current_task())
            self._start()
