"""The bridge process restarts (gracefully or by crash) mid-conversation; the chat goes on,
and nothing is lost or delivered twice. Also: the appservice API's token check and replayed
transactions, against the real process."""
from __future__ import annotations

import signal
import uuid

import aiohttp
import pytest
from ruamel.yaml import YAML

from bridge.lab.bridged import BridgedLab

pytestmark = pytest.mark.e2e


def bodies(client, room_id: str) -> list[str]:
    return [s.body for s in client.log
            if s.room_id == room_id and s.type == "m.room.message" and s.section == "timeline"]


async def test_conversation_survives_graceful_restart(bridged: BridgedLab):
    alice, alice_dm = await bridged.ready_user(0, "Alice")
    bob, bob_dm = await bridged.ready_user(1, "Bob")
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
    await alice.send_text(alice_room, "before restart")
    await bob.wait_for_message(bob_room, "before restart")

    await bridged.bridge.restart(signal.SIGTERM)

    await alice.send_text(alice_room, "after restart, from alice")
    await bob.wait_for_message(bob_room, "after restart, from alice")
    await bob.send_text(bob_room, "after restart, from bob")
    await alice.wait_for_message(alice_room, "after restart, from bob")
    # Leaving still ends it properly after the restart.
    mark = bob.mark()
    await alice.leave(alice_room)
    await bob.wait_for_event(lambda s: s.room_id == bob_room and "Stranger has disconnected"
                             in (s.body or ""), since=mark, description="disconnect notice")


async def test_messages_sent_while_bridge_is_down_arrive_exactly_once(bridged: BridgedLab):
    carol, carol_dm = await bridged.ready_user(1, "Carol")
    dave, dave_dm = await bridged.ready_user(0, "Dave")
    carol_room, dave_room = await bridged.pair(carol, carol_dm, dave, dave_dm)

    await bridged.bridge.stop(signal.SIGKILL)
    sent = [f"while down {i}" for i in range(5)]
    for body in sent:
        await carol.send_text(carol_room, body)
    await bridged.bridge.start()

    await dave.wait_for_message(dave_room, sent[-1])
    await carol.send_text(carol_room, "after recovery")
    await dave.wait_for_message(dave_room, "after recovery")
    received = [b for b in bodies(dave, dave_room) if b in sent or b == "after recovery"]
    assert received == sent + ["after recovery"], "in order, each exactly once"


async def _put_transaction(bridged: BridgedLab, body: dict, token: str | None,
                           as_header: bool = False) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{bridged.bridge.port}/_matrix/app/v1/transactions/{uuid.uuid4().hex}"
    headers, params = {}, {}
    if token is not None and as_header:
        headers["Authorization"] = f"Bearer {token}"
    elif token is not None:
        params["access_token"] = token
    async with aiohttp.ClientSession() as session:
        async with session.put(url, json=body, headers=headers, params=params) as response:
            return response.status, await response.json(content_type=None)


def hs_token(bridged: BridgedLab) -> str:
    return YAML().load(bridged.bridge.config.read_text())["appservice"]["hs_token"]


async def test_appservice_api_requires_the_homeserver_token(bridged: BridgedLab):
    status, body = await _put_transaction(bridged, {"events": []}, None)
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")
    status, body = await _put_transaction(bridged, {"events": []}, "wrong-token")
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await _put_transaction(bridged, {"events": []}, "wrong", as_header=True)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, _ = await _put_transaction(bridged, {"events": []}, hs_token(bridged), as_header=True)
    assert status == 200


async def test_replayed_transaction_is_not_relayed_twice(bridged: BridgedLab):
    erin, erin_dm = await bridged.ready_user(0, "Erin")
    fred, fred_dm = await bridged.ready_user(1, "Fred")
    erin_room, fred_room = await bridged.pair(erin, erin_dm, fred, fred_dm)
    event_id = await erin.send_text(erin_room, "only once please")
    await fred.wait_for_message(fred_room, "only once please")
    original = next(s.source for s in erin.log if s.event_id == event_id)
    # The homeserver re-delivers the same event under a new transaction ID (as after a
    # restart of either side): the bridge must recognise it by event ID.
    replay = {**original, "room_id": erin_room}
    status, _ = await _put_transaction(bridged, {"events": [replay]}, hs_token(bridged))
    assert status == 200
    await erin.send_text(erin_room, "marker")  # handled after the replay (same room, in order)
    await fred.wait_for_message(fred_room, "marker")
    assert bodies(fred, fred_room).count("only once please") == 1
