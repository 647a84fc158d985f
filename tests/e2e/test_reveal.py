"""End to end, mutual reveal on the two federated homeservers with real clients: alice on hs1
(the bridge's), bob on hs2. Each learns the other's Matrix ID, as a matrix.to link in their
own chat room from their own ghost, only once both sent !reveal; until then (and when one
side alone asks, takes it back, or the chat ends) the anonymity scan finds nothing of either
in what the other received; after, the partner's Matrix ID and nothing else about them
(no display name, no device). Plain, encrypted and mixed chats."""
from __future__ import annotations

import json
import re

import pytest

from bridge.lab.bridged import BridgedLab
from bridge.lab.client import LabClient, Received, Seen
from tests.e2e.anonymity import assert_anonymous, leaks, leaks_to

pytestmark = pytest.mark.e2e

# (alice's, bob's) rooms encrypted: plain, both encrypted, and mixed.
ENCRYPTION = pytest.mark.parametrize("alice_encrypted, bob_encrypted", [
    (False, False), (True, True), (False, True)], ids=["plain", "encrypted", "mixed"])

GHOST = re.compile(r"@_stranger_[a-z0-9]+:")
ASKED = "Stranger would like to exchange contacts. Send !reveal to agree."


async def ghost_says(client: LabClient, room: str, text: str, since: int) -> Seen:
    """A ghost's notice in the user's chat room containing `text`."""
    return await client.wait_for_event(
        lambda s: s.room_id == room and GHOST.match(s.sender or "") is not None
        and s.type == "m.room.message" and text in (s.body or ""),
        timeout=60, since=since, description=f"ghost's {text!r}")


def bodies(client: LabClient, room: str) -> list[str]:
    return [s.body for s in client.log if s.room_id == room and s.body]


def told_id(client: LabClient, partner: LabClient) -> set[str]:
    """The events in which `client` received the partner's Matrix ID (decrypted, if so)."""
    return {s.event_id for s in client.log
            if partner.user_id in json.dumps(s.decrypted or s.source)}


def with_revealed_id_blanked(client: LabClient, partner: LabClient) -> list[Received]:
    """All the client received, the partner's Matrix ID (which it may now know) blanked out:
    what is left must hold nothing else of the partner."""
    revealed = json.dumps(partner.user_id)[1:-1]
    return [Received(r.what, json.loads(json.dumps(r.body).replace(revealed, "<revealed>")))
            for r in client.received()]


@ENCRYPTION
async def test_a_mutual_reveal_names_each_to_the_other_only_once_both_agreed(
        bridged: BridgedLab, alice_encrypted: bool, bob_encrypted: bool):
    alice, alice_dm = await bridged.ready_user(0, "Alice", encrypted=alice_encrypted)
    bob, bob_dm = await bridged.ready_user(1, "Bob", encrypted=bob_encrypted)
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)

    alice_mark, bob_mark = alice.mark(), bob.mark()
    await alice.send_text(alice_room, "!reveal")
    await ghost_says(alice, alice_room, "Your request to exchange contacts was sent", alice_mark)
    await ghost_says(bob, bob_room, ASKED, bob_mark)
    # Asked again: the partner is not told twice.
    await alice.send_text(alice_room, "!reveal")
    await ghost_says(alice, alice_room, "You have already asked", alice_mark)
    # A line after it, to know bob has received all that came before.
    await alice.send_text(alice_room, "still there?")
    await bob.wait_for_message(bob_room, "still there?", since=bob_mark)
    assert bodies(bob, bob_room).count(ASKED) == 1
    assert "!reveal" not in bodies(bob, bob_room)  # a command is never relayed
    # One side has agreed: nothing of either has crossed.
    assert leaks_to(alice, bob, bridged.bridge_domain) == []
    assert leaks_to(bob, alice, bridged.bridge_domain) == []
    assert not told_id(alice, bob) and not told_id(bob, alice)

    await bob.send_text(bob_room, "!reveal")
    to_alice = await ghost_says(alice, alice_room, "You both agreed", alice_mark)
    to_bob = await ghost_says(bob, bob_room, "You both agreed", bob_mark)
    for seen, room, partner in ((to_alice, alice_room, bob), (to_bob, bob_room, alice)):
        link = f"https://matrix.to/#/{partner.user_id}"
        assert f"{partner.user_id} ({link})" in seen.body
        assert f'<a href="{link}">{partner.user_id}</a>' in seen.content["formatted_body"]
        assert seen.content["msgtype"] == "m.notice"
    # By each one's own ghost (the one that speaks for the stranger in their room).
    assert to_alice.sender == next(s.sender for s in alice.log if s.room_id == alice_room
                                   and s.body and "now chatting" in s.body)
    await bob.send_text(bob_room, "!reveal")
    await ghost_says(bob, bob_room, "You have already exchanged contacts", bob_mark)

    await alice.send_text(alice_room, "!stop")
    await bridged.cleaned_up([alice_room, bob_room])
    await bridged.settled(alice, alice_dm)
    await bridged.settled(bob, bob_dm)
    # Each received the partner's ID in that one notice (once), and nothing else about them.
    assert told_id(alice, bob) == {to_alice.event_id}
    assert told_id(bob, alice) == {to_bob.event_id}
    for viewer, partner in ((alice, bob), (bob, alice)):
        own = viewer.user_id.split(":", 1)[1]
        assert leaks(with_revealed_id_blanked(viewer, partner), partner,
                     allowed_servers={bridged.bridge_domain, own}) == []


@ENCRYPTION
async def test_one_side_alone_or_a_cancel_reveals_nothing(
        bridged: BridgedLab, alice_encrypted: bool, bob_encrypted: bool):
    alice, alice_dm = await bridged.ready_user(0, "Alice", encrypted=alice_encrypted)
    bob, bob_dm = await bridged.ready_user(1, "Bob", encrypted=bob_encrypted)
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)

    alice_mark, bob_mark = alice.mark(), bob.mark()
    await alice.send_text(alice_room, "!reveal")
    await ghost_says(bob, bob_room, ASKED, bob_mark)
    await alice.send_text(alice_room, "!reveal cancel")
    await ghost_says(alice, alice_room, "You took back your request", alice_mark)
    await ghost_says(bob, bob_room, "Stranger took back their request", bob_mark)
    # bob's !reveal now is a request of his own, which alice never agrees to.
    await bob.send_text(bob_room, "!reveal")
    await ghost_says(bob, bob_room, "Your request to exchange contacts was sent", bob_mark)
    await ghost_says(alice, alice_room, ASKED, alice_mark)
    # In the DM it is no command of a chat: a polite answer, nothing else.
    await bridged.command(alice, alice_dm, "!reveal", "works only inside a chat room")

    # The chat ends with bob's request open: it dies with the chat.
    await alice.send_text(alice_room, "!stop")
    await ghost_says(bob, bob_room, "Stranger has disconnected", bob_mark)
    await bridged.cleaned_up([alice_room, bob_room])
    await bridged.settled(alice, alice_dm)
    await bridged.settled(bob, bob_dm)
    assert not any("You both agreed" in b for b in bodies(alice, alice_room) + bodies(bob, bob_room))
    assert not told_id(alice, bob) and not told_id(bob, alice)
    assert_anonymous(bridged.bridge_domain, (alice, bob), (bob, alice))
