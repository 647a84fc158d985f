"""The statement of reasons a restricted user gets (what, why, until when, decided how, and
how to contest it), as the EU DSA (art. 17) expects. Pure."""
from __future__ import annotations

from bridge.i18n import messages
from bridge.moderation.restriction import Restriction


def until_text(restriction: Restriction) -> messages.Phrase:
    if restriction.until is None:
        return messages.phrase("until_forever")
    return messages.phrase("until_time", time=restriction.until.strftime("%Y-%m-%d %H:%M UTC"))


def statement_values(restriction: Restriction) -> dict[str, messages.Value]:
    """Values for the "restricted" message, in words rendered in the user's language. (A
    moderator's reason is their own free text; an automatic suspension's is the
    bridge's own, recorded in English: that one is said in the user's words.)"""
    reason: messages.Value = restriction.reason or messages.phrase("no_reason_given")
    if restriction.reason == messages.ENGLISH["auto_suspension_reason"]:
        reason = messages.phrase("auto_suspension_reason")
    return {
        "what": messages.phrase(f"restriction_{restriction.kind}"),
        "until": until_text(restriction),
        "reason": reason,
        "source": messages.phrase(f"restriction_by_{restriction.source}"),
    }
