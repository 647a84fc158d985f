"""Rate-limit arithmetic: token buckets, the flood warning and end, churn cooldowns that
escalate and are forgiven, and the link hold."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bridge.moderation.ratelimit import (Bucket, ChurnLimits, ChurnState, Flood, FloodState,
                                         LinkHold, cooldown_seconds, has_link, is_full,
                                         link_wait, on_message, on_start, take)

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


def test_bucket_allows_the_burst_then_refuses():
    bucket = Bucket(burst=3, rate=1.0)
    state = None
    results = []
    for _ in range(4):
        allowed, state = take(bucket, state, 100.0)
        results.append(allowed)
    assert results == [True, True, True, False]


def test_bucket_refills_at_the_sustained_rate():
    bucket = Bucket(burst=2, rate=0.5)  # one token every 2 s
    state = None
    for _ in range(2):
        _, state = take(bucket, state, 0.0)
    assert take(bucket, state, 1.9)[0] is False
    allowed, state = take(bucket, state, 2.0)
    assert allowed is True
    assert take(bucket, state, 2.0)[0] is False


def test_bucket_never_holds_more_than_the_burst():
    bucket = Bucket(burst=2, rate=1.0)
    _, state = take(bucket, None, 0.0)
    assert is_full(bucket, state, 1000.0)
    allowed = [take(bucket, state, 1000.0)[0]]
    _, state = take(bucket, state, 1000.0)
    _, state = take(bucket, state, 1000.0)
    allowed.append(take(bucket, state, 1000.0)[0])
    assert allowed == [True, False]


def flood_run(times: list[float], bucket=Bucket(burst=2, rate=1.0), tolerance=2):
    state, verdicts = FloodState(), []
    for now in times:
        verdict, state = on_message(bucket, tolerance, state, now)
        verdicts.append(verdict)
    return verdicts


def test_flooder_is_warned_once_then_dropped_then_ended():
    assert flood_run([0, 0, 0, 0, 0, 0]) == [
        Flood.RELAY, Flood.RELAY, Flood.WARN, Flood.DROP, Flood.END, Flood.RELAY]


def test_a_calm_user_is_never_warned():
    assert set(flood_run([0, 1, 2, 3, 4, 5, 6, 7])) == {Flood.RELAY}


def test_the_warning_is_forgotten_once_the_user_calmed_down():
    # Warned at t=0, then quiet long enough for the bucket to refill: a new burst over the
    # limit is warned again rather than ending the chat.
    verdicts = flood_run([0, 0, 0, 100, 100, 100, 100])
    assert verdicts == [Flood.RELAY, Flood.RELAY, Flood.WARN,
                        Flood.RELAY, Flood.RELAY, Flood.WARN, Flood.DROP]


def test_slowing_down_a_little_does_not_reset_the_warning():
    verdicts = flood_run([0, 0, 0, 1, 1, 1])
    assert verdicts == [Flood.RELAY, Flood.RELAY, Flood.WARN, Flood.RELAY, Flood.DROP, Flood.END]


CHURN = ChurnLimits(free=3, window=60, cooldown=10, max_cooldown=60, forgive_after=300)


def starts(state: ChurnState, at: datetime, count: int):
    refusals = []
    for _ in range(count):
        until, state = on_start(CHURN, state, at)
        refusals.append(until)
    return refusals, state


def test_churn_allows_the_free_starts_then_cools_down():
    refusals, state = starts(ChurnState(), T0, 4)
    assert refusals[:3] == [None, None, None]
    assert refusals[3] == T0 + timedelta(seconds=10)
    assert state.blocked_until == T0 + timedelta(seconds=10)


def test_refused_starts_do_not_extend_the_cooldown():
    _, state = starts(ChurnState(), T0, 4)
    until, again = on_start(CHURN, state, T0 + timedelta(seconds=5))
    assert until == T0 + timedelta(seconds=10) and again == state


def test_starts_spread_over_windows_are_free():
    state = ChurnState()
    for minute in range(10):
        refusals, state = starts(state, T0 + timedelta(minutes=minute), 3)
        assert refusals == [None, None, None]


def test_cooldowns_escalate_up_to_the_maximum():
    state, now, lengths = ChurnState(), T0, []
    for _ in range(5):
        refusals, state = starts(state, now, 4)
        lengths.append((refusals[-1] - now).total_seconds())
        now = state.blocked_until
    assert lengths == [10, 20, 40, 60, 60]
    assert [cooldown_seconds(CHURN, level) for level in range(5)] == [10, 20, 40, 60, 60]


def test_escalation_is_forgiven_after_a_quiet_spell():
    _, state = starts(ChurnState(), T0, 4)
    _, state = starts(state, state.blocked_until, 4)
    assert state.level == 2
    later = state.blocked_until + timedelta(seconds=300)
    refusals, state = starts(state, later, 4)
    assert refusals[-1] - later == timedelta(seconds=10)


@pytest.mark.parametrize("content, expected", [
    ({"body": "hello"}, False),
    ({"body": "see https://example.org"}, True),
    ({"body": "HTTP://EXAMPLE.ORG"}, True),
    ({"body": "go to www.example.org"}, True),
    ({"body": "join matrix.to/#/#room:example.org"}, True),
    ({"body": "plain", "formatted_body": "<a href='http://x.example'>plain</a>"}, True),
    ({"body": "* edit", "m.new_content": {"body": "http://x.example"}}, True),
    ({"body": "a www2 or httpx or wwwhat"}, False),
    ({"body": "mail me at ann@example.org"}, False),
])
def test_links_are_found_anywhere_in_the_content(content, expected):
    assert has_link(content) is expected


def test_links_wait_for_both_messages_and_time():
    hold = LinkHold(messages=10, seconds=120)
    assert link_wait(hold, relayed=0, age_seconds=0) == (10, 120)
    assert link_wait(hold, relayed=10, age_seconds=30) == (0, 90)
    assert link_wait(hold, relayed=4, age_seconds=500) == (6, 0)
    assert link_wait(hold, relayed=12, age_seconds=121) is None


def test_a_zero_hold_lets_links_through_at_once():
    assert link_wait(LinkHold(messages=0, seconds=0), relayed=0, age_seconds=0) is None
