"""The statement of reasons a restricted user gets (what, why, until when, decided how, and
how to contest it), as the EU DSA (art. 17) expects. Pure."""
from __future__ import annotations

from bridge import messages
from bridge.moderation.restriction import Restriction


def until_text(restriction: Restriction) -> str:
    if restriction.until is None:
        return messages.text("until_forever")
    return messages.text("until_time", time=restriction.until.strftime("%Y-%m-%d %H:%M UTC"))


def statement_values(restriction: Restriction) -> dict[str, str]:
    """Values for the "restricted" message."""
    return {
        "what": messages.text(f"restriction_{restriction.kind}"),
        "until": until_text(restriction),
        "reason": restriction.reason or messages.text("no_reason_given"),
        "source": messages.text(f"restriction_by_{restriction.source}"),
    }
