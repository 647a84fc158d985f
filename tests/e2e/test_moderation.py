"""End to end, on the two federated homeservers with real clients: a report from an hs2
user reaches the (encrypted) moderation room with the evidence and both real IDs; a
moderator bans the reported user, whose !start then gets the statement of reasons; blocked
pairs are never paired again; plain and encrypted chats. The reported or blocked side sees
nothing but "Stranger has disconnected." and nothing that names the other."""
from __future__ import annotations

import uuid

import asyncpg
import pytest
import pytest_asyncio

from bridge.lab.bridged import BridgedLab
from bridge.lab.client import LabClient
from tests.e2e.anonymity import leaks_to

pytestmark = pytest.mark.e2e

ENCRYPTION = pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])


@pytest_asyncio.fixture(scope="module")
async def moderation(bridged: BridgedLab):
    """The session's bridge restarted with one admin (an E2EE client on hs1), who joins the
    moderation room the bot made and invited them to; (moderator client, room)."""
    user = await bridged.lab.homeservers[0].register_user(f"mod{uuid.uuid4().hex[:8]}",
                                                          displayname="Moderator")
    moderator = await LabClient.login(user, encrypted=True)
    await moderator.start_syncing()
    mark = moderator.mark()
    try:
        async with bridged.reconfigured(**{"bridge.admins": [moderator.user_id]}):
            room = await moderator.wait_for_invite(lambda s: s.sender == bridged.bot_id,
                                                   timeout=60, since=mark)
            await moderator.join(room)
            yield moderator, room
    finally:
        await moderator.close()


async def user(lab: BridgedLab, hs: int, name: str, encrypted: bool) -> tuple[LabClient, str]:
    client = await lab.client(hs, name, encrypted=encrypted)
    dm = await lab.open_dm(client, encrypted=encrypted)
    await lab.command(client, dm, "!agree", "Thanks")
    return client, dm


async def moderator_says(lab: BridgedLab, moderator: LabClient, room: str, text: str,
                         expect: str) -> str:
    mark = moderator.mark()
    await moderator.send_text(room, text)
    seen = await moderator.wait_for_event(
        lambda s: s.room_id == room and s.sender == lab.bot_id and expect in (s.body or ""),
        timeout=60, since=mark, description=f"answer to {text!r}")
    return seen.body


def bodies_from_others(client: LabClient, since: int = 0) -> list[str]:
    return [s.body for s in client.log[since:] if s.body and s.sender != client.user_id]


async def disconnected(client: LabClient, room: str, mark: int) -> None:
    await client.wait_for_event(
        lambda s: s.room_id == room and (s.body or "").startswith("Stranger has disconnected."),
        since=mark, description="Stranger has disconnected.")


@ENCRYPTION
async def test_report_reaches_moderators_and_a_ban_gets_the_statement_of_reasons(
        bridged: BridgedLab, moderation, encrypted: bool):
    moderator, mod_room = moderation
    alice, alice_dm = await user(bridged, 1, "Alice", encrypted)  # the reporter, on hs2
    bob, bob_dm = await user(bridged, 0, "Bob", encrypted)
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
    spam = f"cheap pills at spam{uuid.uuid4().hex[:6]}.example"
    await bob.send_text(bob_room, spam)
    await alice.wait_for_message(alice_room, spam)
    bob_mark, mod_mark = bob.mark(), moderator.mark()

    alice_mark = alice.mark()
    await alice.send_text(alice_room, "!report spam links")
    await alice.wait_for_event(lambda s: s.room_id == alice_dm and "report was received"
                               in (s.body or ""), since=alice_mark, description="received")
    report = await moderator.wait_for_event(
        lambda s: s.room_id == mod_room and bob.user_id in (s.body or "")
        and "Report #" in (s.body or ""), timeout=60, since=mod_mark, description="report")
    assert f"{alice.user_id} reported {bob.user_id}" in report.body
    assert "Reason: spam links" in report.body and f"1. {spam}" in report.body
    # The moderation room is encrypted (bridge.encryption.allow), whatever the chat was.
    assert report.raw_type == "m.room.encrypted"

    # Bob sees what a leave shows; nothing of the report, and nothing that names Alice.
    await disconnected(bob, bob_room, bob_mark)
    assert not [b for b in bodies_from_others(bob) if "report" in b.lower()]
    assert leaks_to(bob, alice, bridged.bridge_domain) == []
    assert "!report" not in bodies_from_others(bob)

    answer = await moderator_says(bridged, moderator, mod_room,
                                  f"!ban {bob.user_id} 1d spam links", "is banned")
    assert "until" in answer
    statement = await bridged.command(bob, bob_dm, "!start", "You can't chat here")
    assert "your account is banned until" in statement.body
    assert "Reason: spam links" in statement.body and "decided by a moderator" in statement.body
    conn = await asyncpg.connect(bridged.database_uri)
    try:
        assert not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM waiting WHERE user_id = $1)",
                                       bob.user_id)
    finally:
        await conn.close()
    await moderator_says(bridged, moderator, mod_room, f"!unban {bob.user_id} test over", "lifted")


@ENCRYPTION
async def test_blocked_pairs_are_never_paired_again(bridged: BridgedLab, moderation,
                                                    encrypted: bool):
    alice, alice_dm = await user(bridged, 1, "Alice", encrypted)
    bob, bob_dm = await user(bridged, 0, "Bob", encrypted)
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
    bob_mark, alice_mark = bob.mark(), alice.mark()
    await alice.send_text(alice_room, "!block")
    await alice.wait_for_event(lambda s: s.room_id == alice_dm and "Blocked" in (s.body or ""),
                               since=alice_mark, description="blocked")
    await disconnected(bob, bob_room, bob_mark)
    assert not [b for b in bodies_from_others(bob) if "block" in b.lower()]
    assert leaks_to(bob, alice, bridged.bridge_domain) == []

    # Alice is queued again; Bob too: the bridge pairs a waiter at once when it can, so
    # his "Looking" answer means it found no one for him.
    await bridged.command(bob, bob_dm, "!start", "Looking")
    conn = await asyncpg.connect(bridged.database_uri)
    try:
        assert await conn.fetchval("SELECT count(*) FROM waiting WHERE user_id = ANY($1)",
                                   [alice.user_id, bob.user_id]) == 2
        # Someone else is paired at once (with Alice, who waited longest).
        carol, carol_dm = await user(bridged, 0, "Carol", encrypted)
        carol_mark, alice_mark = carol.mark(), alice.mark()
        await bridged.command(carol, carol_dm, "!start", "Looking")
        await bridged.accept_both(carol, carol_mark, alice, alice_mark)
        assert await conn.fetchval(
            """SELECT count(*) FROM conversation_sides a JOIN conversation_sides b
                 USING (conversation_id) WHERE a.user_id = $1 AND b.user_id = $2""",
            alice.user_id, bob.user_id) == 1
        assert await conn.fetchval("SELECT user_id FROM waiting") == bob.user_id
    finally:
        await conn.close()
