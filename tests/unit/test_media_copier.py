"""The copier's decisions before any byte moves: switches, and attachments it cannot fetch."""
from __future__ import annotations

import pytest

from bridge.media.copier import MediaCopier
from bridge.relay.sanitise import Refused
from bridge.store.conversations import Side

DEFAULTS = {"bridge.media.images": True, "bridge.media.stickers": True,
            "bridge.media.voice": False, "bridge.media.audio": False,
            "bridge.media.video": False, "bridge.media.files": False,
            "bridge.media.max_bytes": 1000, "bridge.media.max_pixels": 1000}


class NoNetworkPortal:
    """Any attempt to act as a ghost (download, upload) fails the test."""
    ghost_devices = None

    def ghost(self, ghost_id: str):
        raise AssertionError("the copier reached for the network")


def side(n: int) -> Side:
    return Side(1, n, f"@user{n}:hs.test", f"@_stranger_{n}:bridge.test", f"!room{n}:bridge.test",
                None, True, None)


async def copy(event: dict, **config) -> Refused:
    result = await MediaCopier({**DEFAULTS, **config}, NoNetworkPortal()).copy(side(0), side(1), event)
    assert isinstance(result, Refused)
    return result


@pytest.mark.parametrize("content", [
    {"msgtype": "m.file", "body": "cv.pdf", "url": "mxc://hs.test/a"},
    {"msgtype": "m.video", "body": "v.mp4", "url": "mxc://hs.test/a"},
    {"msgtype": "m.audio", "body": "a.mp3", "url": "mxc://hs.test/a"},
    {"msgtype": "m.audio", "body": "v.ogg", "url": "mxc://hs.test/a", "org.matrix.msc3245.voice": {}},
])
async def test_kinds_switched_off_by_default_are_refused_without_a_download(content):
    refused = await copy({"type": "m.room.message", "content": content})
    assert refused.reason == "media_disabled"


async def test_images_switched_off_are_refused():
    event = {"type": "m.room.message", "content": {"msgtype": "m.image", "url": "mxc://hs.test/a"}}
    assert (await copy(event, **{"bridge.media.images": False})).reason == "media_disabled"
    sticker = {"type": "m.sticker", "content": {"url": "mxc://hs.test/a"}}
    assert (await copy(sticker, **{"bridge.media.stickers": False})).reason == "media_disabled"


@pytest.mark.parametrize("content", [
    {"msgtype": "m.image", "body": "x"},  # no url
    {"msgtype": "m.image", "url": "https://hs.test/a.png"},
    {"msgtype": "m.image", "url": "mxc://hs.test/../../admin"},
    {"msgtype": "m.image", "file": {"v": "v2", "url": "mxc://hs.test/a"}},  # no key
    {"msgtype": "m.image", "file": "mxc://hs.test/a"},
])
async def test_malformed_sources_are_refused_before_any_request(content):
    assert (await copy({"type": "m.room.message", "content": content})).reason == "malformed"
