"""The bot's profile at start: display name and avatar from the config (an mxc:// URI as it
is, a file uploaded once per content), over real PostgreSQL with a recording intent."""
from __future__ import annotations

from pathlib import Path

from ruamel.yaml import YAML

from bridge import bot_profile
from bridge.config import Config
from bridge.store import bridge_state


class RecordingIntent:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def set_displayname(self, name: str) -> None:
        self.calls.append(("displayname", name))

    async def set_avatar_url(self, url: str) -> None:
        self.calls.append(("avatar", url))

    async def upload_media(self, data: bytes, mime_type: str, filename: str) -> str:
        self.calls.append(("upload", len(data), mime_type, filename))
        return f"mxc://chat.example.net/upload{len(self.calls)}"


def config_with(tmp_path: Path, **appservice) -> Config:
    path = tmp_path / "config.yaml"
    YAML().dump({"appservice": {"as_token": "a" * 32, "hs_token": "h" * 32, **appservice},
                 "homeserver": {"domain": "chat.example.net"}}, path.open("w"))
    config = Config(str(path))
    config.load()
    config.update(save=False)
    config.validate()
    return config


async def test_an_mxc_avatar_is_set_as_it_is(pool, tmp_path):
    bot = RecordingIntent()
    await bot_profile.apply(bot, pool, config_with(tmp_path, bot_avatar="mxc://hs/abc",
                                                   bot_displayname="Stranger Bot"))
    assert bot.calls == [("displayname", "Stranger Bot"), ("avatar", "mxc://hs/abc")]


async def test_a_file_is_uploaded_once_per_content(pool, tmp_path):
    image = tmp_path / "bot.png"
    image.write_bytes(b"\x89PNG first")
    config = config_with(tmp_path, bot_avatar=str(image), bot_displayname="")
    bot = RecordingIntent()
    await bot_profile.apply(bot, pool, config)
    assert bot.calls == [("upload", 10, "image/png", "bot.png"),
                         ("avatar", "mxc://chat.example.net/upload1")]
    again = RecordingIntent()  # the next start: the same file
    await bot_profile.apply(again, pool, config)
    assert again.calls == [("avatar", "mxc://chat.example.net/upload1")]
    image.write_bytes(b"\x89PNG changed")  # a new picture is uploaded
    changed = RecordingIntent()
    await bot_profile.apply(changed, pool, config)
    assert changed.calls[0][0] == "upload"
    assert (await bridge_state.get(pool, bot_profile.UPLOADED_KEY)).endswith(
        changed.calls[1][1])


async def test_nothing_set_when_both_are_empty(pool, tmp_path):
    bot = RecordingIntent()
    await bot_profile.apply(bot, pool, config_with(tmp_path, bot_avatar="",
                                                   bot_displayname=""))
    assert bot.calls == []
