"""End to end: attachments cross cleaned and re-hosted, both ways, plain, encrypted and mixed.

Real clients on two federating homeservers (the bridge on the first). The sender uploads a
JPEG carrying EXIF GPS, camera, date and their display name, or a PNG with text chunks; the
partner downloads what arrives and checks the bytes: no metadata, nothing of the sender,
hosted on the bridge's homeserver under a new media ID, named neutrally.
"""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from bridge.lab.bridged import BridgedLab
from bridge.lab.client import LabClient, Seen
from bridge.lab.media import received_media, send_media, upload
from tests.e2e.anonymity import identifiers_of, leaks
from tests.media_samples import has_metadata, jpeg_with_exif, png_with_text

pytestmark = pytest.mark.e2e

STICKER_EVENT = "m.sticker"


def media_event(client: LabClient, room_id: str, since: int, *, event_type="m.room.message",
                msgtype: str | None = "m.image"):
    """Wait for an attachment the ghost relayed into `room_id`."""
    def match(s: Seen) -> bool:
        return (s.room_id == room_id and s.section == "timeline" and s.type == event_type
                and s.sender != client.user_id
                and (msgtype is None or s.content.get("msgtype") == msgtype))
    return client.wait_for_event(match, since=since, description=f"{event_type} {msgtype}")


async def check_received(bridged: BridgedLab, viewer: LabClient, seen: Seen, sender: LabClient,
                         forbidden: list[str], *, encrypted: bool,
                         room_encrypted: bool | None = None) -> bytes:
    """The relayed attachment: on the bridge's homeserver, named neutrally, an encrypted file
    exactly when the viewer's room is encrypted, and its bytes clean of metadata and of the
    sender. Returns the bytes. (`room_encrypted`: when it differs: stickers always carry a
    plain url, as the spec has them.)"""
    content = seen.content
    source = content["file"]["url"] if encrypted else content["url"]
    assert ("file" in content) is encrypted and ("url" in content) is not encrypted
    assert source.startswith(f"mxc://{bridged.bridge_domain}/")
    room_encrypted = encrypted if room_encrypted is None else room_encrypted
    assert seen.raw_type == ("m.room.encrypted" if room_encrypted else seen.type)
    data = await received_media(viewer, content)
    assert content["info"]["size"] == len(data)
    assert has_metadata(data) == []
    for label, value in identifiers_of(sender).items():
        if label == "server name" and value == bridged.bridge_domain:
            continue
        assert value.encode() not in data, f"{label} in the relayed bytes"
    scanned = json.dumps(content)
    for value in forbidden:
        assert value not in scanned and value.encode() not in data, value
    return data


def room_leaks(bridged: BridgedLab, viewer: LabClient, room_id: str, sender: LabClient,
               forbidden: list[str]) -> list[str]:
    """The anonymity scan over everything the viewer received in the room (raw and
    decrypted), plus the sender's media IDs, event IDs and file names."""
    events = viewer.events_in(room_id) + viewer.decrypted_events_in(room_id)
    found = leaks(events, sender, allowed_servers={bridged.bridge_domain})
    text = json.dumps(events)
    return found + [value for value in forbidden if value in text]


async def image_both_ways(bridged: BridgedLab, a: LabClient, a_room: str, b: LabClient,
                          b_room: str, *, a_encrypted: bool, b_encrypted: bool) -> None:
    # a -> b: a JPEG with EXIF GPS and a's display name as its artist.
    jpeg = jpeg_with_exif(artist=a.display_name, size=(1200, 900))
    mark = b.mark()
    filename = f"IMG_{a.display_name}_gps.jpg"
    a_event = await send_media(a, a_room, jpeg, filename=filename, mimetype="image/jpeg",
                               encrypt=a_encrypted)
    seen = await media_event(b, b_room, mark)
    forbidden_a = [a_event, filename, "IMG_"]
    data = await check_received(bridged, b, seen, a, forbidden_a, encrypted=b_encrypted)
    assert seen.content["body"] == "image.jpg" and seen.content["info"]["mimetype"] == "image/jpeg"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (1200, 900)
    # The thumbnail is the bridge's, from the cleaned image, encrypted like the image.
    info = seen.content["info"]
    assert ("thumbnail_file" in info) is b_encrypted and ("thumbnail_url" in info) is not b_encrypted
    thumb = await received_media(b, seen.content, thumbnail=True)
    assert has_metadata(thumb) == [] and a.display_name.encode() not in thumb
    assert (info["thumbnail_info"]["w"], info["thumbnail_info"]["h"]) == (800, 600)

    # b -> a: a PNG with text chunks naming b, with a caption.
    png = png_with_text(author=b.display_name)
    mark = a.mark()
    b_filename = f"{b.display_name}-screenshot.png"
    b_event = await send_media(b, b_room, png, filename=b_filename, mimetype="image/png",
                               encrypt=b_encrypted, caption="look at this")
    seen = await media_event(a, a_room, mark)
    forbidden_b = [b_event, b_filename, "screenshot"]
    data = await check_received(bridged, a, seen, b, forbidden_b, encrypted=a_encrypted)
    assert seen.content["body"] == "look at this" and seen.content["filename"] == "image.png"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.mode == "RGBA" and image.text == {}

    assert room_leaks(bridged, b, b_room, a, forbidden_a) == []
    assert room_leaks(bridged, a, a_room, b, forbidden_b) == []


