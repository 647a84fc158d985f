"""The moderation keys of the config: defaults from the example, and bad values named."""
from __future__ import annotations

import pytest

from tests.unit.test_config import assert_invalid, load, valid


def test_moderation_defaults(tmp_path):
    config = load(tmp_path, valid())
    config.validate()
    assert config["bridge.admins"] == []
    assert config["bridge.moderation_room"] == ""
    assert config["bridge.moderation.evidence_messages"] == 20
    assert config["bridge.moderation.evidence_grace"] == 300
    assert config["bridge.moderation.auto_suspend.reporters"] == 3
    assert config["bridge.moderation.auto_suspend.window"] == 86400
    assert config["bridge.moderation.auto_suspend.duration"] == 86400
    assert config["bridge.moderation.auto_suspend.min_share"] == 0.33


def test_admins_and_room_are_read(tmp_path):
    config = load(tmp_path, valid(bridge={"admins": ["@mod:example.net", "@b:[::1]:8448"],
                                          "moderation_room": "#mods:example.net"}))
    config.validate()
    assert config["bridge.admins"] == ["@mod:example.net", "@b:[::1]:8448"]
    assert config["bridge.moderation_room"] == "#mods:example.net"


@pytest.mark.parametrize("key, value", [
    ("admins", "@mod:example.net"), ("admins", ["mod"]), ("admins", ["@mod"]),
    ("admins", [42]), ("moderation_room", "mods"), ("moderation_room", 5),
])
def test_invalid_admin_settings_name_their_key(tmp_path, key, value):
    assert_invalid(tmp_path, valid(bridge={key: value}), f"bridge.{key}")


@pytest.mark.parametrize("key, value", [
    ("evidence_messages", -1), ("evidence_messages", 1000), ("evidence_messages", "20"),
    ("evidence_grace", -1), ("evidence_grace", "5m"),
])
def test_invalid_evidence_value_names_its_key(tmp_path, key, value):
    message = assert_invalid(tmp_path, valid(bridge={"moderation": {key: value}}),
                             f"bridge.moderation.{key}")
    assert repr(value) in message


@pytest.mark.parametrize("key, value", [
    ("reporters", -1), ("reporters", 2.5), ("window", 0), ("window", "1d"),
    ("duration", 10), ("duration", True), ("min_share", 1.5), ("min_share", -0.1),
    ("min_share", "half"),
])
def test_invalid_auto_suspend_value_names_its_key(tmp_path, key, value):
    message = assert_invalid(
        tmp_path, valid(bridge={"moderation": {"auto_suspend": {key: value}}}),
        f"bridge.moderation.auto_suspend.{key}")
    assert repr(value) in message
