"""End to end: typing, read receipts, reactions and redactions cross between the rooms, as the
partner's ghost, both ways, in plain, encrypted and mixed chats; locations and polls do not
cross and the sender is told. Everything each client received is scanned for the other's
identity.

alice is on hs1 (the bridge's homeserver), bob on hs2.
"""
from __future__ import annotations

from urllib.parse import quote

import pytest

from bridge.lab.bridged import BridgedLab
from bridge.lab.client import LabClient
from tests.e2e.anonymity import assert_anonymous

pytestmark = pytest.mark.e2e

ENCRYPTION = pytest.mark.parametrize("alice_encrypted, bob_encrypted", [
    (False, False), (True, True), (True, False)], ids=["plain", "encrypted", "mixed"])


def room_path(room_id: str, *rest: str) -> str:
    return "/_matrix/client/v3/rooms/" + "/".join(quote(part, safe="") for part in (room_id, *rest))


async def set_typing(client: LabClient, room_id: str, typing: bool) -> None:
    await client.api("PUT", room_path(room_id, "typing", client.user_id),
                     {"typing": typing, "timeout": 20000})


def typing_seen(client: LabClient, room_id: str, ghost: str, typing: bool, since: int):
    return client.wait_for_event(
        lambda s: s.room_id == room_id and s.type == "m.typing"
        and (ghost in s.content.get("user_ids", [])) == typing,
        since=since, description=f"ghost typing={typing}")


@ENCRYPTION
async def test_typing_receipts_reactions_redactions_both_ways(
        bridged: BridgedLab, alice_encrypted: bool, bob_encrypted: bool):
    alice, alice_dm = await bridged.ready_user(0, "Alice", encrypted=alice_encrypted)
    bob, bob_dm = await bridged.ready_user(1, "Bob", encrypted=bob_encrypted)
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
    hello = await alice.send_text(alice_room, "hello bob")
    hello_copy = await bob.wait_for_message(bob_room, "hello bob")
    bob_ghost = hello_copy.sender  # stands for alice in bob's room
    hi = await bob.send_text(bob_room, "hi alice")
    hi_copy = await alice.wait_for_message(alice_room, "hi alice")
    alice_ghost = hi_copy.sender

    # Typing, both ways: "Stranger is typing" starts and stops.
    for writer, writer_room, reader, reader_room, ghost in (
            (alice, alice_room, bob, bob_room, bob_ghost),
            (bob, bob_room, alice, alice_room, alice_ghost)):
        mark = reader.mark()
        await set_typing(writer, writer_room, True)
        await typing_seen(reader, reader_room, ghost, True, mark)
        mark = reader.mark()
        await set_typing(writer, writer_room, False)
        await typing_seen(reader, reader_room, ghost, False, mark)

    # Read receipts: each reads the other's message; the other sees the ghost read their own.
    for reader, reader_room, copy, writer, writer_room, original, ghost in (
            (bob, bob_room, hello_copy.event_id, alice, alice_room, hello, alice_ghost),
            (alice, alice_room, hi_copy.event_id, bob, bob_room, hi, bob_ghost)):
        mark = writer.mark()
        await reader.api("POST", room_path(reader_room, "receipt", "m.read", copy), {})
        await writer.wait_for_event(
            lambda s: s.room_id == writer_room and s.type == "m.receipt"
            and ghost in s.content.get(original, {}).get("m.read", {}),
            since=mark, description="ghost's read receipt on the original")

    # Reactions, both ways, on the mapped events; then taken back.
    mark = alice.mark()
    reaction = await bob.send_raw(bob_room, "m.reaction", {"m.relates_to": {
        "rel_type": "m.annotation", "event_id": hello_copy.event_id, "key": "👍"}})
    reaction_copy = await alice.wait_for_event(
        lambda s: s.room_id == alice_room and s.type == "m.reaction", since=mark,
        description="reaction")
    assert reaction_copy.sender == alice_ghost
    assert reaction_copy.content["m.relates_to"] == {
        "rel_type": "m.annotation", "event_id": hello, "key": "👍"}
    mark = bob.mark()
    await alice.send_raw(alice_room, "m.reaction", {"m.relates_to": {
        "rel_type": "m.annotation", "event_id": hi_copy.event_id, "key": "❤️"}})
    back = await bob.wait_for_event(
        lambda s: s.room_id == bob_room and s.type == "m.reaction", since=mark,
        description="reaction back")
    assert back.content["m.relates_to"]["event_id"] == hi

    # Redactions: bob takes back his reaction, alice her message.
    mark = alice.mark()
    await bob.api("PUT", room_path(bob_room, "redact", reaction, "r1"), {"reason": "oops, Bob here"})
    redaction = await alice.wait_for_event(
        lambda s: s.room_id == alice_room and s.type == "m.room.redaction", since=mark,
        description="reaction redacted")
    assert reaction_copy.event_id in (redaction.source.get("redacts"),
                                      redaction.content.get("redacts"))
    assert "reason" not in redaction.content
    mark = bob.mark()
    await alice.api("PUT", room_path(alice_room, "redact", hello, "r2"), {})
    redaction = await bob.wait_for_event(
        lambda s: s.room_id == bob_room and s.type == "m.room.redaction", since=mark,
        description="message redacted")
    assert hello_copy.event_id in (redaction.source.get("redacts"),
                                   redaction.content.get("redacts"))

    # A location and a poll do not cross; the sender is told each time.
    mark = alice.mark()
    await alice.send_raw(alice_room, "m.room.message", {
        "msgtype": "m.location", "body": "I am here", "geo_uri": "geo:48.8584,2.2945"})
    await alice.wait_for_event(
        lambda s: s.room_id == alice_room and "Locations are never sent" in (s.body or ""),
        since=mark, description="location refused")
    await alice.send_raw(alice_room, "org.matrix.msc3381.poll.start", {
        "org.matrix.msc3381.poll.start": {"question": {"org.matrix.msc1767.text": "Tea?"},
                                          "answers": [{"id": "y", "org.matrix.msc1767.text": "yes"}]},
        "body": "Tea?"})
    await alice.wait_for_event(
        lambda s: s.room_id == alice_room and "Polls can't be sent" in (s.body or ""),
        since=mark, description="poll refused")
    await alice.send_text(alice_room, "after the location")
    await bob.wait_for_message(bob_room, "after the location")
    everything_bob_got = str([entry.body for entry in bob.received()])
    assert "geo:" not in everything_bob_got and "Tea?" not in everything_bob_got

    # Nothing either client received, for the whole test, names the other.
    await bridged.command(alice, alice_dm, "!stop", "ended the chat")
    await bridged.cleaned_up([alice_room, bob_room])
    await bridged.settled(alice, alice_dm)
    await bridged.settled(bob, bob_dm)
    assert_anonymous(bridged.bridge_domain, (alice, bob), (bob, alice))
