"""The policy-list and limits keys of the config: policy rooms, server lists, rate limits, link hold."""
from __future__ import annotations

import pytest

from tests.unit.test_config import assert_invalid, load, valid


def test_moderation_defaults(tmp_path):
    config = load(tmp_path, valid())
    config.validate()
    assert config["bridge.policy_rooms"] == []
    assert config["bridge.allowed_servers"] == [] and config["bridge.denied_servers"] == []
    assert config["bridge.rate_limits.messages.burst"] == 10
    assert config["bridge.rate_limits.messages.per_minute"] == 30
    assert config["bridge.rate_limits.churn.free"] == 6
    assert config["bridge.rate_limits.flood_cooldown"] == 600
    assert config["bridge.links.hold_messages"] == 10
    assert config["bridge.links.hold_seconds"] == 120


def test_valid_lists(tmp_path):
    config = load(tmp_path, valid(bridge={
        "policy_rooms": ["#bans:example.org", "!abc:example.org", "!opaqueid"],
        "allowed_servers": ["*.adults.example", "localhost:8448", "[::1]"],
        "denied_servers": ["evil.example", "bad?.example"]}))
    config.validate()
    assert config["bridge.policy_rooms"][0] == "#bans:example.org"


@pytest.mark.parametrize("key, value", [
    ("policy_rooms", "#bans:example.org"),  # not a list
    ("policy_rooms", ["bans:example.org"]),  # neither ! nor #
    ("policy_rooms", ["#bans with space:example.org"]),
    ("policy_rooms", [42]),
    ("allowed_servers", ["evil example"]),
    ("denied_servers", ["@user:evil.example"]),
    ("denied_servers", "evil.example"),
])
def test_invalid_lists_name_their_key(tmp_path, key, value):
    assert_invalid(tmp_path, valid(bridge={key: value}), f"bridge.{key}")


@pytest.mark.parametrize("section, key, value", [
    ("messages", "burst", 0), ("messages", "per_minute", "lots"), ("messages", "burst", 2.5),
    ("messages", "flood_tolerance", -1), ("churn", "free", 0), ("churn", "window", 0),
    ("churn", "cooldown", True), ("invites", "per_hour", 0),
])
def test_invalid_rate_limits_name_their_key(tmp_path, section, key, value):
    message = assert_invalid(tmp_path, valid(bridge={"rate_limits": {section: {key: value}}}),
                             f"bridge.rate_limits.{section}.{key}")
    assert repr(value) in message


def test_flood_cooldown_is_seconds(tmp_path):
    assert_invalid(tmp_path, valid(bridge={"rate_limits": {"flood_cooldown": "10m"}}),
                   "bridge.rate_limits.flood_cooldown")


def test_max_cooldown_below_the_first_cooldown_is_refused(tmp_path):
    assert_invalid(tmp_path, valid(bridge={"rate_limits": {"churn": {
        "cooldown": 100, "max_cooldown": 50}}}), "bridge.rate_limits.churn.max_cooldown")


@pytest.mark.parametrize("key, value", [("hold_messages", -1), ("hold_seconds", "2 min"),
                                        ("hold_messages", 1.5)])
def test_invalid_link_hold_names_its_key(tmp_path, key, value):
    assert_invalid(tmp_path, valid(bridge={"links": {key: value}}), f"bridge.links.{key}")
