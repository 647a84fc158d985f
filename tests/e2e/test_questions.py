"""End to end: question mode on two federated homeservers with real clients. The asker is on
hs2, one discusser (dana, !discuss) on hs1 and the other (dev, !questions on and !start) on
hs2. The discussers chat as usual, their first notice the question; the asker watches
"Stranger 1" and "Stranger 2" in a read-only room; nothing of the asker reaches them, and
nothing the asker types is relayed. Plain, encrypted and mixed rooms (the discussers' and
the watch room's)."""
from __future__ import annotations

import asyncio
import re
import signal

import asyncpg
import pytest

from bridge.lab.bridged import BridgedLab
from bridge.lab.client import LabClient
from tests.e2e.anonymity import assert_anonymous

pytestmark = pytest.mark.e2e

GHOST = re.compile(r"@_stranger_[a-z0-9]+:")
QUESTION = "What is the best pizza topping?"

# (dana's room, dev's room, the asker's watch room) encrypted.
ROOMS = pytest.mark.parametrize("dana_encrypted, dev_encrypted, asker_encrypted", [
    (False, False, False), (True, True, True), (True, False, True), (False, True, False),
], ids=["plain", "encrypted", "mixed", "mixed-plain-watch"])


async def question_state(bridged: BridgedLab, asker: LabClient) -> tuple[str, bool] | None:
    conn = await asyncpg.connect(bridged.database_uri)
    try:
        row = await conn.fetchrow(
            """SELECT state, closed_at IS NOT NULL AS closed FROM questions WHERE asker = $1
               ORDER BY id DESC LIMIT 1""", asker.user_id)
        return (row["state"], row["closed"]) if row else None
    finally:
        await conn.close()


