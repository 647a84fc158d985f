"""End to end: real federated Synapses, the real bridge process, real clients.

alice is on hs1 (the bridge's homeserver), bob and carol on hs2.
"""
from __future__ import annotations

import re

import pytest

from bridge.lab.bridged import BridgedLab
from tests.e2e.anonymity import assert_anonymous

pytestmark = pytest.mark.e2e

GHOST = re.compile(r"@_stranger_[a-z0-9]+:")


def from_ghost(seen) -> bool:
    return GHOST.match(seen.sender or "") is not None


async def test_dm_greets_and_requires_agreement(bridged: BridgedLab):
    alice = await bridged.client(0, "Alice")
    dm = await bridged.open_dm(alice)
    help_reply = await bridged.command(alice, dm, "!help", "!start")
    for command in ("!agree", "!start", "!next", "!stop", "!help"):
        assert command in help_reply.body
    refused = await bridged.command(alice, dm, "!start", "18 or older")
    assert "!agree" in refused.body
    await bridged.command(alice, dm, "!frobnicate", "don't know the command !frobnicate")
    await bridged.command(alice, dm, "hello there", "only understand commands")
    await bridged.command(alice, dm, "!agree", "Thanks")
    await bridged.command(alice, dm, "!start", "Looking for a stranger")
    await bridged.command(alice, dm, "!start", "already in the queue")
    await bridged.command(alice, dm, "!stop", "You left the queue")


async def test_pair_relay_anonymously_leave_and_rematch(bridged: BridgedLab):
    alice, alice_dm = await bridged.ready_user(0, "Alice")
    bob, bob_dm = await bridged.ready_user(1, "Bob")
    alice_mark, bob_mark = alice.mark(), bob.mark()
    await bridged.command(alice, alice_dm, "!start", "Looking for a stranger")
    await bridged.command(bob, bob_dm, "!start", "Looking for a stranger")
    alice_room = await bridged.accept_chat(alice, alice_mark, opened=False)
    # What alice writes before bob has joined reaches him once he is in, after the greeting.
    await alice.send_text(alice_room, "are you there?")
    bob_room = await bridged.accept_chat(bob, bob_mark)
    await alice.wait_for_event(lambda s: s.room_id == alice_room and "now chatting"
                               in (s.body or ""), since=alice_mark, description="greeting")
    early = await bob.wait_for_message(bob_room, "are you there?")
    greeting = next(s for s in bob.log if s.room_id == bob_room and "now chatting" in (s.body or ""))
    assert greeting.index < early.index

    # Plain text both ways.
    hello = await alice.send_text(alice_room, "hello from alice")
    hello_for_bob = await bob.wait_for_message(bob_room, "hello from alice")
    assert from_ghost(hello_for_bob)
    await bob.send_text(bob_room, "hi alice's stranger")
    await alice.wait_for_message(alice_room, "hi alice's stranger")

    # bob replies to alice's message, mentioning the ghost (alice's stand-in) with a pill.
    ghost_in_bob_room = hello_for_bob.sender
    pill = f'<a href="https://matrix.to/#/{ghost_in_bob_room}">Stranger</a>'
    await bob.send_text(
        bob_room, f"> <{ghost_in_bob_room}> hello from alice\n\nnice to meet you",
        formatted_body=(f'<mx-reply><blockquote><a href="https://matrix.to/#/{bob_room}/'
                        f'{hello_for_bob.event_id}">In reply to</a> {pill}<br>hello from alice'
                        f'</blockquote></mx-reply><b>nice</b> to meet you {pill}'),
        reply_to=hello_for_bob.event_id, mentions=[ghost_in_bob_room])
    reply = await alice.wait_for_event(
        lambda s: s.room_id == alice_room and "nice" in (s.body or ""), description="reply")
    assert reply.content["m.relates_to"]["m.in_reply_to"]["event_id"] == hello
    assert "<b>nice</b>" in reply.content["formatted_body"]
    assert "mx-reply" not in reply.content["formatted_body"]
    assert not reply.body.startswith(">")
    assert reply.content.get("m.mentions", {}).get("user_ids") in (None, [])

    # An emote and a notice keep their msgtype.
    await alice.send_text(alice_room, "waves", msgtype="m.emote")
    emote = await bob.wait_for_message(bob_room, "waves")
    assert emote.content["msgtype"] == "m.emote"

    # The bridge never writes message text to its log, even at DEBUG.
    log_text = bridged.bridge.log_path.read_text(errors="replace")
    assert "DEBUG" in log_text
    for body in ("hello from alice", "hi alice's stranger", "are you there?"):
        assert body not in log_text

    # alice leaves: bob is told and the ghost leaves his room; alice is queued again.
    bob_mark, alice_mark = bob.mark(), alice.mark()
    await alice.leave(alice_room)
    await bob.wait_for_event(
        lambda s: s.room_id == bob_room and s.body and "Stranger has disconnected" in s.body,
        since=bob_mark, description="disconnect notice")
    await bob.wait_for_event(
        lambda s: s.room_id == bob_room and s.membership == "leave" and from_ghost(s),
        since=bob_mark, description="ghost leaving")
    await alice.wait_for_event(
        lambda s: s.room_id == alice_dm and "Looking for a new stranger" in (s.body or ""),
        since=alice_mark, description="requeue notice")

    # carol (hs2) starts and is paired with the waiting alice, through a NEW ghost.
    carol, carol_dm = await bridged.ready_user(1, "Carol")
    carol_mark = carol.mark()
    await bridged.command(carol, carol_dm, "!start", "Looking for a stranger")
    alice_room2, carol_room = await bridged.accept_both(alice, alice_mark, carol, carol_mark)
    assert alice_room2 != alice_room
    await carol.send_text(carol_room, "hi, I'm new")
    second = await alice.wait_for_message(alice_room2, "hi, I'm new")
    assert second.sender != reply.sender, "a new conversation must have a new ghost"

    # carol stops: both chats are over. Once the bridge has cleaned up (goodbyes, ghosts
    # gone), nothing any of them ever received, in any room, to-device, presence, account
    # data or device lists, decrypted or not, names a partner.
    alice_mark = alice.mark()
    await carol.send_text(carol_room, "!stop")
    await alice.wait_for_event(
        lambda s: s.room_id == alice_room2 and s.membership == "leave" and from_ghost(s),
        since=alice_mark, description="ghost leaving")
    await bridged.cleaned_up([alice_room, alice_room2])
    for client, dm in ((alice, alice_dm), (bob, bob_dm), (carol, carol_dm)):
        await bridged.settled(client, dm)
    assert_anonymous(bridged.bridge_domain, (alice, bob), (bob, alice), (alice, carol),
                     (carol, alice))


