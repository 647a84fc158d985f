"""Every label value a metric may carry: small fixed sets, never a user ID, room ID or
server name. Values from elsewhere are mapped onto these (anything unknown is "other"), and
tests/unit/test_metrics.py walks the whole registry against ALLOWED. Pure."""
from __future__ import annotations

import re

OTHER = "other"

# Why a conversation ended (bridge/portal.py's end reasons, conversations.end_reason).
END_REASONS = ("left", "next", "stop", "invite_timeout", "invite_failed", "reported", "blocked",
               "restricted", "flooded")
# Why an event did not cross (bridge/refused.py's reasons, the notice keys' refused_<kind>),
# plus what the handler and relayer refuse themselves: an encrypted event with encryption
# off, one that could not be decrypted, a group call, a link held early in a chat.
REFUSED_KINDS = ("calls_disabled", "custom_reaction", "encrypted", "group_call", "location",
                 "malformed", "media_disabled", "media_too_big", "media_unavailable",
                 "media_unreadable", "poll", "too_long", "undecryptable", "unknown_target",
                 "unsupported_event", "unsupported_msgtype", "link_held")
# Where an event could not be decrypted.
UNDECRYPTABLE_PLACES = ("dm", "chat", "moderation")
# Which part of the bridge logged an error: the second part of the logger's name
# ("bridge.handler" -> handler). Per-user child loggers never reach past the second part.
COMPONENTS = ("app", "appservice", "background", "commands", "database", "dispatcher",
              "encryption", "handler", "intake", "matching", "media", "metrics", "moderation",
              "pairing", "portal", "recovery", "relay")
# Sanctions: what, and who decided (bridge/moderation/restriction.py's kinds and sources).
SANCTION_KINDS = ("banned", "suspended", "server_banned")
SANCTION_SOURCES = ("moderator", "automatic")
# The chat rooms' states a live conversation is in (conversations.state).
LIVE_STATES = ("opening", "active")
# What the health check looks at.
DEPENDENCIES = ("database", "homeserver")

# A number, as prometheus_client writes histogram bounds ("0.5", "+Inf").
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?([eE][+-]?\d+)?|Inf)")
# prometheus_client's own python_info (interpreter version: no user data).
_VERSION_PART = re.compile(r"[A-Za-z0-9.+_-]{1,40}")

ALLOWED: dict[str, object] = {
    "reason": frozenset(END_REASONS + (OTHER,)),
    "kind": frozenset(REFUSED_KINDS + SANCTION_KINDS + (OTHER,)),
    "where": frozenset(UNDECRYPTABLE_PLACES + (OTHER,)),
    "component": frozenset(COMPONENTS + (OTHER,)),
    "source": frozenset(SANCTION_SOURCES + (OTHER,)),
    "state": frozenset(LIVE_STATES),
    "dependency": frozenset(DEPENDENCIES),
    "le": _NUMBER,
    "generation": frozenset({"0", "1", "2"}),  # prometheus_client's garbage collector's
    "implementation": _VERSION_PART, "major": _VERSION_PART, "minor": _VERSION_PART,
    "patchlevel": _VERSION_PART, "version": _VERSION_PART,
}


def allowed(name: str, value: str) -> bool:
    """Whether a label of this name may carry this value."""
    rule = ALLOWED.get(name)
    if rule is None:
        return False
    if isinstance(rule, frozenset):
        return value in rule
    return rule.fullmatch(value) is not None


def one_of(value: object, choices: tuple[str, ...]) -> str:
    """The value when it is one of the fixed choices, else "other"."""
    return value if isinstance(value, str) and value in choices else OTHER


def component_of(logger_name: str) -> str:
    """The component of a logger: "bridge.encryption.crypto" -> encryption."""
    parts = logger_name.split(".")
    if parts == ["bridge"]:
        return "app"  # bridge/app.py's logger
    return one_of(parts[1] if len(parts) > 1 and parts[0] == "bridge" else "", COMPONENTS)