async def test_images_both_ways_plain(bridged: BridgedLab):
    alice, alice_dm = await bridged.ready_user(0, "Alice")
    bob, bob_dm = await bridged.ready_user(1, "Bob")
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
    await image_both_ways(bridged, alice, alice_room, bob, bob_room,
                          a_encrypted=False, b_encrypted=False)


async def test_images_both_ways_encrypted(bridged: BridgedLab):
    carol, carol_dm = await bridged.ready_user(1, "Carol", encrypted=True)
    dave, dave_dm = await bridged.ready_user(0, "Dave", encrypted=True)
    carol_room, dave_room = await bridged.pair(carol, carol_dm, dave, dave_dm)
    await image_both_ways(bridged, carol, carol_room, dave, dave_room,
                          a_encrypted=True, b_encrypted=True)


async def test_images_both_ways_mixed(bridged: BridgedLab):
    erin, erin_dm = await bridged.ready_user(1, "Erin", encrypted=True)
    fred, fred_dm = await bridged.ready_user(0, "Fred")
    erin_room, fred_room = await bridged.pair(erin, erin_dm, fred, fred_dm)
    await image_both_ways(bridged, erin, erin_room, fred, fred_room,
                          a_encrypted=True, b_encrypted=False)


async def test_sticker_crosses_and_a_switched_off_file_is_refused(bridged: BridgedLab):
    gina, gina_dm = await bridged.ready_user(1, "Gina")
    hugo, hugo_dm = await bridged.ready_user(0, "Hugo", encrypted=True)
    gina_room, hugo_room = await bridged.pair(gina, gina_dm, hugo, hugo_dm)

    # A sticker (m.sticker, url only) crosses re-hosted with a neutral description.
    mark = hugo.mark()
    sticker_event = await send_media(gina, gina_room, png_with_text(author=gina.display_name),
                                     filename="Gina's cat", mimetype="image/png",
                                     event_type=STICKER_EVENT)
    seen = await media_event(hugo, hugo_room, mark, event_type=STICKER_EVENT, msgtype=None)
    assert seen.content["body"] == "Sticker"
    await check_received(bridged, hugo, seen, gina, [sticker_event, "Gina's cat"], encrypted=False,
                         room_encrypted=True)

    # A file, with files switched off (the default): the sender is told, nothing crosses.
    mark, hugo_mark = gina.mark(), hugo.mark()
    file_event = await send_media(gina, gina_room, b"%PDF-1.4 " + gina.display_name.encode(),
                                  filename="gina-cv.pdf", mimetype="application/pdf",
                                  msgtype="m.file")
    told = await gina.wait_for_event(
        lambda s: s.room_id == gina_room and "kind of attachment" in (s.body or ""),
        since=mark, description="refusal notice")
    assert told.sender != gina.user_id
    await gina.send_text(gina_room, "after the file")
    await hugo.wait_for_message(hugo_room, "after the file", since=hugo_mark)
    after = [s for s in hugo.log[hugo_mark:] if s.room_id == hugo_room
             and s.type in ("m.room.message", "m.room.encrypted", STICKER_EVENT)]
    assert [s.body for s in after] == ["after the file"]
    assert room_leaks(bridged, hugo, hugo_room, gina,
                      [sticker_event, file_event, "gina-cv", "Gina's cat"]) == []


