"""Moderation's pure rules: how much a report weighs, when reports add up to an automatic
suspension, how long it lasts, and parsing what moderators type. No I/O."""
from __future__ import annotations

import re
from dataclasses import dataclass

# A reporter reported by more than this many distinct others has each report weigh less.
TRUSTED_UP_TO_REPORTS_AGAINST = 1
# Someone who reported more than this share of their chats (with at least INDISCRIMINATE_MIN_CHATS
# chats) reports nearly everyone: their reports weigh less.
INDISCRIMINATE_SHARE = 0.5
INDISCRIMINATE_MIN_CHATS = 4
# The longest an automatic suspension lasts however often it repeats.
MAX_AUTO_SUSPENSION = 30 * 86400

_DURATION = re.compile(r"(\d{1,6})\s*(min|s|m|h|d|w)", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
FOREVER_WORDS = frozenset({"forever", "permanent", "permanently", "never"})
# A Matrix user ID, and a server name (host, IPv4, [IPv6], with an optional port).
_SERVER = r"(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
_USER_ID = re.compile(rf"@[^:\s]+:{_SERVER}")
_SERVER_NAME = re.compile(_SERVER)


@dataclass(frozen=True)
class ReporterStanding:
    """One reporter of a user, over the auto-suspension window."""
    reporter: str
    reported_by: int  # distinct others who reported this reporter (the reported user excluded)
    filed: int  # reports this reporter filed
    chats: int  # conversations this reporter had
    restricted: bool = False  # suspended or banned now


def report_weight(standing: ReporterStanding) -> float:
    """How much one reporter's report counts towards an automatic suspension (1: fully).
    Reported by several others: 1/n for n distinct reporters (one mistaken or retaliating
    report against them costs nothing). Reporting more than half their chats: scaled by
    half / their share (0.5 when they report everyone). Both together multiply. A reporter
    suspended or banned now counts nothing."""
    if standing.restricted:
        return 0.0
    weight = 1.0
    if standing.reported_by > TRUSTED_UP_TO_REPORTS_AGAINST:
        weight /= standing.reported_by
    if standing.chats >= INDISCRIMINATE_MIN_CHATS and standing.filed > 0:
        share = standing.filed / standing.chats
        if share > INDISCRIMINATE_SHARE:
            weight *= INDISCRIMINATE_SHARE / min(share, 1.0)
    return weight


def reports_weight(standings: list[ReporterStanding]) -> float:
    """The weight of a user's reports: each distinct reporter once."""
    seen: dict[str, float] = {}
    for standing in standings:
        seen[standing.reporter] = max(seen.get(standing.reporter, 0.0), report_weight(standing))
    return sum(seen.values())


def should_auto_suspend(standings: list[ReporterStanding], threshold: int, chats: int,
                        min_share: float) -> bool:
    """Suspend pending review once the reports' weight reaches `threshold` reporters and
    `min_share` of the user's `chats` in the window: a few mistaken reports against someone
    who chats a lot are not enough on their own."""
    weight = reports_weight(standings) + 1e-9  # (three 1/3 weights make 1, not 0.9999…)
    return weight >= threshold and weight >= min_share * chats


def auto_suspension_seconds(base: float, previous: int) -> float:
    """Each automatic suspension lasts twice the one before: base, 2 base, 4 base…, capped."""
    return min(base * 2 ** min(previous, 30), MAX_AUTO_SUSPENSION)


class ModerationInputError(ValueError):
    """What a moderator typed cannot be used; `key` is the bot's answer (bridge.i18n.messages)."""

    def __init__(self, key: str, **values: str) -> None:
        super().__init__(key)
        self.key = key
        self.values = values


def parse_duration(text: str) -> float | None:
    """'7d' -> 604800, '1h30m' -> 5400, 'forever' -> None (for ever)."""
    text = text.strip().lower()
    if text in FOREVER_WORDS:
        return None
    position, total = 0, 0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        total += int(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        position = match.end()
    if position != len(text) or total <= 0:
        raise ModerationInputError("mod_bad_duration", duration=text[:40])
    return float(total)


def looks_like_duration(word: str) -> bool:
    try:
        parse_duration(word)
        return True
    except ModerationInputError:
        return False


def user_id(text: str) -> str:
    if not _USER_ID.fullmatch(text):
        raise ModerationInputError("mod_bad_user", user=text[:100])
    return text


def server_name(text: str) -> str:
    if not _SERVER_NAME.fullmatch(text):
        raise ModerationInputError("mod_bad_server", server=text[:100])
    return text.lower()


def server_of(user: str) -> str:
    """'@ann:hs.example:8448' -> 'hs.example:8448' (lower-case: server names are)."""
    return user.partition(":")[2].lower()


def evidence_text(lines: list[str], line_chars: int = 1000, total_chars: int = 30000) -> str:
    """The evidence as one numbered block, each line and the whole cut to fit in one Matrix
    event (65 KB); '(no messages)' when there is none."""
    if not lines:
        return "(no messages)"
    out, used = [], 0
    for number, line in enumerate(lines, start=1):
        line = " ".join(line.split())
        if len(line) > line_chars:
            line = line[:line_chars] + "…"
        entry = f"{number}. {line}"
        if used + len(entry) > total_chars:
            out.append(f"… ({len(lines) - number + 1} more not shown)")
            break
        out.append(entry)
        used += len(entry) + 1
    return "\n".join(out)
