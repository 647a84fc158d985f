"""Reading typing and receipt contents (bridge.relay.ephemeral): only the room's user counts."""
from __future__ import annotations

from bridge.relay.ephemeral import read_by, typing_now

ME, GHOST = "@me:one.example", "@_stranger_abc:bridge.example"


def test_typing_is_whether_the_user_is_in_the_list():
    assert typing_now({"user_ids": [GHOST, ME]}, ME) is True
    assert typing_now({"user_ids": [GHOST]}, ME) is False  # (the ghost's own typing: not theirs)
    assert typing_now({"user_ids": []}, ME) is False
    assert typing_now({"user_ids": "nope"}, ME) is None
    assert typing_now({}, ME) is None


def test_only_the_users_public_receipts_are_read():
    content = {
        "$a": {"m.read": {ME: {"ts": 1}}},
        "$b": {"m.read": {GHOST: {"ts": 2}}},
        "$c": {"m.read.private": {ME: {"ts": 3}}},
        "$d": "nope",
        "$e": {"m.read": "nope"},
        "$f": {"m.read": {ME: {"ts": 4, "thread_id": "main"}}},
    }
    assert read_by(content, ME) == ["$a", "$f"]
    assert read_by({}, ME) == []
