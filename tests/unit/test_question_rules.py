"""What the asker reads as a watch ends (bridge.questions.rules)."""
from __future__ import annotations

import pytest

from bridge.portal import BLOCKED, INVITE_FAILED, INVITE_TIMEOUT, LEFT, NEXT, REPORTED
from bridge.questions import rules


@pytest.mark.parametrize("reason", [LEFT, NEXT, REPORTED, BLOCKED, "restricted", "flooded"])
@pytest.mark.parametrize("side", [0, 1])
def test_a_discusser_ending_it_is_named_by_their_number(reason, side):
    name = f"Stranger {side + 1}"
    assert rules.watch_goodbye(reason, side, name) == (
        "watch_partner_left", side + 1, {"name": name})


@pytest.mark.parametrize("reason", sorted(rules.BY_THE_ASKER))
def test_the_asker_ending_it_is_told_nothing(reason):
    assert rules.watch_goodbye(reason, None, "Stranger 1") is None
    assert rules.watch_goodbye(reason, 0, "Stranger 1") is None


@pytest.mark.parametrize("reason", [INVITE_TIMEOUT, INVITE_FAILED])
def test_a_discussion_that_never_started(reason):
    assert rules.watch_goodbye(reason, None, "Stranger 1") == ("watch_no_show", 1, {})


def test_an_end_of_nobodys_doing():
    assert rules.watch_goodbye("ended", None, "Stranger 1") == ("watch_ended", 1, {})
