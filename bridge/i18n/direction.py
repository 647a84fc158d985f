"""Right-to-left bodies. Pure.

A client decides each paragraph's direction (every line of a plain body is one) from its first
strong character (Unicode bidi rule P2). A line of Arabic that starts with a command
("!start: ...") or a number would be laid out left to right. So each line of a right-to-left
body starts with U+200F RIGHT-TO-LEFT MARK: a strong right-to-left character that is
invisible, changes no letter and survives any client. (An isolate, U+2067...U+2069, would not
do: rule P2 skips what is inside one.) The HTML body says dir="rtl" too, for clients that
render formatted bodies; it keeps the marks, for those that strip the attribute."""
from __future__ import annotations

import html

RLM = "\u200f"
HTML_FORMAT = "org.matrix.custom.html"


def mark_rtl(body: str) -> str:
    return "\n".join(RLM + line for line in body.split("\n"))


def rtl_html(body: str) -> str:
    """The marked body as HTML: escaped (values such as a moderator's reason are free text),
    lines kept, the whole block right to left."""
    lines = "<br>".join(html.escape(line, quote=False) for line in mark_rtl(body).split("\n"))
    return f'<div dir="rtl">{lines}</div>'


def notice_fields(body: str, rtl: bool) -> dict[str, str]:
    """The body fields of a message written in a language of that direction."""
    if not rtl:
        return {"body": body}
    return {"body": mark_rtl(body), "format": HTML_FORMAT, "formatted_body": rtl_html(body)}
