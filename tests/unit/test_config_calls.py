"""The bridge.calls keys: defaults from the example, and bad values named."""
from __future__ import annotations

import pytest

from tests.unit.test_config import assert_invalid, load, valid


def test_calls_defaults(tmp_path):
    config = load(tmp_path, valid())
    config.validate()
    assert config["bridge.calls.enabled"] is True
    assert config["bridge.calls.force_relay"] is False


def test_calls_keys_are_read(tmp_path):
    config = load(tmp_path, valid(bridge={"calls": {"enabled": False, "force_relay": True}}))
    config.validate()
    assert config["bridge.calls.enabled"] is False and config["bridge.calls.force_relay"] is True


@pytest.mark.parametrize("key, value", [("enabled", "yes"), ("enabled", 1),
                                        ("force_relay", "true"), ("force_relay", 0)])
def test_invalid_calls_value_names_its_key(tmp_path, key, value):
    message = assert_invalid(tmp_path, valid(bridge={"calls": {key: value}}), f"bridge.calls.{key}")
    assert repr(value) in message