async def watch_closed(bridged: BridgedLab, asker: LabClient, timeout: float = 60) -> None:
    """Wait until the bridge has closed the asker's watch (ghosts out of the room)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await question_state(bridged, asker) != ("ended", True):
        assert asyncio.get_running_loop().time() < deadline, "watch not closed"
        await asyncio.sleep(0.1)  # the database has no change notification to wait on


async def question_under_way(bridged: BridgedLab, dana_encrypted: bool, dev_encrypted: bool,
                             asker_encrypted: bool):
    """The three ready, the question asked, both discussers in their chat (the question
    shown first) and the asker in the watch room (opened). Returns the clients, DMs and
    rooms."""
    asker, asker_dm = await bridged.ready_user(1, "Asker", encrypted=asker_encrypted)
    dana, dana_dm = await bridged.ready_user(0, "Dana", encrypted=dana_encrypted)
    dev, dev_dm = await bridged.ready_user(1, "Dev", encrypted=dev_encrypted)
    marks = asker.mark(), dana.mark(), dev.mark()
    await bridged.command(asker, asker_dm, f"!ask {QUESTION}", "waiting for two strangers")
    await bridged.command(dana, dana_dm, "!discuss", "Waiting for a question")
    await bridged.command(dev, dev_dm, "!questions on", "may now come to you")
    await bridged.command(dev, dev_dm, "!start", "Looking for a stranger")
    dana_room = await bridged.accept_chat(dana, marks[1], opened=False)
    dev_room = await bridged.accept_chat(dev, marks[2], opened=False)
    # The discussion starts once the asker is in the watch room too.
    watch = await asker.wait_for_invite(lambda s: GHOST.match(s.sender or "") is not None,
                                        since=marks[0], timeout=60)
    await asker.join(watch)
    await asker.wait_for_event(
        lambda s: s.room_id == watch and (s.body or "").startswith(
            f"Two strangers are discussing your question: {QUESTION}"),
        since=marks[0], description="watch opened")
    for client, room, mark in ((dana, dana_room, marks[1]), (dev, dev_room, marks[2])):
        asked = await client.wait_for_event(
            lambda s: s.room_id == room and f"A stranger asks: {QUESTION}" == s.body,
            since=mark, description="the question")
        await client.wait_for_event(
            lambda s: s.room_id == room and "now chatting" in (s.body or ""),
            since=asked.index, description="chat opened after the question")
    return (asker, asker_dm, watch), (dana, dana_dm, dana_room), (dev, dev_dm, dev_room)


def said_in(client: LabClient, room: str, text: str):
    return client.wait_for_event(
        lambda s: s.room_id == room and s.type == "m.room.message" and s.body == text,
        description=f"{text!r}", timeout=60)


@ROOMS
async def test_the_asker_watches_and_a_discusser_leaving_ends_all_three(
        bridged: BridgedLab, dana_encrypted: bool, dev_encrypted: bool, asker_encrypted: bool):
    (asker, asker_dm, watch), (dana, dana_dm, dana_room), (dev, dev_dm, dev_room) = (
        await question_under_way(bridged, dana_encrypted, dev_encrypted, asker_encrypted))
    # What each discusser says reaches the other, and the asker as Stranger 1 / Stranger 2.
    await dana.send_text(dana_room, "Pineapple, obviously.")
    await said_in(dev, dev_room, "Pineapple, obviously.")
    first = await said_in(asker, watch, "Pineapple, obviously.")
    await dev.send_text(dev_room, "Never pineapple.")
    await said_in(dana, dana_room, "Never pineapple.")
    second = await said_in(asker, watch, "Never pineapple.")
    assert GHOST.match(first.sender) and GHOST.match(second.sender)
    assert first.sender != second.sender  # two ghosts, one per discusser
    names = {s.state_key: s.content.get("displayname") for s in asker.log
             if s.room_id == watch and s.type == "m.room.member"}
    assert (names[first.sender], names[second.sender]) == ("Stranger 1", "Stranger 2")
    # The asker types in the watch room: told once that it is read-only, relayed nowhere.
    mark = asker.mark()
    await asker.send_text(watch, "Hello? Can you hear me?")
    await asker.wait_for_event(lambda s: s.room_id == watch and "read-only" in (s.body or ""),
                               since=mark, description="read-only notice")
    await asker.send_text(watch, "Anyone?")
    # A discusser's command and its answer stay in their room: the watch never sees them.
    await dana.send_text(dana_room, "!status")
    await dana.wait_for_event(lambda s: s.room_id == dana_room and "Right now" in (s.body or ""),
                              description="status in the room")
    await dana.send_text(dana_room, "Mushrooms, then.")
    await said_in(dev, dev_room, "Mushrooms, then.")
    await said_in(asker, watch, "Mushrooms, then.")
    # Dana leaves: Dev is told as usual, the asker that Stranger 1 disconnected, and the
    # watch ends.
    mark_asker, mark_dev = asker.mark(), dev.mark()
    await dana.leave(dana_room)
    await dev.wait_for_event(
        lambda s: s.room_id == dev_room
        and (s.body or "").startswith("Stranger has disconnected."),
        since=mark_dev, description="partner left")
    await asker.wait_for_event(
        lambda s: s.room_id == watch and s.body == "Stranger 1 has disconnected.",
        since=mark_asker, description="Stranger 1 left")
    await bridged.cleaned_up([dana_room, dev_room])
    await watch_closed(bridged, asker)
    for client, dm in ((asker, asker_dm), (dana, dana_dm), (dev, dev_dm)):
        await bridged.settled(client, dm)
    # Nothing the asker typed, and none of the bridge's notices in the watch room, reached
    # the discussers; the read-only notice came once.
    for client in (dana, dev):
        bodies = {s.body for s in client.log}
        assert not bodies & {"Hello? Can you hear me?", "Anyone?"}
        assert not any("read-only" in (b or "") for b in bodies)
    read_only = [s for s in asker.log if s.room_id == watch and "read-only" in (s.body or "")]
    assert len(read_only) == 1
    watch_bodies = [s.body for s in asker.log if s.room_id == watch and s.body]
    assert not any("Right now" in b or "A stranger asks" in b for b in watch_bodies)
    assert not [s for s in asker.log if s.room_id == watch and s.undecryptable]
    assert_anonymous(bridged.bridge_domain, (asker, dana), (asker, dev), (dana, asker),
                     (dev, asker), (dana, dev), (dev, dana))


@pytest.mark.parametrize("dana_encrypted, dev_encrypted, asker_encrypted", [
    (False, False, False), (True, True, True), (False, True, True),
], ids=["plain", "encrypted", "mixed"])
async def test_the_asker_leaving_ends_only_the_watch(
        bridged: BridgedLab, dana_encrypted: bool, dev_encrypted: bool, asker_encrypted: bool):
    (asker, asker_dm, watch), (dana, dana_dm, dana_room), (dev, dev_dm, dev_room) = (
        await question_under_way(bridged, dana_encrypted, dev_encrypted, asker_encrypted))
    await dana.send_text(dana_room, "Olives.")
    await said_in(asker, watch, "Olives.")
    await asker.leave(watch)
    await watch_closed(bridged, asker)
    # The discussers go on, told nothing.
    await dev.send_text(dev_room, "Olives are fine.")
    await said_in(dana, dana_room, "Olives are fine.")
    await dana.send_text(dana_room, "Agreed.")
    await said_in(dev, dev_room, "Agreed.")
    assert not [s for s in dana.log + dev.log if "disconnected" in (s.body or "")]
    await dev.send_text(dev_room, "!stop")
    await bridged.cleaned_up([dana_room, dev_room])
    for client, dm in ((asker, asker_dm), (dana, dana_dm), (dev, dev_dm)):
        await bridged.settled(client, dm)
    # The asker saw nothing after leaving.
    assert not [s for s in asker.log if s.body in ("Olives are fine.", "Agreed.")]
    assert_anonymous(bridged.bridge_domain, (asker, dana), (asker, dev), (dana, asker),
                     (dev, asker), (dana, dev), (dev, dana))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["graceful", "crash"])
async def test_a_restart_mid_question_keeps_the_watch(bridged: BridgedLab, sig: int):
    (asker, asker_dm, watch), (dana, dana_dm, dana_room), (dev, dev_dm, dev_room) = (
        await question_under_way(bridged, True, False, True))
    await dana.send_text(dana_room, "Before the restart.")
    await said_in(asker, watch, "Before the restart.")
    await bridged.bridge.restart(sig)
    # Still relayed to the other discusser and mirrored to the asker, both ways.
    await dana.send_text(dana_room, "After the restart.")
    await said_in(dev, dev_room, "After the restart.")
    await said_in(asker, watch, "After the restart.")
    await dev.send_text(dev_room, "Indeed.")
    await said_in(asker, watch, "Indeed.")
    # And the ends still hold: Dev's !next ends the watch, told once.
    mark = asker.mark()
    await dev.send_text(dev_room, "!next")
    await asker.wait_for_event(
        lambda s: s.room_id == watch and s.body == "Stranger 2 has disconnected.",
        since=mark, description="Stranger 2 left")
    await bridged.cleaned_up([dana_room, dev_room])
    await watch_closed(bridged, asker)
    await bridged.settled(asker, asker_dm)
    for text in ("Before the restart.", "After the restart.", "Indeed.",
                 "Stranger 2 has disconnected."):
        assert len([s for s in asker.log if s.room_id == watch and s.body == text]) == 1
    assert_anonymous(bridged.bridge_domain, (asker, dana), (asker, dev), (dana, asker),
                     (dev, asker))
