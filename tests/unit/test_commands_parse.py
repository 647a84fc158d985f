"""Recognising commands: prefix, name (case-insensitive) and arguments."""
from __future__ import annotations

import pytest

from bridge.replies import Parsed, parse


@pytest.mark.parametrize("body, prefix, expected", [
    ("!start", "!", Parsed("start", "")),
    ("!Start cinema, jazz", "!", Parsed("start", "cinema, jazz")),
    ("!START   cinema  ", "!", Parsed("start", "cinema")),
    ("  !next", "!", None),
    ("!next  ", "!", Parsed("next", "")),
    ("!report he was rude", "!", Parsed("report", "he was rude")),
    ("sb!help", "sb!", Parsed("help", "")),
    ("!help", "sb!", None),
    ("hello", "!", None),
    ("", "!", None),
    ("!", "!", None),
    ("!   ", "!", None),
    ("start", "!", None),
    ("!start\tcinema", "!", Parsed("start", "cinema")),
    ("!start\ncinema, jazz", "!", Parsed("start", "cinema, jazz")),
    ("!start cinema\njazz", "!", Parsed("start", "cinema\njazz")),
    ("!\u00c9TAT", "!", Parsed("\u00e9tat", "")),
])
def test_parse(body, prefix, expected):
    assert parse(body, prefix) == expected
