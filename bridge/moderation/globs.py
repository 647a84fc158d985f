"""Glob matching of Matrix moderation policy entities (user IDs, server names). Pure.

The spec's glob-style matching (appendix "Glob-style matching"): `*` matches zero or more
characters, `?` exactly one; every other character stands for itself.

Server names: the policy-list module says nothing about ports, so we follow what the spec says
for its other server globs (m.room.server_acl): the suspect server's port is not considered, so
`evil.example` matches `evil.example:8448`. A pattern that names a port itself
(`localhost:8449`) is also compared with the whole server name, so one of two servers on the
same host can be named. Host names are compared case-insensitively (DNS names are), so a ban
cannot be dodged by writing `EVIL.example`; user IDs are compared exactly (the spec treats them
case-sensitively).
"""
from __future__ import annotations

import re
from functools import lru_cache

GLOB_CHARS = frozenset("*?")
# host[:port], the host possibly an IPv6 literal in brackets.
_SERVER = re.compile(r"(\[[^\]]*\]|[^:]*)(?::(\d{1,5}))?")


@lru_cache(maxsize=4096)
def _compiled(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def has_glob(pattern: str) -> bool:
    return any(c in GLOB_CHARS for c in pattern)


def matches(pattern: str, text: str, *, ignore_case: bool = False) -> bool:
    """The whole of `text` matches `pattern`."""
    return _compiled(pattern, ignore_case).fullmatch(text) is not None


def host_of(server_name: str) -> str:
    """'localhost:8448' -> 'localhost'; '[::1]:8448' -> '[::1]'; 'example.org' unchanged."""
    found = _SERVER.fullmatch(server_name)
    return found.group(1) if found else server_name


def server_of(user_id: str) -> str:
    """'@ann:example.org:8448' -> 'example.org:8448' (a user ID's server name follows the
    first colon)."""
    return user_id.partition(":")[2]


def server_matches(pattern: str, server_name: str) -> bool:
    return (matches(pattern, host_of(server_name), ignore_case=True)
            or matches(pattern, server_name, ignore_case=True))


def user_matches(pattern: str, user_id: str) -> bool:
    return matches(pattern, user_id)
