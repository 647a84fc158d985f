"""The mutual reveal's consent rule (bridge/reveal/consent.py) and the notice that carries
the ID (bridge/reveal/contact.py): pure, no database, no homeserver."""
from __future__ import annotations

import pytest

from bridge.reveal.consent import Action, Outcome, State, decide, parse
from bridge.reveal.contact import matrix_to, revealed_content

ASK, CANCEL = Action.ASK, Action.CANCEL


def play(steps, conversation="active", live=True):
    """Apply (side, action) steps to a fresh conversation as the store does; the outcomes,
    and whether it ended revealed."""
    asked, revealed, outcomes = [False, False], False, []
    for side, action in steps:
        outcome = decide(State(conversation, live, tuple(asked), revealed), side, action)
        if outcome in (Outcome.ASKED, Outcome.REVEALED):
            asked[side] = True
        if outcome is Outcome.REVEALED:
            revealed = True
        if outcome is Outcome.CANCELLED:
            asked[side] = False
        outcomes.append(outcome)
    return outcomes, revealed


@pytest.mark.parametrize("args, action", [
    ("", ASK), ("cancel", CANCEL), ("CANCEL", CANCEL), ("  withdraw ", CANCEL),
    ("please", None), ("cancel now", None), ("@bob:example.org", None)])
def test_parse(args, action):
    assert parse(args) is action


def test_one_side_alone_never_reveals():
    outcomes, revealed = play([(0, ASK), (0, ASK), (0, ASK)])
    assert outcomes == [Outcome.ASKED, Outcome.ALREADY_ASKED, Outcome.ALREADY_ASKED]
    assert not revealed


def test_both_reveal_once_whoever_asks_first():
    for first in (0, 1):
        outcomes, revealed = play([(first, ASK), (1 - first, ASK)])
        assert outcomes == [Outcome.ASKED, Outcome.REVEALED] and revealed
        # Asking again afterwards, from either side, reveals nothing new.
        again, _ = play([(first, ASK), (1 - first, ASK), (first, ASK), (1 - first, ASK)])
        assert again[2:] == [Outcome.ALREADY_REVEALED, Outcome.ALREADY_REVEALED]
        assert again.count(Outcome.REVEALED) == 1


def test_cancel_takes_the_request_back():
    outcomes, revealed = play([(0, ASK), (0, CANCEL), (1, ASK)])
    assert outcomes == [Outcome.ASKED, Outcome.CANCELLED, Outcome.ASKED]
    assert not revealed  # side 1 asking after the cancel is a new request, not an agreement
    # Asking again after a cancel is a request like the first.
    outcomes, revealed = play([(0, ASK), (0, CANCEL), (0, ASK), (1, ASK)])
    assert outcomes[-2:] == [Outcome.ASKED, Outcome.REVEALED] and revealed


def test_cancel_without_a_request_and_after_the_reveal():
    assert play([(0, CANCEL)])[0] == [Outcome.NOTHING_TO_CANCEL]
    # The partner's request is theirs: cancelling does not withdraw it.
    assert play([(1, ASK), (0, CANCEL)])[0] == [Outcome.ASKED, Outcome.NOTHING_TO_CANCEL]
    outcomes, revealed = play([(0, ASK), (1, ASK), (0, CANCEL)])
    assert outcomes[-1] is Outcome.TOO_LATE and revealed


@pytest.mark.parametrize("conversation, live", [("ended", False), ("ended", True),
                                                 ("active", False)])
def test_nothing_happens_once_the_chat_has_ended(conversation, live):
    # Even with the partner's open request: a !reveal from an ended chat does nothing.
    state = State(conversation, live, (False, True), False)
    assert decide(state, 0, ASK) is Outcome.ENDED
    assert decide(state, 0, CANCEL) is Outcome.ENDED
    assert decide(State(conversation, live, (True, True), True), 0, ASK) is Outcome.ENDED


def test_not_before_the_partner_has_joined():
    assert decide(State("opening", True), 0, ASK) is Outcome.NOT_YET
    assert decide(State("opening", True), 0, CANCEL) is Outcome.NOTHING_TO_CANCEL


def test_the_notice_names_the_partner_as_a_matrix_to_link():
    content = revealed_content("reveal_done", "@bob:hs2.example:8449", "!")
    link = "https://matrix.to/#/@bob:hs2.example:8449"
    assert link in content["body"] and "@bob:hs2.example:8449 (" in content["body"]
    assert content["format"] == "org.matrix.custom.html"
    assert f'<a href="{link}">@bob:hs2.example:8449</a>' in content["formatted_body"]
    assert content["msgtype"] == "m.notice" and content["m.mentions"] == {}


def test_an_odd_user_id_is_escaped_in_link_and_html():
    user_id = '@a/b"<x>:example.org'
    assert matrix_to(user_id) == "https://matrix.to/#/@a%2Fb%22%3Cx%3E:example.org"
    content = revealed_content("reveal_done", user_id, "!")
    assert "<x>" not in content["formatted_body"]
    assert "&lt;x&gt;" in content["formatted_body"]