async def test_next_and_stop(bridged: BridgedLab):
    dave, dave_dm = await bridged.ready_user(0, "Dave")
    erin, erin_dm = await bridged.ready_user(1, "Erin")
    dave_room, erin_room = await bridged.pair(dave, dave_dm, erin, erin_dm)

    # !next inside the chat room: not relayed, ends the chat, requeues dave.
    dave_mark, erin_mark = dave.mark(), erin.mark()
    await dave.send_text(dave_room, "!next")
    await dave.wait_for_event(lambda s: s.room_id == dave_room and "You have disconnected"
                              in (s.body or ""), since=dave_mark, description="you left")
    await erin.wait_for_event(lambda s: s.room_id == erin_room and "Stranger has disconnected"
                              in (s.body or ""), since=erin_mark, description="partner left")
    assert not any(e.get("content", {}).get("body") == "!next" for e in erin.events_in(erin_room))
    await dave.wait_for_event(lambda s: s.room_id == dave_dm and "Looking for a new stranger"
                              in (s.body or ""), since=dave_mark, description="requeued")
    # !stop takes dave out of the queue.
    await bridged.command(dave, dave_dm, "!stop", "You left the queue")
    await bridged.command(dave, dave_dm, "!stop", "not chatting or waiting")
    await bridged.cleaned_up([dave_room])
    await bridged.settled(erin, erin_dm)
    assert_anonymous(bridged.bridge_domain, (dave, erin), (erin, dave))


async def test_unanswered_invite_requeues_partner(bridged: BridgedLab):
    lab = bridged
    frank, frank_dm = await lab.ready_user(1, "Frank")
    gina, gina_dm = await lab.ready_user(0, "Gina")
    frank_mark, gina_mark = frank.mark(), gina.mark()
    await lab.command(frank, frank_dm, "!start", "Looking")
    await lab.command(gina, gina_dm, "!start", "Looking")
    frank_room = await lab.accept_chat(frank, frank_mark, opened=False)
    gina_room = await gina.wait_for_invite(since=gina_mark)  # and never accepted
    await frank.wait_for_event(lambda s: s.room_id == frank_room and "didn't join the chat in time"
                               in (s.body or ""), since=frank_mark, timeout=60,
                               description="no-show notice")
    await gina.wait_for_event(lambda s: s.room_id == gina_dm and "didn't accept the chat invite"
                              in (s.body or ""), since=gina_mark, timeout=30,
                              description="invite expired DM")
    # The invite was taken back.
    await gina.wait_for_event(lambda s: s.room_id == gina_room and s.membership == "leave"
                              and s.state_key == gina.user_id, since=gina_mark,
                              description="invite revoked")
