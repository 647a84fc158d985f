"""The anonymity boundary for reactions, redactions' targets, locations and polls."""
from __future__ import annotations

import pytest

from bridge.relay.sanitise import MAX_REACTION_KEY_BYTES, Refused, redacted_event_id, sanitise

MAPPING = {"$orig": "$partner"}


def react(key="👍", event_id="$orig", **relates_extra):
    return {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key,
                             **relates_extra}}


def run(content, event_type="m.reaction"):
    return sanitise(event_type, content, map_event_id=MAPPING.get)


def test_a_reaction_crosses_on_the_mapped_event_with_only_its_key():
    content = react(**{"com.example.sender": "@alice:one.example"})
    content["com.beeper.reaction.shortcode"] = ":alice_secret:"
    content["m.mentions"] = {"user_ids": ["@alice:one.example"]}
    assert run(content) == {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": "$partner", "key": "👍"}}


@pytest.mark.parametrize("content, reason", [
    (react(event_id="$unknown"), "unknown_target"),
    (react(key="mxc://one.example/custom-emoji"), "custom_reaction"),
    (react(key="x" * (MAX_REACTION_KEY_BYTES + 1)), "too_long"),
    (react(key=""), "malformed"),
    ({"m.relates_to": {"rel_type": "m.reference", "event_id": "$orig", "key": "👍"}}, "malformed"),
    ({"m.relates_to": "nope"}, "malformed"),
    ({}, "malformed"),
])
def test_reactions_that_cannot_cross(content, reason):
    out = run(content)
    assert isinstance(out, Refused) and out.reason == reason


def test_a_reaction_key_at_the_limit_crosses():
    key = "é" * (MAX_REACTION_KEY_BYTES // 2)
    assert run(react(key=key))["m.relates_to"]["key"] == key


def test_redaction_target_in_content_or_top_level():
    assert redacted_event_id({"content": {"redacts": "$a"}}) == "$a"  # room version 11+
    assert redacted_event_id({"content": {}, "redacts": "$b"}) == "$b"  # before
    for bad in ({"content": {}}, {"content": {"redacts": 5}}, {"content": {"redacts": "x"}},
                {"content": "nope", "redacts": None}):
        assert redacted_event_id(bad) is None


def test_a_location_never_crosses():
    out = run({"msgtype": "m.location", "body": "here", "geo_uri": "geo:48.85,2.29"},
              event_type="m.room.message")
    assert out == Refused("location", "locations never cross")


@pytest.mark.parametrize("event_type", ["m.poll.start", "org.matrix.msc3381.poll.start",
                                        "m.poll.response", "org.matrix.msc3381.poll.end"])
def test_polls_are_refused_with_their_own_reason(event_type):
    assert run({"body": "?"}, event_type=event_type).reason == "poll"
