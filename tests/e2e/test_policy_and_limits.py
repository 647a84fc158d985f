"""End to end: a moderation policy room on hs1 and rate limits, with real clients on both
federated homeservers, plain and encrypted.

A server ban for hs2 in the policy room ends hs2 users' live chats (their partner sees only
"Stranger has disconnected.") and refuses their !start with a statement of reasons; lifting it
lets them back. A user rule is lifted by redacting it. A flooder is warned and their chat ends
without the partner receiving the flood. Links early in a chat are held back with a notice.
Nothing identifying crosses.
"""
from __future__ import annotations

import re
import uuid
from urllib.parse import quote

import pytest
import pytest_asyncio

from bridge.lab.bridged import BridgedLab
from bridge.lab.client import LabClient
from tests.e2e.anonymity import leaks
from tests.e2e.conftest import _bridged_lab

pytestmark = pytest.mark.e2e

GHOST = re.compile(r"@_stranger_[a-z0-9]+:")
# Small limits, so a test reaches them in a few messages.
LIMITS = {"bridge.rate_limits.messages.burst": 3, "bridge.rate_limits.messages.per_minute": 1,
          "bridge.rate_limits.messages.flood_tolerance": 2,
          "bridge.links.hold_messages": 2, "bridge.links.hold_seconds": 0}


@pytest_asyncio.fixture(scope="module")
async def bridged(tmp_path_factory):
    """The bridge, following a policy room that a moderator on hs1 made (before the bridge
    was configured with it: the bot finds it by its alias at start)."""
    async for lab in _bridged_lab(tmp_path_factory, "policy", **LIMITS):
        hs1 = lab.lab.homeservers[0]
        moderator = await LabClient.login(await hs1.register_user(f"mod{uuid.uuid4().hex[:8]}"))
        alias = f"bans{uuid.uuid4().hex[:8]}"
        created = await moderator.api("POST", "/_matrix/client/v3/createRoom", {
            "preset": "public_chat", "room_alias_name": alias, "name": "Ban list"})
        lab.moderator, lab.policy_room = moderator, created["room_id"]
        lab.policy_alias = f"#{alias}:{hs1.server_name}"
        try:
            async with lab.reconfigured(**{"bridge.policy_rooms": [lab.policy_alias]}):
                yield lab
        finally:
            await moderator.close()


async def set_rule(lab: BridgedLab, kind: str, key: str, content: dict,
                   room: str | None = None) -> str:
    path = (f"/_matrix/client/v3/rooms/{quote(room or lab.policy_room)}/state/"
            f"m.policy.rule.{kind}/{quote(key, safe='')}")
    return (await lab.moderator.api("PUT", path, content))["event_id"]


async def redact(lab: BridgedLab, event_id: str) -> None:
    await lab.moderator.api("PUT", f"/_matrix/client/v3/rooms/{quote(lab.policy_room)}/redact/"
                                   f"{quote(event_id)}/{uuid.uuid4().hex}", {})


async def user(lab: BridgedLab, hs: int, name: str, encrypted: bool) -> tuple[LabClient, str]:
    client = await lab.client(hs, name, encrypted=encrypted)
    dm = await lab.open_dm(client, encrypted=encrypted)
    await lab.command(client, dm, "!agree", "Thanks")
    return client, dm


async def bot_says(lab: BridgedLab, client: LabClient, dm: str, text: str, since: int):
    return await client.wait_for_event(
        lambda s: s.room_id == dm and s.sender == lab.bot_id and text in (s.body or ""),
        since=since, description=f"the bot saying {text!r}")


async def ghost_says(client: LabClient, room: str, text: str, since: int):
    return await client.wait_for_event(
        lambda s: s.room_id == room and GHOST.match(s.sender or "") is not None
        and text in (s.body or ""), since=since, description=f"the ghost saying {text!r}")


