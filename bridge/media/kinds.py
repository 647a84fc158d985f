"""Which media kind an event is, and the copied attachment sanitise() builds content from.

Pure: no I/O. The kinds are the operator's switches (bridge.media.<kind>).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("images", "stickers", "voice", "audio", "video", "files")
_KIND_OF_MSGTYPE = {"m.image": "images", "m.audio": "audio", "m.video": "video", "m.file": "files"}
# MSC3245: a voice message is an m.audio carrying this (empty) marker.
VOICE_MARKER = "org.matrix.msc3245.voice"

# Neutral file names: the kind and an extension for the mimetype, nothing of the original.
_EXTENSIONS = {
    "image/jpeg": "jpg", "image/png": "png",
    "audio/ogg": "ogg", "audio/mpeg": "mp3", "audio/mp4": "m4a", "audio/webm": "weba",
    "audio/wav": "wav", "audio/x-wav": "wav", "audio/aac": "aac", "audio/flac": "flac",
    "video/mp4": "mp4", "video/webm": "webm", "video/quicktime": "mov", "video/ogg": "ogv",
    "application/pdf": "pdf", "text/plain": "txt", "application/zip": "zip",
}
_STEM = {"images": "image", "stickers": "sticker", "voice": "voice", "audio": "audio",
         "video": "video", "files": "file"}
_MIMETYPE = re.compile(r"[a-z]{1,20}/[a-z0-9][a-z0-9.+\-]{0,80}")
OCTET_STREAM = "application/octet-stream"


def kind_of(event_type: object, content: object) -> str | None:
    """The media kind of an event, or None when it carries no media of ours to copy."""
    if event_type == "m.sticker":
        return "stickers"
    if event_type != "m.room.message" or not isinstance(content, dict):
        return None
    relates = content.get("m.relates_to")
    if isinstance(relates, dict) and relates.get("rel_type") == "m.replace":
        return None  # edits carry no new media here; sanitise refuses media edits
    msgtype = content.get("msgtype")
    kind = _KIND_OF_MSGTYPE.get(msgtype) if isinstance(msgtype, str) else None
    if kind == "audio" and isinstance(content.get(VOICE_MARKER), dict):
        return "voice"
    return kind


def neutral_mimetype(claimed: object) -> str:
    """The sender's claimed mimetype when it is a plain one, else application/octet-stream
    (for bytes the bridge does not decode; images get the type Pillow wrote)."""
    return claimed if isinstance(claimed, str) and _MIMETYPE.fullmatch(claimed) else OCTET_STREAM


def neutral_filename(kind: str, mimetype: str) -> str:
    return f"{_STEM[kind]}.{_EXTENSIONS.get(mimetype, 'bin')}"


@dataclass(frozen=True)
class Thumbnail:
    source: dict  # {"thumbnail_url": mxc} or {"thumbnail_file": EncryptedFile JSON}
    mimetype: str
    size: int
    width: int
    height: int


@dataclass(frozen=True)
class Attachment:
    """An attachment copied by the bridge: every field computed by the bridge itself."""
    kind: str
    source: dict  # {"url": mxc} or {"file": EncryptedFile JSON}, on the bridge's homeserver
    filename: str  # neutral, e.g. "image.jpg"
    mimetype: str
    size: int
    width: int | None = None
    height: int | None = None
    thumbnail: Thumbnail | None = None

    def info(self) -> dict:
        info: dict = {"mimetype": self.mimetype, "size": self.size}
        if self.width is not None and self.height is not None:
            info["w"], info["h"] = self.width, self.height
        if self.thumbnail is not None:
            t = self.thumbnail
            info["thumbnail_info"] = {"mimetype": t.mimetype, "size": t.size,
                                      "w": t.width, "h": t.height}
            info.update(t.source)
        return info
