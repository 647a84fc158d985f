"""A safety net for the logs: at INFO and above, a Matrix user ID that is not the bridge's
own (the bot, a ghost) or a moderator's is replaced by "@[user]" before it is written.

The sources are kept clean too (no log call of ours names a user, a display name or message
text at INFO or above); this catches what they cannot promise: mautrix's own warnings
("... of @someone:server"), and exception messages from the homeserver. DEBUG is left as it
is: an operator who turns it on to debug sees IDs, and is warned in the README.
"""
from __future__ import annotations

import logging
import re
from typing import Callable

# @localpart:server, the server a name, IPv4 or [IPv6] with an optional port. Localparts are
# at least one character of anything but whitespace, ':' and quotes/brackets around IDs.
USER_ID = re.compile(
    r"@[^\s:@'\"<>()\[\]{},;]+:(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?::\d{1,5})?")
REDACTED = "@[user]"


class RedactUserIds(logging.Filter):
    def __init__(self, keep: Callable[[str], bool]) -> None:
        super().__init__()
        self.keep = keep  # True for an ID that may be logged (the bot, a ghost, an admin)

    def redact(self, text: str) -> str:
        return USER_ID.sub(lambda m: m.group(0) if self.keep(m.group(0)) else REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return True
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            # Formatters use exc_text when it is set (ours too: __main__.JsonFormatter).
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True