def seen_in(client: LabClient, room: str) -> list:
    """Everything the client got in the room, decrypted where it was encrypted."""
    return client.events_in(room) + client.decrypted_events_in(room)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_a_server_ban_ends_chats_refuses_start_and_lifting_lets_back(bridged, encrypted):
    alice, alice_dm = await user(bridged, 0, "Alice", encrypted)
    bob, bob_dm = await user(bridged, 1, "Bob", encrypted)
    carol, carol_dm = await user(bridged, 1, "Carol", encrypted)
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
    await alice.send_text(alice_room, "hello before the ban")
    await bob.wait_for_message(bob_room, "hello before the ban")
    await bridged.command(carol, carol_dm, "!start", "Looking")  # waiting in the queue

    hs2 = bridged.lab.homeservers[1].server_name
    marks = alice.mark(), bob.mark(), carol.mark()
    await set_rule(bridged, "server", "rule:hs2", {
        "entity": hs2, "recommendation": "m.ban", "reason": "testing a server ban"})

    # bob's chat ended: alice sees only the usual disconnect; bob and carol are told why.
    await ghost_says(alice, alice_room, "Stranger has disconnected.", marks[0])
    ended = await bot_says(bridged, bob, bob_dm, "Your chat was ended:", marks[1])
    assert "your homeserver is banned" in ended.body and "testing a server ban" in ended.body
    await bot_says(bridged, carol, carol_dm, "your homeserver is banned", marks[2])
    await bob.wait_for_event(lambda s: s.room_id == bob_room and s.membership == "leave"
                             and GHOST.match(s.state_key or ""), since=marks[1],
                             description="the ghost leaving bob's room")
    refused = await bridged.command(bob, bob_dm, "!start", "You can't chat here:")
    assert "testing a server ban" in refused.body and "permanently" in refused.body
    await bridged.command(carol, carol_dm, "!start", "your homeserver is banned")
    # alice is not punished: she can look for someone new.
    await bridged.command(alice, alice_dm, "!start", "Looking")
    await bridged.command(alice, alice_dm, "!stop", "left the queue")

    # Nothing about the ban, nor anything identifying bob, reached alice's room.
    alice_saw = seen_in(alice, alice_room)
    assert not any("banned" in str(e) or "testing a server ban" in str(e) for e in alice_saw)
    assert leaks(alice_saw, bob, allowed_servers={bridged.bridge_domain}) == []
    assert leaks(seen_in(bob, bob_room), alice, allowed_servers={bridged.bridge_domain}) == []

    # Lifting the rule (an empty state event at its key) lets them back: bob and carol meet.
    await set_rule(bridged, "server", "rule:hs2", {})
    bob_mark, carol_mark = bob.mark(), carol.mark()
    await bridged.command(carol, carol_dm, "!start", "Looking")
    await bridged.command(bob, bob_dm, "!start", "Looking")
    await bridged.accept_both(bob, bob_mark, carol, carol_mark)


async def test_a_user_rule_with_a_glob_is_lifted_by_redaction(bridged):
    bob, bob_dm = await user(bridged, 1, "Bob", False)
    localpart, server = bob.user_id[1:].split(":", 1)
    entity = f"@{localpart[:-2]}??:{server}"  # ? is one character each
    event_id = await set_rule(bridged, "user", f"rule:{uuid.uuid4().hex}", {
        "entity": entity, "recommendation": "m.ban", "reason": "testing a user ban"})
    # The rule arrives through the homeserver: ask until the bot has it.
    refused = await refused_start(bridged, bob, bob_dm, "your account is banned")
    assert "testing a user ban" in refused.body
    await redact(bridged, event_id)
    await started(bridged, bob, bob_dm)
    await bridged.command(bob, bob_dm, "!stop", "left the queue")


async def refused_start(lab: BridgedLab, client: LabClient, dm: str, expect: str):
    """!start until the reply is a refusal (a rule just set takes a moment to reach the bot:
    each !start waits for its own reply, never a timer)."""
    for _ in range(20):
        reply = await lab.command(client, dm, "!start", "")
        if expect in (reply.body or ""):
            return reply
        if "Looking" in (reply.body or ""):
            await lab.command(client, dm, "!stop", "left the queue")
    raise AssertionError(f"!start was never refused with {expect!r}")


