"""The logs' safety net: user IDs redacted at INFO and above, the bridge's own kept."""
import io
import json
import logging

import pytest

from bridge.__main__ import JsonFormatter
from bridge.privacy.log_filter import REDACTED, RedactUserIds

OURS = {"@strangerbot:chat.example.net", "@_stranger_abc123:chat.example.net",
        "@mod:chat.example.net"}


def logger_with(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(RedactUserIds(lambda user_id: user_id in OURS))
    logger = logging.getLogger(f"test.redact.{id(out)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


@pytest.mark.parametrize("user_id", [
    "@alice:example.org", "@Bob.Smith_1=x/y:matrix.example.com:8448", "@eve:[::1]:8448",
    "@zoë:127.0.0.1", "@a:b",
])
def test_user_ids_are_redacted_at_info_and_above(user_id):
    logger, out = logger_with(logging.Formatter("%(levelname)s %(message)s"))
    logger.info("Device of %s isn't cross-signed", user_id)
    logger.warning(f"Didn't get any devices for user {user_id}")
    logger.error("in (%s), '%s' and \"%s\"", user_id, user_id, user_id)
    text = out.getvalue()
    assert user_id not in text
    assert text.count(REDACTED) == 5


def test_the_bridges_own_ids_are_kept_and_room_ids_untouched():
    logger, out = logger_with(logging.Formatter("%(message)s"))
    logger.info("%s invited by %s into !room:chat.example.net, #alias:example.org",
                "@_stranger_abc123:chat.example.net", "@mod:chat.example.net")
    logger.info("bot %s; mail me at someone@example.org", "@strangerbot:chat.example.net")
    assert out.getvalue() == (
        "@_stranger_abc123:chat.example.net invited by @mod:chat.example.net into "
        "!room:chat.example.net, #alias:example.org\n"
        "bot @strangerbot:chat.example.net; mail me at someone@example.org\n")


def test_debug_is_left_as_it_is():
    logger, out = logger_with(logging.Formatter("%(message)s"))
    logger.debug("request as %s", "@alice:example.org")
    assert "@alice:example.org" in out.getvalue()


@pytest.mark.parametrize("formatter", [logging.Formatter("%(message)s"), JsonFormatter()])
def test_exceptions_are_redacted_too(formatter):
    logger, out = logger_with(formatter)
    try:
        raise RuntimeError("M_FORBIDDEN: @alice:example.org is not in the room")
    except RuntimeError:
        logger.exception("Failed to handle an event of %s", "@bob:example.org")
    text = out.getvalue()
    assert "@alice:example.org" not in text and "@bob:example.org" not in text
    assert "M_FORBIDDEN" in text and "RuntimeError" in text
    if isinstance(formatter, JsonFormatter):
        assert REDACTED in json.loads(text)["exception"]
