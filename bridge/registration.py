"""The appservice registration file the homeserver loads (mautrix conventions)."""
from __future__ import annotations

import re
import secrets

from bridge.config import Config


def new_token() -> str:
    return secrets.token_urlsafe(48)


def generate(config: Config) -> dict:
    """Fresh tokens go into the config (so the bridge knows them) and the registration."""
    config["appservice.as_token"] = new_token()
    config["appservice.hs_token"] = new_token()
    return {
        "id": config["appservice.id"],
        "url": config["appservice.address"],
        "as_token": config["appservice.as_token"],
        "hs_token": config["appservice.hs_token"],
        # Nobody uses the sender itself: the bot is a namespaced user like the ghosts.
        "sender_localpart": secrets.token_hex(16),
        "rate_limited": False,
        "namespaces": {
            "users": [
                {"exclusive": True, "regex": re.escape(config.bot_mxid)},
                {"exclusive": True, "regex": config.ghost_regex},
            ],
            "aliases": [],
            "rooms": [],
        },
    }
