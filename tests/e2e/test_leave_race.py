"""End to end: both sides of a chat leave (or ask for someone new) in the same moment, on
two federated homeservers. Each is queued again and paired with someone new. (That a leave
long after the goodbye queues nobody is shown in tests/integration/test_leave_race.py: here
the homeserver no longer even sends it, the ghost having left the room.)

alice and carol are on hs1 (the bridge's homeserver), bob and dave on hs2.
"""
from __future__ import annotations

import asyncio
import re

import pytest

from bridge.lab.bridged import BridgedLab
from tests.e2e.anonymity import assert_anonymous

pytestmark = pytest.mark.e2e

# (alice's, bob's) rooms encrypted: plain, both encrypted, and mixed.
ENCRYPTION = pytest.mark.parametrize("alice_encrypted, bob_encrypted", [
    (False, False), (True, True), (False, True)], ids=["plain", "encrypted", "mixed"])

GHOST = re.compile(r"@_stranger_[a-z0-9]+:")


def requeue_notice(client, dm: str, since: int):
    return client.wait_for_event(
        lambda s: s.room_id == dm and "Looking for a new stranger" in (s.body or ""),
        since=since, description="requeue notice")


async def paired_again(bridged: BridgedLab, waiting: list) -> None:
    """Two newcomers (one per homeserver) start: every waiting user gets a new chat."""
    marks = [client.mark() for client, _ in waiting]
    for hs_index, name in ((0, "Carol"), (1, "Dave")):
        newcomer, newcomer_dm = await bridged.ready_user(hs_index, name)
        await bridged.command(newcomer, newcomer_dm, "!start", "Looking for a stranger")
    for (client, _), mark in zip(waiting, marks):
        await client.wait_for_invite(lambda s: GHOST.match(s.sender or "") is not None,
                                     since=mark)


@ENCRYPTION
async def test_both_leave_at_once_and_both_are_paired_again(
        bridged: BridgedLab, alice_encrypted: bool, bob_encrypted: bool):
    alice, alice_dm = await bridged.ready_user(0, "Alice", encrypted=alice_encrypted)
    bob, bob_dm = await bridged.ready_user(1, "Bob", encrypted=bob_encrypted)
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
    alice_mark, bob_mark = alice.mark(), bob.mark()
    await asyncio.gather(alice.leave(alice_room), bob.leave(bob_room))
    await requeue_notice(alice, alice_dm, alice_mark)
    await requeue_notice(bob, bob_dm, bob_mark)
    await bridged.command(alice, alice_dm, "!status", "You have been waiting")
    await bridged.command(bob, bob_dm, "!status", "You have been waiting")
    # (Just-ended partners are not paired with each other: the rematch cooldown.)
    await paired_again(bridged, [(alice, alice_dm), (bob, bob_dm)])
    await bridged.cleaned_up([alice_room, bob_room])
    assert_anonymous(bridged.bridge_domain, (alice, bob), (bob, alice))


@ENCRYPTION
async def test_next_racing_the_partners_leave(
        bridged: BridgedLab, alice_encrypted: bool, bob_encrypted: bool):
    alice, alice_dm = await bridged.ready_user(0, "Alice", encrypted=alice_encrypted)
    bob, bob_dm = await bridged.ready_user(1, "Bob", encrypted=bob_encrypted)
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
    alice_mark, bob_mark = alice.mark(), bob.mark()
    await asyncio.gather(bob.send_text(bob_room, "!next"), alice.leave(alice_room))
    await requeue_notice(alice, alice_dm, alice_mark)
    await bob.wait_for_event(
        lambda s: s.room_id == bob_dm and s.sender == bridged.bot_id
        and re.search("Looking for a (new )?stranger", s.body or "") is not None,
        since=bob_mark, description="bob queued")
    await paired_again(bridged, [(alice, alice_dm), (bob, bob_dm)])

