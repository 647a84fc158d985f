"""What a command is (parsed from a message) and what answers it (a message key and its
values): shared by the bot's commands and the moderators'. Pure."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reply:
    key: str  # a bridge.i18n.messages key
    # Text, or words rendered in the recipient's language when sent (bridge.i18n.messages.Value).
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Parsed:
    name: str  # lower-case, without the prefix
    args: str


def parse(body: str, prefix: str) -> Parsed | None:
    """'!Start cinema, jazz' -> Parsed('start', 'cinema, jazz'); None when not a command."""
    if not body.startswith(prefix):
        return None
    # Any whitespace ends the name: clients may put a newline or tab after it.
    head, args = (body[len(prefix):].split(maxsplit=1) + ["", ""])[:2]
    if not head:
        return None
    return Parsed(head.lower(), args.strip())
