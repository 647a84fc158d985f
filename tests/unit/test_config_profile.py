"""appservice.bot_avatar: empty, an mxc:// URI or an image file; anything else is named."""
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from bridge.config import Config, ConfigError


def load(tmp_path: Path, avatar) -> Config:
    path = tmp_path / "config.yaml"
    YAML().dump({"appservice": {"as_token": "a" * 32, "hs_token": "h" * 32,
                                "bot_avatar": avatar},
                 "homeserver": {"domain": "chat.example.net"}}, path.open("w"))
    config = Config(str(path))
    config.load()
    config.update(save=False)
    return config


def test_the_default_is_empty(tmp_path):
    path = tmp_path / "config.yaml"
    YAML().dump({"homeserver": {"domain": "chat.example.net"}}, path.open("w"))
    config = Config(str(path))
    config.load()
    config.update(save=False)
    assert config["appservice.bot_avatar"] == ""


@pytest.mark.parametrize("avatar", ["", None, "mxc://chat.example.net/AbC_12-x",
                                    "mxc://localhost:8448/abc"])
def test_valid_avatars(tmp_path, avatar):
    load(tmp_path, avatar).validate()


def test_an_image_file(tmp_path):
    (tmp_path / "bot.png").write_bytes(b"\x89PNG")
    load(tmp_path, str(tmp_path / "bot.png")).validate()


@pytest.mark.parametrize("avatar, problem", [
    ("mxc://", "not a valid mxc"), ("mxc://server/with/slash", "not a valid mxc"),
    ("/no/such/file.png", "no such file"), (12, "must be an mxc"),
])
def test_bad_avatars_are_named(tmp_path, avatar, problem):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, avatar).validate()
    assert caught.value.key == "appservice.bot_avatar" and problem in str(caught.value)


def test_a_file_that_is_not_an_image(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match="not an image"):
        load(tmp_path, str(tmp_path / "notes.txt")).validate()
