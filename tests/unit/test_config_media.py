"""The media keys of the config: defaults from the example, and bad values named."""
from __future__ import annotations

import pytest

from tests.unit.test_config import assert_invalid, load, valid


def test_media_defaults_images_and_stickers_on_the_rest_off(tmp_path):
    config = load(tmp_path, valid())
    config.validate()
    assert [config[f"bridge.media.{k}"] for k in ("images", "stickers")] == [True, True]
    assert [config[f"bridge.media.{k}"] for k in ("voice", "audio", "video", "files")] == [False] * 4
    assert config["bridge.media.max_bytes"] == 10 * 1024 * 1024
    assert config["bridge.media.max_pixels"] == 40_000_000


def test_media_switches_can_be_turned(tmp_path):
    config = load(tmp_path, valid(bridge={"media": {"files": True, "images": False}}))
    config.validate()
    assert config["bridge.media.files"] is True and config["bridge.media.images"] is False


@pytest.mark.parametrize("key, value", [
    ("images", "yes"), ("stickers", 1), ("audio", "on"), ("video", 0),
    ("files", "true"), ("max_bytes", 0), ("max_bytes", "10MB"), ("max_bytes", 2 * 1024 ** 3),
    ("max_bytes", True), ("max_pixels", 0), ("max_pixels", 1.5), ("max_pixels", 10 ** 10),
])
def test_invalid_media_value_names_its_key(tmp_path, key, value):
    message = assert_invalid(tmp_path, valid(bridge={"media": {key: value}}), f"bridge.media.{key}")
    assert repr(value) in message