async def started(lab: BridgedLab, client: LabClient, dm: str) -> None:
    for _ in range(20):
        reply = await lab.command(client, dm, "!start", "")
        if "Looking" in (reply.body or ""):
            return
    raise AssertionError("!start was never accepted again")


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_a_flood_is_throttled_and_the_partner_is_not_spammed(bridged, encrypted):
    alice, alice_dm = await user(bridged, 0, "Alice", encrypted)
    bob, bob_dm = await user(bridged, 1, "Bob", encrypted)
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
    alice_mark, bob_mark = alice.mark(), bob.mark()
    flood = [f"flood {uuid.uuid4().hex[:6]} {i}" for i in range(6)]
    for body in flood:
        await alice.send_text(alice_room, body)
    # burst 3 relayed; the 4th answered with a warning in alice's own room; 2 more dropped
    # (flood_tolerance) and the chat ends.
    await ghost_says(alice, alice_room, "Slow down", alice_mark)
    await bot_says(bridged, alice, alice_dm, "kept sending messages too fast", alice_mark)
    await ghost_says(bob, bob_room, "Stranger has disconnected.", bob_mark)
    bob_got = [s.body for s in bob.log[bob_mark:] if s.room_id == bob_room
               and s.type == "m.room.message" and (s.body or "").startswith("flood ")]
    assert bob_got == flood[:3]
    assert not any("Slow down" in (s.body or "") for s in bob.log[bob_mark:])
    assert leaks(seen_in(bob, bob_room), alice, allowed_servers={bridged.bridge_domain}) == []
    # A cooldown applies to alice, not to bob.
    await bridged.command(alice, alice_dm, "!start", "sent too many messages too fast")
    await bridged.command(bob, bob_dm, "!start", "Looking")
    await bridged.command(bob, bob_dm, "!stop", "left the queue")


async def test_links_are_held_back_early_in_a_chat(bridged):
    alice, alice_dm = await user(bridged, 0, "Alice", False)
    bob, bob_dm = await user(bridged, 1, "Bob", False)
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
    mark = alice.mark()
    await alice.send_text(alice_room, "see https://example.org/early")
    held = await ghost_says(alice, alice_room, "Links can't be sent", mark)
    assert "after 2 more messages" in held.body
    for body in ("hi one", "hi two"):
        await bob.send_text(bob_room, body)
        await alice.wait_for_message(alice_room, body)
    await alice.send_text(alice_room, "now see https://example.org/later")
    await bob.wait_for_message(bob_room, "now see https://example.org/later")
    assert not any("example.org/early" in str(e) for e in bob.events_in(bob_room))


async def test_a_private_policy_room_is_read_once_the_bot_is_invited(bridged):
    """The bot cannot join an invite-only policy room at start; invited later, it joins and
    reads the rules already in the room's state."""
    dave, dave_dm = await user(bridged, 1, "Dave", False)
    hs1 = bridged.lab.homeservers[0].server_name
    alias = f"private{uuid.uuid4().hex[:8]}"
    private = (await bridged.moderator.api("POST", "/_matrix/client/v3/createRoom", {
        "preset": "private_chat", "room_alias_name": alias}))["room_id"]
    await set_rule(bridged, "user", "rule:dave", {
        "entity": dave.user_id, "recommendation": "m.ban", "reason": "read from the state"},
        room=private)
    async with bridged.reconfigured(**{"bridge.policy_rooms": [bridged.policy_alias,
                                                               f"#{alias}:{hs1}"]}):
        await bridged.command(dave, dave_dm, "!start", "Looking")  # not followed yet
        await bridged.command(dave, dave_dm, "!stop", "left the queue")
        await bridged.moderator.api("POST", f"/_matrix/client/v3/rooms/{quote(private)}/invite",
                                    {"user_id": bridged.bot_id})
        refused = await refused_start(bridged, dave, dave_dm, "your account is banned")
        assert "read from the state" in refused.body


async def test_invites_of_the_bot_over_the_limit_are_rejected(bridged):
    erin = await bridged.client(0, "Erin")
    for _ in range(3):  # bridge.rate_limits.invites.burst
        await bridged.open_dm(erin)
    mark = erin.mark()
    room = await erin.create_dm(bridged.bot_id)
    await erin.wait_for_event(
        lambda s: s.room_id == room and s.type == "m.room.member"
        and s.state_key == bridged.bot_id and s.membership == "leave", since=mark,
        description="the bot rejecting the invite")
    assert not any(s.room_id == room and s.sender == bridged.bot_id
                   and s.type == "m.room.message" for s in erin.log)