async def test_operator_switches_and_limits(bridged: BridgedLab):
    """Voice and files switched on cross as bytes with neutral names (their inner metadata is
    NOT cleaned: README says so); too large and undecryptable attachments are refused."""
    async with bridged.reconfigured(**{"bridge.media.voice": True, "bridge.media.files": True,
                                       "bridge.media.max_bytes": 200_000}):
        ines, ines_dm = await bridged.ready_user(1, "Ines", encrypted=True)
        jack, jack_dm = await bridged.ready_user(0, "Jack")
        ines_room, jack_room = await bridged.pair(ines, ines_dm, jack, jack_dm)

        voice = b"OggS\x00\x02" + bytes(range(256)) * 20
        mark = jack.mark()
        voice_event = await send_media(
            ines, ines_room, voice, filename="Voice message from Ines.ogg", mimetype="audio/ogg",
            msgtype="m.audio", encrypt=True,
            **{"org.matrix.msc3245.voice": {}, "org.matrix.msc1767.audio": {"duration": 1200}})
        seen = await media_event(jack, jack_room, mark, msgtype="m.audio")
        assert seen.content["body"] == "voice.ogg" and "org.matrix.msc3245.voice" in seen.content
        assert seen.content["info"] == {"mimetype": "audio/ogg", "size": len(voice)}
        assert seen.content["url"].startswith(f"mxc://{bridged.bridge_domain}/")
        assert await received_media(jack, seen.content) == voice  # bytes as they were

        mark = jack.mark()
        file_event = await send_media(ines, ines_room, b"%PDF-1.4 notes", filename="ines-cv.pdf",
                                      mimetype="application/pdf", msgtype="m.file", encrypt=True)
        seen = await media_event(jack, jack_room, mark, msgtype="m.file")
        assert seen.content["body"] == "file.pdf"
        assert await received_media(jack, seen.content) == b"%PDF-1.4 notes"

        # Larger than max_bytes: refused, and the sender told.
        noise = Image.frombytes("RGB", (600, 600), bytes(range(256)) * 4218 + b"\x00" * 192)
        big = io.BytesIO()
        noise.save(big, "JPEG", quality=100)
        assert len(big.getvalue()) > 200_000
        mark, jack_mark = ines.mark(), jack.mark()
        await send_media(ines, ines_room, big.getvalue(), filename="big.jpg",
                         mimetype="image/jpeg", encrypt=True)
        await ines.wait_for_event(lambda s: s.room_id == ines_room and "too large" in (s.body or ""),
                                  since=mark, description="too large notice")

        # An encrypted file whose hash does not match its bytes: refused as unreadable.
        source = await upload(ines, jpeg_with_exif(), "image/jpeg", "x.jpg", encrypt=True)
        source["file"]["hashes"]["sha256"] = "A" * 43
        mark = ines.mark()
        await ines.send_raw(ines_room, "m.room.message", {"msgtype": "m.image", "body": "x.jpg",
                                                           **source})
        await ines.wait_for_event(
            lambda s: s.room_id == ines_room and "could not be read" in (s.body or ""),
            since=mark, description="unreadable notice")

        await ines.send_text(ines_room, "after the refusals")
        await jack.wait_for_message(jack_room, "after the refusals", since=jack_mark)
        after = [s for s in jack.log[jack_mark:] if s.room_id == jack_room
                 and s.type == "m.room.message"]
        assert [s.body for s in after] == ["after the refusals"]
        assert room_leaks(bridged, jack, jack_room, ines,
                          [voice_event, file_event, "Voice message from", "ines-cv"]) == []


async def test_images_both_ways_encrypted_in_appservice_mode(bridged_appservice: BridgedLab):
    """The same with the ghosts' devices fed by appservice transactions (MSC2409/MSC3202)."""
    lab = bridged_appservice
    try:
        kate, kate_dm = await lab.ready_user(1, "Kate", encrypted=True)
        liam, liam_dm = await lab.ready_user(0, "Liam", encrypted=True)
        kate_room, liam_room = await lab.pair(kate, kate_dm, liam, liam_dm)
        await image_both_ways(lab, kate, kate_room, liam, liam_room,
                              a_encrypted=True, b_encrypted=True)
    finally:
        await lab.close_clients()
