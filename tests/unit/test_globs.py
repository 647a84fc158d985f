"""Policy-list globs (`*`, `?`), server names with and without ports, allow/deny lists."""
from __future__ import annotations

import pytest

from bridge.moderation.globs import (has_glob, host_of, matches, server_matches, server_of,
                                     user_matches)
from bridge.moderation.servers import ServerLists, server_allowed, server_restriction


@pytest.mark.parametrize("pattern, text, expected", [
    ("*", "", True),
    ("*", "anything at all", True),
    ("?", "", False),
    ("?", "a", True),
    ("?", "ab", False),
    ("a*c", "ac", True),
    ("a*c", "abbbc", True),
    ("a*c", "abbbd", False),
    ("a?c", "abc", True),
    ("a?c", "ac", False),
    ("a.c", "abc", False),  # regex characters are literal
    ("[ab]", "a", False),
    ("[ab]", "[ab]", True),
    ("a+", "aa", False),
    ("x*", "x\ny", True),  # * crosses newlines too
])
def test_glob(pattern, text, expected):
    assert matches(pattern, text) is expected


def test_has_glob():
    assert has_glob("*.example.org") and has_glob("@u?:x") and not has_glob("@ann:example.org")


@pytest.mark.parametrize("pattern, user_id, expected", [
    ("@spam*:example.org", "@spammer:example.org", True),
    ("@spam*:example.org", "@spammer:example.net", False),
    ("@*:evil.example", "@x:evil.example", True),
    ("@ann:example.org", "@ann:example.org", True),
    ("@ann:example.org", "@Ann:example.org", False),  # user IDs are case-sensitive
    ("@ann:example.org", "@anna:example.org", False),
])
def test_user_rules(pattern, user_id, expected):
    assert user_matches(pattern, user_id) is expected


@pytest.mark.parametrize("server, host", [
    ("example.org", "example.org"), ("localhost:8448", "localhost"),
    ("1.2.3.4:80", "1.2.3.4"), ("[1234:5678::abcd]:5678", "[1234:5678::abcd]"),
    ("[::1]", "[::1]"),
])
def test_host_of(server, host):
    assert host_of(server) == host


def test_server_of_user_id_keeps_the_port():
    assert server_of("@ann:localhost:8449") == "localhost:8449"


@pytest.mark.parametrize("pattern, server, expected", [
    ("evil.example", "evil.example", True),
    ("evil.example", "evil.example:8448", True),  # the port is not considered...
    ("localhost:8449", "localhost:8449", True),  # ...unless the pattern names one
    ("localhost:8449", "localhost:8448", False),
    ("localhost", "localhost:8449", True),
    ("*.evil.example", "a.evil.example", True),
    ("*.evil.example", "evil.example", False),
    ("*evil.example", "notevil.example", True),
    ("evil.example", "EVIL.Example", True),  # host names are not case-sensitive
    ("evil.example", "evil.example.org", False),
    ("[::1]", "[::1]:8448", True),
])
def test_server_rules(pattern, server, expected):
    assert server_matches(pattern, server) is expected


def test_empty_allow_list_lets_everyone_in():
    assert server_allowed(ServerLists((), ()), "anywhere.example")


def test_allow_list_only_lets_its_servers_in():
    lists = ServerLists(("adults.example", "*.adults.example"), ())
    assert server_allowed(lists, "adults.example:8448")
    assert server_allowed(lists, "chat.adults.example")
    assert not server_allowed(lists, "kids.example")


def test_deny_wins_over_allow():
    lists = ServerLists(("*",), ("bad.example",))
    assert not server_allowed(lists, "bad.example")
    assert server_allowed(lists, "good.example")


def test_server_restriction_is_from_the_config_and_permanent():
    lists = ServerLists((), ("bad.example",))
    restriction = server_restriction(lists, "@ann:bad.example")
    assert restriction is not None
    assert (restriction.kind, restriction.source, restriction.until) == (
        "server_not_allowed", "config", None)
    assert server_restriction(lists, "@ann:good.example") is None
