"""bridge.encryption.*: defaults that work with Element X, and bad values named by key."""
from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from bridge.config import PLACEHOLDER_PICKLE_KEY, Config, ConfigError


def load(tmp_path: Path, data: dict) -> Config:
    path = tmp_path / "config.yaml"
    with open(path, "w") as f:
        YAML().dump(data, f)
    config = Config(str(path))
    config.load()
    config.update(save=False)
    return config


def valid(**sections) -> dict:
    data = {"appservice": {"as_token": "a" * 32, "hs_token": "h" * 32},
            "homeserver": {"domain": "chat.example.net"}}
    data.update(sections)
    return data


def assert_invalid(tmp_path: Path, data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, data).validate()
    assert caught.value.key == key


def test_encryption_defaults(tmp_path):
    config = load(tmp_path, valid())
    config.validate()
    assert config["bridge.encryption.allow"] is True
    assert config["bridge.encryption.default"] == "auto"
    assert config["bridge.encryption.require"] is False
    assert config["bridge.encryption.appservice"] is False
    assert config["bridge.encryption.self_sign"] is True
    assert config["bridge.encryption.verification_levels.receive"] == "unverified"


@pytest.mark.parametrize("value", ["auto", True, False])
def test_encryption_default_values(tmp_path, value):
    load(tmp_path, valid(bridge={"encryption": {"default": value}})).validate()


@pytest.mark.parametrize("key, value", [
    ("allow", "yes"), ("require", 1), ("self_sign", "maybe"), ("allow_key_sharing", "no"),
    ("default", "sometimes"), ("default", 1), ("pickle_key", "short"), ("pickle_key", ""),
    ("appservice", "on"),
])
def test_invalid_encryption_value_names_its_key(tmp_path, key, value):
    assert_invalid(tmp_path, valid(bridge={"encryption": {key: value}}),
                   f"bridge.encryption.{key}")


def test_invalid_verification_level_names_its_key(tmp_path):
    data = valid(bridge={"encryption": {"verification_levels": {"send": "trusted"}}})
    assert_invalid(tmp_path, data, "bridge.encryption.verification_levels.send")


def test_the_placeholder_pickle_key_is_refused_at_start(tmp_path):
    config = load(tmp_path, valid())
    assert config["bridge.encryption.pickle_key"] == PLACEHOLDER_PICKLE_KEY  # the example's
    config.validate()  # -g, --migrate and --rotate-pickle-key run with it
    with pytest.raises(ConfigError) as caught:
        config.validate(starting=True)
    assert caught.value.key == "bridge.encryption.pickle_key"
    assert "-g" in str(caught.value) and "placeholder" in str(caught.value)


def test_the_placeholder_pickle_key_is_no_matter_without_encryption(tmp_path):
    load(tmp_path, valid(bridge={"encryption": {"allow": False}})).validate(starting=True)


def test_an_own_pickle_key_starts(tmp_path):
    load(tmp_path, valid(bridge={"encryption": {"pickle_key": "x" * 40}})).validate(starting=True)
