"""End to end: interests on the federated lab. Shared interests pair first and the room says
so; the one without a match is paired with anyone once bridge.matching.fallback_after (3 s
here) has passed, and told why.

dan and ann are on hs1 (the bridge's homeserver), bob and eve on hs2.
"""
from __future__ import annotations

import time

import pytest

from bridge.lab.bridged import BridgedLab
from tests.e2e.anonymity import assert_anonymous

pytestmark = pytest.mark.e2e

FALLBACK_AFTER = 3  # tests/e2e/conftest.py


def says(client, room_id: str, text: str, since: int):
    return client.wait_for_event(lambda s: s.room_id == room_id and text in (s.body or ""),
                                 since=since, description=repr(text))


async def test_shared_interest_first_then_fallback_with_notice(bridged: BridgedLab):
    dan, dan_dm = await bridged.ready_user(0, "Dan")
    ann, ann_dm = await bridged.ready_user(0, "Ann")
    bob, bob_dm = await bridged.ready_user(1, "Bob")
    eve, eve_dm = await bridged.ready_user(1, "Eve")
    dan_mark, ann_mark, bob_mark, eve_mark = dan.mark(), ann.mark(), bob.mark(), eve.mark()

    # dan waits longest, for chess.
    await bridged.command(dan, dan_dm, "!interests Chess", "Your interests: chess")
    dan_started = time.monotonic()
    await bridged.command(dan, dan_dm, "!start", "Looking for a stranger who likes chess")
    # ann and bob share cinema: they are paired ahead of him (whether or not his window has
    # closed meanwhile: they want cinema).
    await bridged.command(ann, ann_dm, "!start Cinéma, Jazz",
                          "Looking for a stranger who likes cinema or jazz")
    await bridged.command(bob, bob_dm, "!start cinema", "Looking for a stranger who likes cinema")
    ann_room = await bridged.accept_chat(ann, ann_mark, opened=False)
    bob_room = await bridged.accept_chat(bob, bob_mark, opened=False)
    for client, room, mark in ((ann, ann_room, ann_mark), (bob, bob_room, bob_mark)):
        await says(client, room, "You're now chatting with a random stranger. "
                                 "You both like: cinema.", mark)

    # eve has no interests: she and dan are paired once his window has closed (by the match
    # timer if she came before that, at once if after), and dan is told why.
    await bridged.command(eve, eve_dm, "!start", "Looking for a stranger")
    dan_room = await bridged.accept_chat(dan, dan_mark, opened=False)
    assert time.monotonic() - dan_started >= FALLBACK_AFTER - 0.5
    eve_room = await bridged.accept_chat(eve, eve_mark, opened=False)
    await says(dan, dan_room, "No one shares your interests right now, so you're chatting "
                              "with a random stranger.", dan_mark)
    await says(eve, eve_room, "You're now chatting with a random stranger. Say hi!", eve_mark)
    await bridged.command(eve, eve_dm, "!status", "You have been in a chat for")

    # They really talk to each other.
    await dan.send_text(dan_room, "hello from the fallback")
    await eve.wait_for_message(eve_room, "hello from the fallback")

    # In the chat room, !status and !help are answered there by the room's ghost, and the
    # partner sees neither the commands nor the answers (her interests stay hers).
    mark = ann.mark()
    await ann.send_text(ann_room, "!status")
    status = await says(ann, ann_room, "You have been in a chat for", mark)
    assert status.sender != ann.user_id and "Your interests: cinema, jazz." in status.body
    await ann.send_text(ann_room, "!help")
    await says(ann, ann_room, "!next", mark)
    await ann.send_text(ann_room, "after the commands")
    await bob.wait_for_message(bob_room, "after the commands")
    assert not [s for s in bob.log[bob_mark:] if s.room_id == bob_room and s.body
                and ("!status" in s.body or "!help" in s.body or "chat for" in s.body)]

    # Both chats end; after the clean-up nothing anyone received names a partner (the
    # shared interests are said, never who has them).
    await ann.send_text(ann_room, "!stop")
    await dan.send_text(dan_room, "!stop")
    await bridged.cleaned_up([ann_room, dan_room])
    for client, dm in ((dan, dan_dm), (ann, ann_dm), (bob, bob_dm), (eve, eve_dm)):
        await bridged.settled(client, dm)
    assert_anonymous(bridged.bridge_domain, (ann, bob), (bob, ann), (dan, eve), (eve, dan))
