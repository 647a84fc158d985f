"""The notice that tells one side the partner's Matrix ID: a matrix.to link in the plain body
and an HTML link in formatted_body, so a client can open a DM from it. Pure."""
from __future__ import annotations

import html
from urllib.parse import quote

from bridge.i18n import messages
from bridge.i18n.direction import mark_rtl

# Stands in for the contact while the sentence is rendered (and HTML-escaped, for the
# formatted body); no message contains it.
_SLOT = "\x00contact\x00"


def matrix_to(user_id: str) -> str:
    """https://matrix.to/#/@user:server. '@' and ':' stay as they are (every client reads
    them); anything else a historical user ID may hold is percent-encoded."""
    return "https://matrix.to/#/" + quote(user_id, safe="@:")


def revealed_content(key: str, partner_id: str, prefix: str, language: str = "en",
                     rtl: bool = False) -> dict:
    """An m.notice naming `partner_id` (and nothing else about them), mentioning no one, in
    the reader's language (right to left where it reads so; see bridge/i18n/direction.py)."""
    link = matrix_to(partner_id)
    sentence = messages.text(key, language, prefix=prefix, contact=_SLOT)
    if rtl:
        sentence = mark_rtl(sentence)
    anchor = f'<a href="{html.escape(link)}">{html.escape(partner_id)}</a>'
    formatted = html.escape(sentence, quote=False).replace(_SLOT, anchor).replace("\n", "<br>")
    return {
        "msgtype": "m.notice",
        "body": sentence.replace(_SLOT, f"{partner_id} ({link})"),
        "format": "org.matrix.custom.html",
        "formatted_body": f'<div dir="rtl">{formatted}</div>' if rtl else formatted,
        # A link to a user is a mention to clients: say explicitly that nobody is pinged.
        "m.mentions": {},
    }
