"""Who is paired with whom: pure policy, no I/O, so it is tested in microseconds.

The queue is served in arrival order: the user waiting longest is paired first, with the
longest-waiting user they are compatible with. Nobody can starve, because a user only
moves towards the front of the queue.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Waiter:
    user_id: str
    seq: int  # arrival order in the queue


def compatible(a: Waiter, b: Waiter) -> bool:
    return a.user_id != b.user_id


def pair_up(waiting: Iterable[Waiter]) -> list[tuple[Waiter, Waiter]]:
    """Pair as many waiting users as possible, oldest first; the unpaired keep waiting."""
    queue = sorted(waiting, key=lambda w: w.seq)
    taken: set[str] = set()
    pairs: list[tuple[Waiter, Waiter]] = []
    for i, first in enumerate(queue):
        if first.user_id in taken:
            continue
        for second in queue[i + 1:]:
            if second.user_id not in taken and compatible(first, second):
                pairs.append((first, second))
                taken.update((first.user_id, second.user_id))
                break
    return pairs
