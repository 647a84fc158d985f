"""End to end: the bot in encrypted DMs, created the way Element X creates them.

The client is a real E2EE device (matrix-nio with its own store) on the second homeserver, so
every key travels over federation; the bot's device lives on the first, with the bridge.
"""
from __future__ import annotations

import signal

import pytest

from bridge.lab.bridged import BridgedLab
from bridge.lab.client import LabClient
from tests.e2e.conftest import in_both_encryption_modes

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["classic", "appservice"])
def bridged(request: pytest.FixtureRequest, bridged: BridgedLab) -> BridgedLab:
    return in_both_encryption_modes(request, bridged)


async def bot_devices(client: LabClient, bot_id: str) -> dict:
    """The bot's devices and cross-signing keys, as any user sees them (/keys/query)."""
    resp = await client.api("POST", "/_matrix/client/v3/keys/query",
                            {"device_keys": {bot_id: []}})
    return {"devices": resp["device_keys"].get(bot_id, {}),
            "self_signing": resp.get("self_signing_keys", {}).get(bot_id)}


def undecryptable(client: LabClient, room_id: str) -> list:
    return [s for s in client.log if s.room_id == room_id and s.undecryptable
            and not s.decrypted_later]


async def test_encrypted_dm_greets_answers_and_survives_a_restart(bridged: BridgedLab):
    bot = bridged.bot_id
    alice = await bridged.client(1, "Alice", encrypted=True)
    mark = alice.mark()
    dm = await alice.create_dm(bot, encrypted=True)

    # The bot joins and greets, encrypted, and the greeting decrypts.
    greeting = await alice.wait_for_event(
        lambda s: s.room_id == dm and s.sender == bot and "agree" in (s.body or ""),
        since=mark, description="greeting")
    assert greeting.raw_type == "m.room.encrypted"
    assert greeting.type == "m.room.message"
    assert "18 or older" in greeting.body and "The rules" in greeting.body

    # An encrypted command is read and answered, encrypted.
    thanks = await bridged.command(alice, dm, "!agree", "Thanks")
    assert thanks.raw_type == "m.room.encrypted"
    mine = [s for s in alice.log if s.room_id == dm and s.sender == alice.user_id
            and s.section == "timeline" and s.raw_type in ("m.room.message", "m.room.encrypted")]
    assert mine and all(s.raw_type == "m.room.encrypted" for s in mine)

    # One bot device, with keys, signed by the bot's own self-signing key.
    before = await bot_devices(alice, bot)
    assert len(before["devices"]) == 1, before
    (device_id, device), = before["devices"].items()
    assert device["keys"], device
    ssk = next(iter(before["self_signing"]["keys"]))
    assert ssk in device["signatures"][bot], "the bot's device is not cross-signed"

    # After a restart: the same device, the same keys, and the DM still works both ways.
    await bridged.bridge.restart()
    help_reply = await bridged.command(alice, dm, "!help", "!start")
    assert help_reply.raw_type == "m.room.encrypted"
    await bridged.command(alice, dm, "!start", "Looking for a stranger")
    await bridged.command(alice, dm, "!stop", "You left the queue")

    # A crash, then a message under a NEW room key sent while the bridge is down: once back,
    # the key comes through the device's sync, and the message is answered exactly once.
    await bridged.bridge.stop(signal.SIGKILL)
    alice.nio.olm.outbound_group_sessions.pop(dm)  # her next message starts a new session
    mark = alice.mark()
    await alice.send_text(dm, "!start")
    await bridged.bridge.start()
    await alice.wait_for_event(
        lambda s: s.room_id == dm and s.sender == bot and "Looking for" in (s.body or ""),
        since=mark, description="reply to what was sent while the bridge was down")
    stopped = await bridged.command(alice, dm, "!stop", "You left the queue")
    helped = await bridged.command(alice, dm, "!help", "!start")
    # Everything the bot said since, whatever its wording (a second handling of !start would
    # say "already in the queue"), readable or not: one answer per command, nothing else.
    said: dict[str, str | None] = {}  # event ID -> body (a late decryption replaces None)
    for s in alice.log[mark:helped.index + 1]:
        if s.room_id == dm and s.sender == bot and s.section == "timeline" \
                and s.raw_type != "m.room.member":
            said[s.event_id] = s.body
    first = next(iter(said))
    assert list(said) == [first, stopped.event_id, helped.event_id], said
    assert "Looking for" in (said[first] or ""), said

    after = await bot_devices(alice, bot)
    assert after["devices"].keys() == {device_id}
    assert after["devices"][device_id]["keys"] == device["keys"]

    # No bot message there was ever in the clear, and nothing stayed undecryptable.
    from_bot = [s for s in alice.log if s.room_id == dm and s.sender == bot
                and s.section == "timeline" and s.raw_type != "m.room.member"]
    assert from_bot and all(s.raw_type == "m.room.encrypted" for s in from_bot)
    assert undecryptable(alice, dm) == []


