"""The rule for a leave that finds its conversation already ended (bridge.pairing)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bridge.handler import event_time
from bridge.pairing import CLOCK_SKEW_ALLOWANCE, left_to_rematch
from bridge.portal import INVITE_TIMEOUT, LEFT, NEXT, STOP
from bridge.store.conversations import Conversation, Side

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
A, B = "@a:one.example", "@b:two.example"


def ended(reason=LEFT, ended_by=A, b_joined=True, b_goodbye_at=None, state="ended"):
    sides = (Side(1, 0, A, "@g0:x", "!r0", T0, False, None),
             Side(1, 1, B, "@g1:x", "!r1", T0 if b_joined else None, False, None,
                  goodbye_at=b_goodbye_at))
    return Conversation(1, state, T0, reason, ended_by, sides)


@pytest.mark.parametrize("reason", [LEFT, NEXT, STOP])
def test_partner_ended_and_goodbye_not_sent_yet(reason):
    assert left_to_rematch(ended(reason), B, T0 + timedelta(hours=1))


def test_before_the_goodbye_and_within_the_clocks_allowance():
    told = T0 + timedelta(seconds=3)
    assert left_to_rematch(ended(b_goodbye_at=told), B, T0)
    assert left_to_rematch(ended(b_goodbye_at=told), B, told + CLOCK_SKEW_ALLOWANCE)


def test_after_the_goodbye_it_is_tidying_up():
    told = T0 + timedelta(seconds=3)
    late = told + CLOCK_SKEW_ALLOWANCE + timedelta(milliseconds=1)
    assert not left_to_rematch(ended(b_goodbye_at=told), B, late)


def test_not_for_who_ended_it():
    assert not left_to_rematch(ended(ended_by=B), B, T0)


def test_not_for_endings_the_partner_did_not_choose():
    assert not left_to_rematch(ended(INVITE_TIMEOUT, ended_by=None), B, T0)


def test_not_for_a_side_that_never_joined():
    assert not left_to_rematch(ended(b_joined=False), B, T0)


def test_not_while_the_conversation_is_live_or_for_strangers():
    assert not left_to_rematch(ended(state="active"), B, T0)
    assert not left_to_rematch(ended(), "@c:three.example", T0)


def test_event_time_from_origin_server_ts_or_now():
    assert event_time({"origin_server_ts": 1_780_000_000_000}) == datetime.fromtimestamp(
        1_780_000_000, timezone.utc)
    before = datetime.now(timezone.utc)
    for bad in ({}, {"origin_server_ts": "x"}, {"origin_server_ts": True},
                {"origin_server_ts": -5}, {"origin_server_ts": 2**60}):
        assert event_time(bad) >= before
