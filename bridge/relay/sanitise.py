"""The anonymity boundary: every relayed event's content passes through `sanitise`.

The output is built from scratch (allow-list): only keys we understand are copied, after
checking their types, so nothing a client or a future spec adds can carry the sender's
identity across. Pure: no I/O; the caller supplies the event-id mapping.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bridge.media.kinds import VOICE_MARKER, Attachment
from bridge.refused import Refused
from bridge.relay.html import HTML_FORMAT, clean_html, scrub_names


class _Refuse(Exception):
    """Raised with Refused's fields wherever a check fails; sanitise() returns the Refused."""


@dataclass(frozen=True)
class _Ctx:
    map_event_id: Callable[[str], str | None]
    max_body_bytes: int
    media: Attachment | None = None  # the bridge's copy of the event's attachment

    def map(self, event_id: str) -> str | None:
        mapped = self.map_event_id(event_id)
        return mapped if isinstance(mapped, str) else None


# --- field checks ----------------------------------------------------------------------------

def _opt(d: dict, key: str, kind: type) -> object:
    value = d.get(key)  # JSON null counts as absent
    if value is not None and not isinstance(value, kind):
        raise _Refuse("malformed", f"{key} has the wrong type")
    return value


def _text(d: dict, key: str, limit: int) -> str:
    value = d.get(key)
    if not isinstance(value, str):
        raise _Refuse("malformed", f"{key} missing or not a string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates: not valid Unicode text, and not JSON-safe
        raise _Refuse("malformed", f"{key} is not valid UTF-8") from None
    if size > limit:
        raise _Refuse("too_long", f"{key} is {size} bytes")
    return value


def _event_id(d: dict, key: str = "event_id") -> str:
    try:
        value = _text(d, key, 255)  # the spec's event id limit
    except _Refuse:
        value = ""
    if not value.startswith("$"):
        raise _Refuse("malformed", f"{key} is not an event id")
    return value


# --- m.room.message --------------------------------------------------------------------------

def _strip_body_fallback(body: str) -> str:
    lines = body.split("\n")
    i = 0
    while i < len(lines) and (lines[i].startswith("> ") or lines[i] == ">"):
        i += 1
    if 0 < i < len(lines) and lines[i] == "":
        i += 1
    return "\n".join(lines[i:])


def _text_like(content: dict, ctx: _Ctx, is_reply: bool) -> dict:
    body = _text(content, "body", ctx.max_body_bytes)
    if is_reply:
        body = _strip_body_fallback(body)
    out = {"msgtype": content["msgtype"], "body": body}
    fmt = _opt(content, "format", str)
    if "formatted_body" in content:
        formatted = _text(content, "formatted_body", 2 * ctx.max_body_bytes)
        if fmt == HTML_FORMAT:
            cleaned, names = clean_html(formatted, 2 * ctx.max_body_bytes)
            out["body"] = scrub_names(body, names)
            if cleaned is not None:
                out["format"], out["formatted_body"] = HTML_FORMAT, cleaned
    return out


# --- media (m.image, m.audio, m.video, m.file, m.sticker) -----------------------------------
# Built only from the bridge's own copy (bridge/media/): its new mxc or encrypted file, a
# neutral file name and the info the bridge computed. The sender's url, file, file name,
# info and thumbnails are never read here.

# Which of the bridge's media kinds (bridge/media/kinds.py) each msgtype may carry.
_MEDIA_KINDS = {"m.image": ("images",), "m.audio": ("audio", "voice"), "m.video": ("video",),
                "m.file": ("files",)}


def _media_of(ctx: _Ctx, kinds: tuple[str, ...]) -> Attachment:
    if ctx.media is None or ctx.media.kind not in kinds:
        raise _Refuse("unsupported_msgtype", "media without the bridge's copy")
    return ctx.media


def _media_message(content: dict, ctx: _Ctx, is_reply: bool) -> dict:
    msgtype = content["msgtype"]
    media = _media_of(ctx, _MEDIA_KINDS[msgtype])
    out = {"msgtype": msgtype, "body": media.filename, "info": media.info(), **media.source}
    # A caption (the spec's media captions): `filename` present and `body` differing from
    # it. It crosses like a text message, through the same checks; the name never does.
    filename = _opt(content, "filename", str)
    if filename is not None and content.get("body") != filename:
        caption = _text_like({**content, "msgtype": "m.text"}, ctx, is_reply)
        if caption["body"].strip():
            out["filename"] = media.filename
            out.update({k: v for k, v in caption.items() if k != "msgtype"})
    if media.kind == "voice":
        out[VOICE_MARKER] = {}  # clients show a voice message (MSC3245), nothing else kept
    return out


STICKER_BODY = "Sticker"  # a pack's description text is not copied


def _sticker(content: dict, ctx: _Ctx) -> dict:
    media = _media_of(ctx, ("stickers",))
    out = {"body": STICKER_BODY, "info": media.info(), **media.source}
    relates = _opt(content, "m.relates_to", dict)
    if relates is not None:
        relation, _ = _relation(relates, ctx)
        if relation is not None:
            out["m.relates_to"] = relation
    return out


# Per-msgtype handlers.
_MSGTYPES: dict[str, Callable[[dict, _Ctx, bool], dict]] = {
    "m.text": _text_like, "m.notice": _text_like, "m.emote": _text_like,
    "m.image": _media_message, "m.audio": _media_message, "m.video": _media_message,
    "m.file": _media_message,
}


def _message(content: dict, ctx: _Ctx, is_reply: bool = False) -> dict:
    msgtype = _opt(content, "msgtype", str)
    if msgtype is None:
        raise _Refuse("malformed", "msgtype missing")
    if msgtype == "m.location":
        raise _Refuse("location", "locations never cross")
    handler = _MSGTYPES.get(msgtype)
    if handler is None:
        raise _Refuse("unsupported_msgtype", "msgtype not relayed")
    out = handler(content, ctx, is_reply)
    if _opt(content, "m.mentions", dict) is not None:
        out["m.mentions"] = {}  # present but empty: no pings, and no body-matching fallback
    return out


def _relation(relates: dict, ctx: _Ctx) -> tuple[dict | None, bool]:
    """The mapped relation (None to drop it) and whether the event is a reply."""
    reply = _opt(relates, "m.in_reply_to", dict)
    mapped_reply = ctx.map(_event_id(reply)) if reply is not None else None
    if _opt(relates, "rel_type", str) == "m.thread":
        root = ctx.map(_event_id(relates))
        if root is None:
            return None, reply is not None
        thread: dict = {"rel_type": "m.thread", "event_id": root}
        falling_back = _opt(relates, "is_falling_back", bool)
        if falling_back is not None:
            thread["is_falling_back"] = falling_back
        if mapped_reply is not None:
            thread["m.in_reply_to"] = {"event_id": mapped_reply}
        return thread, reply is not None
    # Other rel_types (m.reference, unknown) are not relayed yet: the message goes as plain.
    if mapped_reply is not None:
        return {"m.in_reply_to": {"event_id": mapped_reply}}, True
    return None, reply is not None


def _edit(content: dict, relates: dict, ctx: _Ctx) -> dict:
    target = _event_id(relates)
    new = _opt(content, "m.new_content", dict)
    if new is None:
        raise _Refuse("malformed", "edit without m.new_content")
    # Relations inside m.new_content are never copied; nor is media (no media edits).
    inner = _message(new, _Ctx(ctx.map_event_id, ctx.max_body_bytes))
    mapped = ctx.map(target)
    if mapped is None:
        raise _Refuse("unknown_target", "edited event is not relayed")
    # The fallback is rebuilt from the sanitised new content rather than trusted.
    out = {"msgtype": inner["msgtype"], "body": "* " + inner["body"]}
    if "formatted_body" in inner:
        out["format"], out["formatted_body"] = HTML_FORMAT, "* " + inner["formatted_body"]
    if _opt(content, "m.mentions", dict) is not None or "m.mentions" in inner:
        out["m.mentions"] = {}
    out["m.new_content"] = inner
    out["m.relates_to"] = {"rel_type": "m.replace", "event_id": mapped}
    return out


def _room_message(content: dict, ctx: _Ctx) -> dict:
    relates = _opt(content, "m.relates_to", dict)
    if relates is None:
        return _message(content, ctx)
    if relates.get("rel_type") == "m.replace":
        return _edit(content, relates, ctx)
    relation, is_reply = _relation(relates, ctx)
    out = _message(content, ctx, is_reply)
    if relation is not None:
        out["m.relates_to"] = relation
    return out


MAX_REACTION_KEY_BYTES = 256  # an emoji, or a few words; not a message in disguise


def _reaction(content: dict, ctx: _Ctx) -> dict:
    relates = _opt(content, "m.relates_to", dict)
    if relates is None or _opt(relates, "rel_type", str) != "m.annotation":
        raise _Refuse("malformed", "reaction without an annotation")
    key = _opt(relates, "key", str)
    if not key:
        raise _Refuse("malformed", "reaction without a key")
    if len(key.encode("utf-8")) > MAX_REACTION_KEY_BYTES:
        raise _Refuse("too_long", "reaction key too long")
    if key.startswith("mxc://"):
        # A custom emoji (MSC4027) is an image on the sender's homeserver.
        raise _Refuse("custom_reaction", "custom emoji reaction")
    mapped = ctx.map(_event_id(relates))
    if mapped is None:
        raise _Refuse("unknown_target", "reacted-to event is not relayed")
    return {"m.relates_to": {"rel_type": "m.annotation", "event_id": mapped, "key": key}}


def redacted_event_id(event: dict) -> str | None:
    """The event a redaction takes back: `redacts` is in the content from room version 11
    on, at the top level before."""
    content = event.get("content")
    for where in (content if isinstance(content, dict) else {}, event):
        target = where.get("redacts")
        if isinstance(target, str) and target.startswith("$"):
            return target
    return None


# Per-event-type handlers (redactions are mirrored by the relayer: they have no content to
# carry across, only a mapped target).
_EVENT_TYPES: dict[str, Callable[[dict, _Ctx], dict]] = {
    "m.room.message": _room_message, "m.reaction": _reaction, "m.sticker": _sticker,
}
# Event types refused with a reason of their own (what the sender is told).
_REFUSED_EVENT_TYPES = {
    "m.poll.start": "poll", "org.matrix.msc3381.poll.start": "poll",
    "m.poll.response": "poll", "org.matrix.msc3381.poll.response": "poll",
    "m.poll.end": "poll", "org.matrix.msc3381.poll.end": "poll",
}


def sanitise(
    event_type: str,
    content: object,
    *,
    map_event_id: Callable[[str], str | None],
    max_body_bytes: int = 32768,
    media: Attachment | None = None,
) -> dict | Refused:
    """Content safe to send to the partner room, or why the event can't be relayed.
    `media`: the bridge's copy of the event's attachment (media events need one)."""
    handler = _EVENT_TYPES.get(event_type) if isinstance(event_type, str) else None
    if handler is None:
        return Refused(_REFUSED_EVENT_TYPES.get(event_type, "unsupported_event"),
                       "event type not relayed")
    if not isinstance(content, dict):
        return Refused("malformed", "content is not an object")
    try:
        return handler(content, _Ctx(map_event_id, max_body_bytes, media))
    except _Refuse as refusal:
        return Refused(*refusal.args)