async def test_undecryptable_messages_are_answered_and_the_dm_keeps_working(bridged: BridgedLab):
    """One message whose key never comes (waited for, then the sender is told), one that is
    garbage under a known key (told at once); neither stops the DM."""
    bot = bridged.bot_id
    carol = await bridged.client(0, "Carol", encrypted=True)
    dm = await bridged.open_dm(carol, encrypted=True)
    await bridged.command(carol, dm, "!agree", "Thanks")
    session_id = carol.nio.olm.outbound_group_sessions[dm].id
    curve = carol.nio.olm.account.identity_keys["curve25519"]
    for n, session in enumerate(("A" * 43, session_id)):
        mark = carol.mark()
        await carol.api("PUT", f"/_matrix/client/v3/rooms/{dm}/send/m.room.encrypted/bad{n}", {
            "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEnAKCGdhcmJhZ2U",
            "session_id": session, "sender_key": curve, "device_id": carol.nio.device_id})
        told = await carol.wait_for_event(
            lambda s: s.room_id == dm and s.sender == bot and "couldn't decrypt" in (s.body or ""),
            since=mark, description="undecryptable notice")
        assert told.raw_type == "m.room.encrypted"
        if n == 0:  # a key that never came: the bot asked carol's device for it first
            asked = [s for s in carol.log[mark:] if s.section == "to_device"
                     and s.raw_type == "m.room_key_request" and s.sender == bot]
            assert asked and asked[0].source["content"]["body"]["session_id"] == session
            assert asked[0].source["content"]["action"] == "request"
    await bridged.command(carol, dm, "!help", "!start")


async def test_a_users_new_device_reads_the_bots_later_replies(bridged: BridgedLab):
    """The bot hears of dave's new login only through its device's /sync (device list
    changes; the new device never writes): its next session must include that device."""
    bot = bridged.bot_id
    dave = await bridged.client(1, "Dave", encrypted=True)
    dm = await bridged.open_dm(dave, encrypted=True)
    await bridged.command(dave, dm, "!agree", "Thanks")
    second = await LabClient.login(
        await dave.user.homeserver.login(dave.user_id.split(":")[0][1:], dave.user.password),
        encrypted=True)
    bridged.clients.append(second)
    await second.start_syncing()  # uploads its keys: the bot's homeserver is told over federation
    # The device list change reaches the bot a moment later; ask until a reply is readable on
    # the new device (each attempt waits on events, nothing sleeps).
    for attempt in range(10):
        mark = second.mark()
        reply = await bridged.command(dave, dm, "!help", "!start")
        seen = await second.wait_for_event(
            lambda s: s.event_id == reply.event_id and s.section == "timeline", since=mark,
            description="the reply on the second device")
        if not seen.undecryptable:
            break
    else:
        raise AssertionError("no reply of the bot ever decrypted on dave's new device")
    assert seen.type == "m.room.message" and "!start" in seen.body
    assert seen.sender == bot
