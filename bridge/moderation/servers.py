"""Who may use the bridge at all, by homeserver: bridge.allowed_servers and
bridge.denied_servers (globs, see globs.py). Pure."""
from __future__ import annotations

from dataclasses import dataclass

from bridge.moderation.globs import server_matches, server_of
from bridge.moderation.restriction import Restriction


@dataclass(frozen=True)
class ServerLists:
    allowed: tuple[str, ...]  # empty: every server
    denied: tuple[str, ...]

    @classmethod
    def from_config(cls, config) -> "ServerLists":
        return cls(tuple(config["bridge.allowed_servers"] or ()),
                   tuple(config["bridge.denied_servers"] or ()))


def server_allowed(lists: ServerLists, server_name: str) -> bool:
    """Denied wins over allowed; an empty allow list lets every server in."""
    if any(server_matches(p, server_name) for p in lists.denied):
        return False
    return not lists.allowed or any(server_matches(p, server_name) for p in lists.allowed)


def server_restriction(lists: ServerLists, user_id: str) -> Restriction | None:
    """The restriction a user's homeserver puts on them by this bridge's own config."""
    if server_allowed(lists, server_of(user_id)):
        return None
    return Restriction("server_not_allowed", "", None, "config")
