"""The matching keys of the config: defaults from the example, and bad values named."""
from __future__ import annotations

import pytest

from tests.unit.test_config import assert_invalid, load, valid


def test_matching_defaults(tmp_path):
    config = load(tmp_path, valid())
    config.validate()
    assert config["bridge.matching.fallback_after"] == 10
    assert config["bridge.matching.rematch_cooldown"] == 300
    assert config["bridge.matching.max_tags"] == 5
    assert config["bridge.matching.max_tag_length"] == 30


def test_fractional_seconds_are_accepted(tmp_path):
    config = load(tmp_path, valid(bridge={"matching": {"fallback_after": 2.5,
                                                       "rematch_cooldown": 0}}))
    config.validate()
    assert config["bridge.matching.fallback_after"] == 2.5


@pytest.mark.parametrize("key, value", [
    ("fallback_after", -1), ("fallback_after", "soon"), ("fallback_after", True),
    ("fallback_after", 7200), ("rematch_cooldown", -5), ("rematch_cooldown", "5m"),
    ("max_tags", 0), ("max_tags", 2.5), ("max_tag_length", 0), ("max_tag_length", 1000),
])
def test_invalid_matching_value_names_its_key(tmp_path, key, value):
    message = assert_invalid(tmp_path, valid(bridge={"matching": {key: value}}),
                             f"bridge.matching.{key}")
    assert repr(value) in message
