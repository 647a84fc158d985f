"""The appservice registration file the homeserver loads (mautrix conventions)."""
from __future__ import annotations

import re
import secrets

from bridge.config import PLACEHOLDER_PICKLE_KEY, Config


def new_token() -> str:
    return secrets.token_urlsafe(48)


def generate(config: Config) -> dict:
    """Fresh tokens go into the config (so the bridge knows them) and the registration."""
    config["appservice.as_token"] = new_token()
    config["appservice.hs_token"] = new_token()
    # Only the example's placeholder is replaced: a key of the operator's own (or one an
    # earlier -g wrote) is what the database's stored keys are pickled with. Keys stored
    # with the placeholder are moved to the new one at the next start (pickle_key.adopt).
    if config["bridge.encryption.pickle_key"] == PLACEHOLDER_PICKLE_KEY:
        config["bridge.encryption.pickle_key"] = secrets.token_urlsafe(32)
    return {**_base(config), **EPHEMERAL_FLAGS, **encryption_flags(config)}


# Typing notifications and read receipts in transactions (relayed to the partner), and in
# appservice mode the to-device messages (MSC4203 rides on them); both names, for older
# homeservers.
EPHEMERAL_FLAGS = {"receive_ephemeral": True, "de.sorunome.msc2409.push_ephemeral": True}


def encryption_flags(config: Config) -> dict:
    """What appservice-mode encryption needs from the homeserver (nothing otherwise)."""
    if not (config["bridge.encryption.allow"] and config["bridge.encryption.appservice"]):
        return {}
    return {
        # Device list changes and one-time key counts in transactions.
        "org.matrix.msc3202": True,
        # The appservice creates and deletes its users' devices itself.
        "io.element.msc4190": True,
    }


def _base(config: Config) -> dict:
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
