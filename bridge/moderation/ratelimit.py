"""Rate limits and the link hold: the arithmetic only, no I/O (times are seconds, floats or
datetimes, passed in). Who keeps the state, and where, is bridge/moderation/limits.py."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import Enum

# -- token bucket -------------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """`burst` tokens at most, refilled at `rate` tokens a second; one action takes one."""
    burst: float
    rate: float


@dataclass(frozen=True)
class BucketState:
    tokens: float
    at: float  # when `tokens` was counted (seconds, monotonic)


def refill(bucket: Bucket, state: BucketState | None, now: float) -> BucketState:
    if state is None:
        return BucketState(bucket.burst, now)
    elapsed = max(0.0, now - state.at)
    return BucketState(min(bucket.burst, state.tokens + elapsed * bucket.rate), now)


def take(bucket: Bucket, state: BucketState | None, now: float) -> tuple[bool, BucketState]:
    """(allowed, new state): allowed when a whole token was there to take."""
    state = refill(bucket, state, now)
    if state.tokens >= 1:
        return True, replace(state, tokens=state.tokens - 1)
    return False, state


def is_full(bucket: Bucket, state: BucketState, now: float) -> bool:
    """Idle long enough that forgetting the state changes nothing."""
    return refill(bucket, state, now).tokens >= bucket.burst


# -- message flood ------------------------------------------------------------------------


class Flood(Enum):
    RELAY = "relay"  # within the limit
    WARN = "warn"  # first message over the limit: not relayed, the sender is warned
    DROP = "drop"  # over the limit again: not relayed
    END = "end"  # still flooding after the warning: the chat ends, a cooldown applies


@dataclass(frozen=True)
class FloodState:
    bucket: BucketState | None = None
    dropped: int = 0  # messages not relayed since the warning (0: not warned)


def on_message(bucket: Bucket, tolerance: int, state: FloodState,
               now: float) -> tuple[Flood, FloodState]:
    """A user sent a chat message. Over the limit, the first is answered with a warning;
    `tolerance` more dropped messages end the chat. Once the user's bucket has refilled
    completely (they calmed down), the warning is forgotten."""
    allowed, bucket_state = take(bucket, state.bucket, now)
    if allowed:
        dropped = 0 if bucket_state.tokens >= bucket.burst - 1 else state.dropped
        return Flood.RELAY, FloodState(bucket_state, dropped)
    if state.dropped == 0:
        return Flood.WARN, FloodState(bucket_state, 1)
    if state.dropped >= tolerance:
        return Flood.END, FloodState()
    return Flood.DROP, FloodState(bucket_state, state.dropped + 1)


# -- !start / !next churn -----------------------------------------------------------------


@dataclass(frozen=True)
class ChurnLimits:
    free: int  # starts allowed within `window` before a cooldown
    window: float  # seconds
    cooldown: float  # the first cooldown, in seconds; each next one doubles
    max_cooldown: float
    forgive_after: float  # seconds after a cooldown ends without another: escalation reset


@dataclass(frozen=True)
class ChurnState:
    window_start: datetime | None = None
    count: int = 0  # starts in the current window
    level: int = 0  # cooldowns so far (the next one lasts cooldown * 2**level)
    blocked_until: datetime | None = None


def cooldown_seconds(limits: ChurnLimits, level: int) -> float:
    """The cooldown after `level` earlier ones: cooldown, 2x, 4x, ... up to max_cooldown."""
    return min(limits.max_cooldown, limits.cooldown * 2 ** min(level, 62))


def on_start(limits: ChurnLimits, state: ChurnState,
             now: datetime) -> tuple[datetime | None, ChurnState]:
    """A user asked for a new partner (!start, !next). (None, new state) when allowed;
    (until when, new state) when refused. A refused attempt does not extend the cooldown."""
    if state.blocked_until is not None and now < state.blocked_until:
        return state.blocked_until, state
    level = state.level
    if state.blocked_until is not None and \
            now - state.blocked_until >= timedelta(seconds=limits.forgive_after):
        level = 0
    window_start, count = state.window_start, state.count
    if window_start is None or now - window_start >= timedelta(seconds=limits.window):
        window_start, count = now, 0
    count += 1
    if count <= limits.free:
        return None, ChurnState(window_start, count, level, state.blocked_until)
    until = now + timedelta(seconds=cooldown_seconds(limits, level))
    return until, ChurnState(None, 0, level + 1, until)


# -- links early in a conversation ----------------------------------------------------------

# http(s) URLs, matrix.to links and bare www. addresses, anywhere in a word.
LINK = re.compile(r"(?i)(?:\bhttps?://|\bmatrix\.to\b|\bwww\.)")


def has_link(content: object) -> bool:
    """Any string in the event's content (body, formatted_body, an edit's m.new_content)."""
    if isinstance(content, str):
        return LINK.search(content) is not None
    if isinstance(content, dict):
        return any(has_link(v) for v in content.values())
    if isinstance(content, list):
        return any(has_link(v) for v in content)
    return False


@dataclass(frozen=True)
class LinkHold:
    messages: int  # links wait until this many messages were relayed in the conversation
    seconds: float  # ... and the conversation is this old


def link_wait(hold: LinkHold, relayed: int, age_seconds: float) -> tuple[int, float] | None:
    """None when links may pass; else (messages still to go, seconds still to go)."""
    messages_left = max(0, hold.messages - relayed)
    seconds_left = max(0.0, hold.seconds - age_seconds)
    if messages_left == 0 and seconds_left == 0:
        return None
    return messages_left, seconds_left
