"""What keeps a user from the bridge, from whichever source: one shape for all of them, so the
statement of reasons a user gets is the same whoever restricted them. Pure."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Restriction:
    kind: str  # suspended | banned | server_banned | server_not_allowed
    reason: str  # shown to the user as the statement of reasons
    until: datetime | None  # None: for ever
    source: str  # moderator | automatic | policy_list | config

    def active_at(self, now: datetime) -> bool:
        return self.until is None or now < self.until


def strictest(restrictions: list[Restriction | None], now: datetime) -> Restriction | None:
    """The restriction to tell the user about: a permanent one before a timed one, then the
    one that lasts longest."""
    active = [r for r in restrictions if r is not None and r.active_at(now)]
    if not active:
        return None
    return max(active, key=lambda r: (r.until is None, r.until or now))
