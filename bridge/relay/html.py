"""Formatted bodies for the partner: allow-listed HTML (nh3), mention pills made "Stranger",
no link that names a user, room or event. Pure; part of the anonymity boundary (sanitise.py).
"""
from __future__ import annotations

import html
import re
from urllib.parse import unquote, urlsplit

import nh3

HTML_FORMAT = "org.matrix.custom.html"
PILL_TEXT = "Stranger"
MAX_HTML_DEPTH = 100  # the spec forbids deeper nesting; deeper output could hurt the partner's client

_TAGS = {
    "font", "del", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "p", "a", "ul", "ol",
    "sup", "sub", "li", "b", "i", "u", "strong", "em", "s", "strike", "code", "hr", "br", "div",
    "table", "thead", "tbody", "tr", "th", "td", "caption", "pre", "span", "details", "summary",
}  # no img: its mxc:// src names the sender's homeserver
_COLOUR_ATTRS = {"data-mx-bg-color", "data-mx-color", "color"}
# "*": nothing, else nh3 keeps its default generic attributes (title, lang) on every tag.
_ATTRS = {"*": set(), "font": _COLOUR_ATTRS, "span": {"data-mx-bg-color", "data-mx-color", "data-mx-spoiler"},
          "a": {"href"}, "ol": {"start"}, "code": {"class"}}
# Dropped with their content; mx-reply is the reply fallback, which quotes the sender's id.
_DROP_WITH_CONTENT = {"mx-reply", "script", "style", "iframe", "noscript", "template", "textarea"}
_PILL_HREF = "matrix:x-stranger-pill"  # input matrix: hrefs all lose their href, so none can equal this

_COLOUR = re.compile(r"#[0-9A-Fa-f]{6}")
_LANGUAGE_CLASS = re.compile(r"language-[A-Za-z0-9_+#.-]{1,40}")
_MATRIX_USER_URI = re.compile(r"matrix:(//[^/]*/)?u/")
# Permalinks under a custom prefix (e.g. an Element deployment's own domain).
_USER_ID_IN_URL = re.compile(r"[/#=]@[^/:?#\s]+:[a-z0-9.\-\[\]]")
_ROOM_OR_EVENT_IN_URL = re.compile(r"[/#=][!#][^/?#\s]+:|/\$[\w\-+/=]{8,}|[?&]via=")


def _unquote_fully(s: str) -> str:
    for _ in range(3):  # double-encoded %2540 must not hide an @
        s, before = unquote(s), s
        if s == before:
            break
    return s


def _classify_href(href: str) -> str:
    """'user' (a pill: replace the whole link), 'matrix' (room/event link: drop href) or 'ok'."""
    url = _unquote_fully(href).strip().lower()
    if url.startswith("matrix:"):
        return "user" if _MATRIX_USER_URI.match(url) else "matrix"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. a broken [IPv6] host: not worth keeping
        return "matrix"
    if host in ("matrix.to", "www.matrix.to"):
        # Anything on matrix.to that is not plainly a room or event is treated as a user.
        return "matrix" if parts.fragment.lstrip("/")[:1] in ("!", "#", "$") else "user"
    if _USER_ID_IN_URL.search(url):
        return "user"
    return "matrix" if _ROOM_OR_EVENT_IN_URL.search(url) else "ok"


def _filter_attribute(tag: str, attr: str, value: str) -> str | None:
    if attr in _COLOUR_ATTRS:
        return value if _COLOUR.fullmatch(value) else None
    if attr == "start":
        return value if value.isascii() and value.isdigit() and len(value) <= 6 else None
    if attr == "class":
        return " ".join(c for c in value.split() if _LANGUAGE_CLASS.fullmatch(c)) or None
    if attr == "href":
        kind = _classify_href(value)
        return _PILL_HREF if kind == "user" else None if kind == "matrix" else value
    return value


_CLEANER = nh3.Cleaner(
    tags=_TAGS,
    clean_content_tags=_DROP_WITH_CONTENT,
    attributes=_ATTRS,
    tag_attribute_values={"a": {"target": {"_blank"}}},
    attribute_filter=_filter_attribute,
    # matrix: is allowed only so the filter sees those hrefs (nh3 drops other schemes before
    # calling it, which would keep a matrix:u/ pill's display name); the filter removes them all.
    url_schemes={"http", "https", "mailto", "matrix"},
    url_relative="deny",
    link_rel=None,
)
# nh3 output is normalised: attribute values are double-quoted with <, > and " escaped, and
# text has < escaped, so these regexes see real tags only.
_PILL = re.compile(r'<a [^>]*href="' + _PILL_HREF + r'"[^>]*>((?:(?!<a[ >]).)*?)</a>', re.DOTALL)
_TAG = re.compile(r"<(/?)([a-z][a-z0-9]*)[^>]*>")


def _text_of(fragment: str) -> str:
    return html.unescape(_TAG.sub("", fragment))


def _too_deep(cleaned: str) -> bool:
    depth = 0
    for m in _TAG.finditer(cleaned):
        if m.group(2) not in ("br", "hr"):
            depth += -1 if m.group(1) else 1
            if depth > MAX_HTML_DEPTH:
                return True
    return False


def clean_html(formatted: str, limit: int) -> tuple[str | None, list[str]]:
    """Sanitised HTML (None if nothing worth keeping) and the display names of replaced pills."""
    names: list[str] = []

    def replace_pill(m: re.Match[str]) -> str:
        names.append(_text_of(m.group(1)).strip())
        return PILL_TEXT

    cleaned = _PILL.sub(replace_pill, _CLEANER.clean(formatted))
    if (f'"{_PILL_HREF}"' in cleaned  # a pill we could not isolate: fail closed
            or not _text_of(cleaned).strip()
            or len(cleaned.encode()) > limit  # nh3 can expand input (reopened formatting tags)
            or _too_deep(cleaned)):
        return None, names
    return cleaned, names


def scrub_names(body: str, names: list[str]) -> str:
    """The plain body repeats a pill's text (a display name) where the pill was."""
    names = sorted({n for n in names if len(n) >= 2}, key=len, reverse=True)  # longest first
    if not names:
        return body
    return re.sub(rf"(?<!\w)(?:{'|'.join(map(re.escape, names))})(?!\w)", PILL_TEXT, body)
