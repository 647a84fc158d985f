"""One attachment from a user's room copied for their partner's room.

Download (as the ghost in the sender's room), decrypt when it came encrypted, clean (images
and stickers: Pillow; other kinds pass as bytes, see README), thumbnail, and upload as the
partner's ghost, encrypted when the partner's room is. Refusals come back as Refused, for
the relayer to answer with a notice. Repeating a copy after a crash only uploads again.
"""
from __future__ import annotations

import asyncio
import logging

from bridge.config import Config
from bridge.media import transfer
from bridge.media.clean import CleanImage, Unclean, clean_image, thumbnail
from bridge.media.kinds import Attachment, Thumbnail, kind_of, neutral_filename, neutral_mimetype
from bridge.portal import Portal
from bridge.refused import Refused
from bridge.store.conversations import Side

log = logging.getLogger("bridge.media")

_CLEANED_KINDS = ("images", "stickers")  # decoded and re-encoded by Pillow
# Images cleaned at once, across all rooms: each can hold a few hundred MB of pixels while
# decoded (bridge.media.max_pixels), and the work is CPU-bound.
CLEANING_AT_ONCE = 2


class MediaCopier:
    def __init__(self, config: Config, portal: Portal) -> None:
        self.config = config
        self.portal = portal
        self._cleaning = asyncio.Semaphore(CLEANING_AT_ONCE)

    def enabled(self, kind: str) -> bool:
        return bool(self.config[f"bridge.media.{kind}"])

    async def copy(self, side: Side, partner: Side, event: dict) -> Attachment | Refused:
        content = event.get("content")
        kind = kind_of(event.get("type"), content)
        if kind is None or not isinstance(content, dict):
            return Refused("malformed", "no media")
        if not self.enabled(kind):
            return Refused("media_disabled", f"{kind} are switched off")
        try:
            data = await self._fetch(side, content)
            if kind in _CLEANED_KINDS:
                return await self._copy_image(kind, data, partner)
            return await self._copy_bytes(kind, data, content, partner)
        except (transfer.Unavailable, Unclean) as refusal:
            return Refused(refusal.args[0], f"{kind} not copied")

    async def _fetch(self, side: Side, content: dict) -> bytes:
        max_bytes = self.config["bridge.media.max_bytes"]
        material = None
        if content.get("file") is not None:
            mxc, material = transfer.encrypted_source(content["file"])
        else:
            mxc = transfer.parse_mxc(content.get("url"))
        downloader = self.portal.ghost(side.ghost_id)  # a member of the room it was sent in
        data = await transfer.download(downloader, mxc, max_bytes)
        # (The ciphertext is as long as the plaintext, AES-CTR: the same cap holds.)
        return data if material is None else transfer.decrypt(data, material)

    async def _encrypted(self, partner: Side) -> bool:
        devices = self.portal.ghost_devices
        return devices is not None and await devices.is_encrypted(partner.ghost_id,
                                                                  partner.room_id)

    async def _copy_image(self, kind: str, data: bytes, partner: Side) -> Attachment:
        max_pixels = self.config["bridge.media.max_pixels"]
        async with self._cleaning:
            image = await asyncio.to_thread(clean_image, data, max_pixels)
            # Stickers are shown small and, by the spec, carry a plain url: no thumbnail.
            small = await asyncio.to_thread(thumbnail, image) if kind == "images" else None
        # m.sticker has no encrypted-file field in the spec: stickers always go as url.
        encrypted = kind == "images" and await self._encrypted(partner)
        ghost = self.portal.ghost(partner.ghost_id)
        filename = neutral_filename(kind, image.mimetype)
        source, size = await transfer.upload(ghost, image.data, image.mimetype, filename, encrypted)
        thumb = None
        if small is not None:
            thumb = await self._thumbnail(ghost, small, encrypted)
        return Attachment(kind, source, filename, image.mimetype, size, image.width,
                          image.height, thumb)

    @staticmethod
    async def _thumbnail(ghost, small: CleanImage, encrypted: bool) -> Thumbnail:
        source, size = await transfer.upload(ghost, small.data, small.mimetype, None, encrypted)
        key = "thumbnail_file" if encrypted else "thumbnail_url"
        return Thumbnail({key: next(iter(source.values()))}, small.mimetype, size,
                         small.width, small.height)

    async def _copy_bytes(self, kind: str, data: bytes, content: dict,
                          partner: Side) -> Attachment:
        """Voice, audio, video and files: Pillow cannot clean them, so the bytes pass as they
        are (their inner metadata included, see README); every field around them is ours."""
        info = content.get("info")
        mimetype = neutral_mimetype(info.get("mimetype") if isinstance(info, dict) else None)
        filename = neutral_filename(kind, mimetype)
        source, size = await transfer.upload(self.portal.ghost(partner.ghost_id), data,
                                             mimetype, filename, await self._encrypted(partner))
        return Attachment(kind, source, filename, mimetype, size)
