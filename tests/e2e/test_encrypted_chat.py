"""End to end: chat rooms follow each user's DM with the bot (bridge.encryption.default: auto).

Encrypted clients are real E2EE devices (matrix-nio with its own store). Each ghost in an
encrypted chat room has its own device: messages are attributed to it, nothing identifying
crosses at the crypto level, and it is deleted when the conversation ends.
"""
from __future__ import annotations

import asyncio
import signal

import asyncpg
import pytest

from bridge.lab.bridged import BridgedLab
from bridge.lab.client import LabClient
from tests.e2e.anonymity import assert_anonymous
from tests.e2e.conftest import in_both_encryption_modes

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["classic", "appservice"])
def bridged(request: pytest.FixtureRequest, bridged: BridgedLab) -> BridgedLab:
    return in_both_encryption_modes(request, bridged)


async def encrypted_user(lab: BridgedLab, hs: int, name: str) -> tuple[LabClient, str]:
    client = await lab.client(hs, name, encrypted=True)
    dm = await lab.open_dm(client, encrypted=True)
    await lab.command(client, dm, "!agree", "Thanks")
    return client, dm


def room_is_encrypted(client: LabClient, room_id: str) -> bool:
    return any(s.room_id == room_id and s.type == "m.room.encryption" for s in client.log)


def undecryptable(client: LabClient, room_id: str) -> list:
    return [s for s in client.log if s.room_id == room_id and s.undecryptable
            and not s.decrypted_later]


async def keys_of(client: LabClient, user_id: str) -> dict:
    return await client.api("POST", "/_matrix/client/v3/keys/query",
                            {"device_keys": {user_id: []}})


async def test_both_encrypted_messages_decrypt_both_ways_and_after_a_restart(bridged: BridgedLab):
    alice, alice_dm = await encrypted_user(bridged, 0, "Alice")
    bob, bob_dm = await encrypted_user(bridged, 1, "Bob")
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
    assert room_is_encrypted(alice, alice_room) and room_is_encrypted(bob, bob_room)

    await alice.send_text(alice_room, "secret hello from alice")
    got = await bob.wait_for_message(bob_room, "secret hello from alice")
    assert got.raw_type == "m.room.encrypted"
    ghost_in_bob_room = got.sender
    await bob.send_text(bob_room, "secret hi from bob", formatted_body="secret <b>hi</b> from bob")
    got = await alice.wait_for_message(alice_room, "secret hi from bob")
    assert got.raw_type == "m.room.encrypted" and "<b>hi</b>" in got.content["formatted_body"]
    # What each user sent was encrypted too (their client saw an encrypted room).
    assert all(s.raw_type == "m.room.encrypted" for s in alice.log
               if s.room_id == alice_room and s.sender == alice.user_id and s.body)

    # The ghosts: each has exactly one device of its own, cross-signed (nothing in it names
    # the partner: the keys/query answers are in what the final scan reads).
    ghost_in_alice_room = got.sender
    for viewer, ghost in ((bob, ghost_in_bob_room), (alice, ghost_in_alice_room)):
        keys = await keys_of(viewer, ghost)
        devices = keys["device_keys"].get(ghost, {})
        assert len(devices) == 1, devices
        # Cross-signed by the ghost's own keys (strict clients hide unsigned devices).
        (device,) = devices.values()
        (ssk,) = keys["self_signing_keys"][ghost]["keys"]
        assert ssk in device["signatures"][ghost], "the ghost's device is not cross-signed"
        (master,) = keys["master_keys"][ghost]["keys"]
        assert master in keys["self_signing_keys"][ghost]["signatures"][ghost]
    assert ghost_in_bob_room != ghost_in_alice_room

    # The bridge restarts mid-chat: the ghosts come back with the same devices.
    await bridged.bridge.restart(signal.SIGTERM)
    await alice.send_text(alice_room, "after restart from alice")
    await bob.wait_for_message(bob_room, "after restart from alice")
    await bob.send_text(bob_room, "after restart from bob")
    await alice.wait_for_message(alice_room, "after restart from bob")
    assert len((await keys_of(alice, ghost_in_alice_room))["device_keys"][ghost_in_alice_room]) == 1
    assert undecryptable(alice, alice_room) == [] and undecryptable(bob, bob_room) == []

    # When the conversation ends, the ghosts' devices are deleted with it.
    assert await key_rows(bridged, [ghost_in_alice_room, ghost_in_bob_room]) >= 8
    mark = bob.mark()
    await alice.leave(alice_room)
    await bob.wait_for_event(lambda s: s.room_id == bob_room and s.membership == "leave"
                             and s.state_key == ghost_in_bob_room, since=mark,
                             description="ghost leaving")
    for ghost in (ghost_in_alice_room, ghost_in_bob_room):
        assert (await keys_of(bob, ghost))["device_keys"].get(ghost, {}) == {}
    # ... and so are their keys in the bridge's store: none would decrypt the chat any more.
    await keys_gone_from_store(bridged, [ghost_in_alice_room, ghost_in_bob_room])

    # After the goodbyes and the clean-up: nothing either ever received (every room, every
    # to-device message raw and decrypted, device lists, key queries...) names the other.
    await bridged.cleaned_up([alice_room])
    await bridged.settled(alice, alice_dm)
    await bridged.settled(bob, bob_dm)
    assert_anonymous(bridged.bridge_domain, (alice, bob), (bob, alice))


