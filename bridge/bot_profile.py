"""The bot's profile from the config, set at every start as mautrix bridges do: its display
name (appservice.bot_displayname) and avatar (appservice.bot_avatar: an mxc:// URI, or a
local image file uploaded once and remembered by its SHA-256, so a restart re-uses it).
mautrix's setters compare with the current profile first: an unchanged profile costs no
update (which the homeserver would copy into every room the bot is in)."""
from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path

from mautrix.appservice import IntentAPI

from bridge.config import Config
from bridge.store import bridge_state

UPLOADED_KEY = "bot_avatar_upload"  # bridge_state: "<sha256 of the file> <its mxc:// URI>"


async def apply(bot: IntentAPI, pool, config: Config) -> None:
    if name := config["appservice.bot_displayname"]:
        await bot.set_displayname(name)
    if avatar := config["appservice.bot_avatar"]:
        url = avatar if avatar.startswith("mxc://") else await uploaded(bot, pool, Path(avatar))
        await bot.set_avatar_url(url)


async def uploaded(bot: IntentAPI, pool, path: Path) -> str:
    """The file's mxc:// URI: the one uploaded before if the file is unchanged."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    known = await bridge_state.get(pool, UPLOADED_KEY)
    if known is not None:
        known_digest, _, url = known.partition(" ")
        if known_digest == digest:
            return url
    mime_type = mimetypes.guess_type(path.name)[0]
    url = await bot.upload_media(data, mime_type=mime_type, filename=path.name)
    await bridge_state.put(pool, UPLOADED_KEY, f"{digest} {url}")
    return url
