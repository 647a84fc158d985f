"""What the asker is told as a watch ends: pure, from how it ended."""
from __future__ import annotations

from bridge.portal import INVITE_FAILED, INVITE_TIMEOUT

# Why a question ended, beyond its conversation's own end reasons (bridge.portal).
ASKER_LEFT, ASKER_STOPPED, ASKER_RESTRICTED, WATCH_FAILED, ASKER_NO_SHOW = (
    "asker_left", "asker_stopped", "asker_restricted", "watch_failed", "asker_no_show")
ASKER_FORGOT = "asker_forgot"  # !forget confirm: as if they had left the watch
# The asker ended the watch (or never took it up): nothing to tell them in the room.
BY_THE_ASKER = frozenset({ASKER_LEFT, ASKER_STOPPED, ASKER_RESTRICTED, WATCH_FAILED,
                          ASKER_NO_SHOW, ASKER_FORGOT})


def watch_goodbye(end_reason: str | None, ended_by_side: int | None, name: str
                  ) -> tuple[str, int, dict[str, str]] | None:
    """(message key, number of the ghost who says it, values), or None. `ended_by_side`: the
    side of the discusser who ended the discussion (None: nobody's doing); `name`: what the
    watch calls that discusser ("Stranger 1")."""
    if end_reason in BY_THE_ASKER:
        return None
    if end_reason in (INVITE_TIMEOUT, INVITE_FAILED):
        return "watch_no_show", 1, {}
    if ended_by_side is None:
        return "watch_ended", 1, {}
    return "watch_partner_left", ended_by_side + 1, {"name": name}