async def key_rows(lab: BridgedLab, ghosts: list[str]) -> int:
    """The ghosts' room keys, accounts and cross-signing keys in the bridge's crypto store."""
    conn = await asyncpg.connect(lab.database_uri)
    try:
        return await conn.fetchval(
            """SELECT (SELECT count(*) FROM crypto_megolm_inbound_session
                       WHERE account_id = ANY($1::text[]))
                    + (SELECT count(*) FROM crypto_account WHERE account_id = ANY($1::text[]))
                    + (SELECT count(*) FROM crypto_cross_signing_keys
                       WHERE user_id = ANY($1::text[]))""", ghosts)
    finally:
        await conn.close()


async def keys_gone_from_store(lab: BridgedLab, ghosts: list[str], timeout: float = 30) -> None:
    """Wait until the bridge's crypto store holds no key of these ghosts (the deletion ends
    the device's clean-up, a moment after the homeserver forgot the device)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while left := await key_rows(lab, ghosts):
        assert asyncio.get_running_loop().time() < deadline, f"{left} key rows left"
        await asyncio.sleep(0.1)  # the store has no change notification to wait on


async def test_mixed_each_room_follows_its_users_dm(bridged: BridgedLab):
    carol, carol_dm = await encrypted_user(bridged, 1, "Carol")
    dave, dave_dm = await bridged.ready_user(0, "Dave")  # a client without crypto, plain DM
    carol_room, dave_room = await bridged.pair(carol, carol_dm, dave, dave_dm)
    assert room_is_encrypted(carol, carol_room)
    assert not room_is_encrypted(dave, dave_room)

    await carol.send_text(carol_room, "from the encrypted side")
    got = await dave.wait_for_message(dave_room, "from the encrypted side")
    assert got.raw_type == "m.room.message"  # plain for the client that cannot decrypt
    await dave.send_text(dave_room, "from the plain side")
    got = await carol.wait_for_message(carol_room, "from the plain side")
    assert got.raw_type == "m.room.encrypted"
    assert undecryptable(carol, carol_room) == []

    await dave.send_text(dave_room, "!stop")
    await bridged.cleaned_up([dave_room])
    await bridged.settled(carol, carol_dm)
    await bridged.settled(dave, dave_dm)
    assert_anonymous(bridged.bridge_domain, (carol, dave), (dave, carol))


async def test_an_undecryptable_message_is_reported_not_relayed(bridged: BridgedLab):
    erin, erin_dm = await encrypted_user(bridged, 0, "Erin")
    fred, fred_dm = await encrypted_user(bridged, 1, "Fred")
    erin_room, fred_room = await bridged.pair(erin, erin_dm, fred, fred_dm)
    await erin.send_text(erin_room, "first, readable")
    await fred.wait_for_message(fred_room, "first, readable")

    # A message whose key the sender never shares (garbage under a known session).
    session_id = erin.nio.olm.outbound_group_sessions[erin_room].id
    curve = erin.nio.olm.account.identity_keys["curve25519"]
    mark, fred_mark = erin.mark(), fred.mark()
    await erin.api("PUT", f"/_matrix/client/v3/rooms/{erin_room}/send/m.room.encrypted/bad1", {
        "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEnAKCGdhcmJhZ2U",
        "session_id": session_id, "sender_key": curve, "device_id": erin.nio.device_id})
    told = await erin.wait_for_event(
        lambda s: s.room_id == erin_room and "could not be delivered" in (s.body or ""),
        since=mark, description="undeliverable notice")
    assert told.raw_type == "m.room.encrypted"
    # The bridge keeps going; nothing garbled reached fred, only the next real message.
    await erin.send_text(erin_room, "second, readable")
    await fred.wait_for_message(fred_room, "second, readable", since=fred_mark)
    after = [s for s in fred.log[fred_mark:] if s.room_id == fred_room
             and s.type in ("m.room.message", "m.room.encrypted")]
    assert [s.body for s in after] == ["second, readable"]
    assert undecryptable(fred, fred_room) == []
