"""End to end: the operator's encryption switches, and encryption turned on mid-chat."""
from __future__ import annotations

from urllib.parse import quote

import pytest

from bridge.lab.bridged import BridgedLab

pytestmark = pytest.mark.e2e


async def bot_leaves_after(client, room_id: str, bot: str, text: str, mark: int):
    said = await client.wait_for_event(
        lambda s: s.room_id == room_id and s.sender == bot and text in (s.body or ""),
        since=mark, description=f"bot saying {text!r}")
    await client.wait_for_event(
        lambda s: s.room_id == room_id and s.membership == "leave" and s.state_key == bot,
        since=mark, description="bot leaving")
    return said


async def test_encryption_disallowed_bot_says_so_in_clear_and_leaves(bridged: BridgedLab):
    async with bridged.reconfigured(**{"bridge.encryption.allow": False}):
        alice = await bridged.client(1, "Alice", encrypted=True)
        mark = alice.mark()
        dm = await alice.create_dm(bridged.bot_id, encrypted=True)
        said = await bot_leaves_after(alice, dm, bridged.bot_id, "turned encryption off", mark)
        assert said.raw_type == "m.room.message"  # readable although the room is encrypted


async def test_encryption_required_refuses_plain_dms(bridged: BridgedLab):
    async with bridged.reconfigured(**{"bridge.encryption.require": True}):
        bob = await bridged.client(0, "Bob", encrypted=True)
        mark = bob.mark()
        plain = await bob.create_dm(bridged.bot_id)
        await bot_leaves_after(bob, plain, bridged.bot_id, "only talks in encrypted rooms", mark)
        # An encrypted DM is welcome.
        await bridged.open_dm(bob, encrypted=True)


async def test_plain_chat_room_keeps_working_when_the_user_turns_encryption_on(
        bridged: BridgedLab):
    # carol's client can encrypt but her DM with the bot is plain: her chat room starts plain.
    carol = await bridged.client(1, "Carol", encrypted=True)
    carol_dm = await bridged.open_dm(carol)
    await bridged.command(carol, carol_dm, "!agree", "Thanks")
    dave, dave_dm = await bridged.ready_user(0, "Dave")
    carol_room, dave_room = await bridged.pair(carol, carol_dm, dave, dave_dm)
    await carol.send_text(carol_room, "plain first")
    await dave.wait_for_message(dave_room, "plain first")

    mark = carol.mark()
    await carol.api("PUT", f"/_matrix/client/v3/rooms/{quote(carol_room)}/state/"
                           "m.room.encryption/", {"algorithm": "m.megolm.v1.aes-sha2"})
    await carol.wait_for_event(lambda s: s.room_id == carol_room and s.type == "m.room.encryption",
                               since=mark, description="encryption turned on")
    # The ghost gets a device; carol's homeserver tells her client of it (device_lists).
    ghost = next(s.sender for s in carol.log if s.room_id == carol_room
                 and s.body == "You're now chatting with a random stranger. Say hi!")
    await carol.wait_for_event(lambda s: s.section == "device_lists"
                               and ghost in s.source["changed"], since=mark,
                               description="the ghost's new device")
    await carol.send_text(carol_room, "now encrypted")
    got = await dave.wait_for_message(dave_room, "now encrypted")
    assert got.raw_type == "m.room.message"  # dave's room stays plain
    sent = next(s for s in carol.log if s.room_id == carol_room and s.body == "now encrypted")
    assert sent.raw_type == "m.room.encrypted"
    await dave.send_text(dave_room, "reply to encrypted side")
    got = await carol.wait_for_message(carol_room, "reply to encrypted side")
    assert got.raw_type == "m.room.encrypted"
