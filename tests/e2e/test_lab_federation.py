"""The lab itself: two homeservers really federate over TLS, and the test client sees it all."""

from __future__ import annotations

import ssl

import aiohttp
import pytest

from bridge.lab.synapse import Lab, unique_localpart

pytestmark = pytest.mark.e2e


async def test_federation_listener_speaks_tls_with_lab_ca(lab: Lab) -> None:
    hs = lab.homeservers[1]
    assert hs.certs is not None
    # Verify exactly as a remote server would: our CA, hostname "localhost".
    ctx = ssl.create_default_context(cafile=str(hs.certs.ca_cert))
    url = f"https://{hs.server_name}/_matrix/federation/v1/version"
    async with aiohttp.ClientSession() as session, session.get(url, ssl=ctx) as resp:
        assert resp.status == 200
        assert (await resp.json())["server"]["name"] == "Synapse"


async def test_dm_across_homeservers(lab: Lab, make_client) -> None:
    hs1, hs2 = lab.homeservers
    alice = await make_client(await hs1.register_user(unique_localpart("alice"), displayname="A"))
    bob = await make_client(await hs2.register_user(unique_localpart("bob"), displayname="B"))
    assert alice.user_id.endswith(":" + hs1.server_name)
    assert bob.user_id.endswith(":" + hs2.server_name)

    room_id = await alice.create_dm(bob.user_id)
    invite = await bob.wait_for_event(
        lambda s: s.section == "invite" and s.room_id == room_id and s.membership == "invite")
    assert invite.sender == alice.user_id
    assert invite.content.get("is_direct") is True
    assert await bob.wait_for_invite(lambda s: s.sender == alice.user_id) == room_id

    await bob.join(room_id)
    await alice.wait_for_event(lambda s: s.room_id == room_id and s.membership == "join"
                               and s.state_key == bob.user_id)

    first = await alice.send_text(room_id, "hello from hs1", formatted_body="<b>hello</b> from hs1")
    got = await bob.wait_for_message(room_id, "hello from hs1")
    assert got.sender == alice.user_id
    assert got.event_id == first
    assert got.content["formatted_body"] == "<b>hello</b> from hs1"

    since = alice.mark()
    answer = await bob.send_text(room_id, "hi back from hs2", reply_to=first)
    got = await alice.wait_for_message(room_id, "hi back from hs2", since=since)
    assert got.sender == bob.user_id
    assert got.event_id == answer
    assert got.content["m.relates_to"] == {"m.in_reply_to": {"event_id": first}}

    # Bob's log keeps raw events from every section: the invite state and the joined timeline.
    sections = {s.section for s in bob.log if s.room_id == room_id}
    assert {"invite", "timeline"} <= sections
    assert any(e.get("type") == "m.room.create" for e in bob.events_in(room_id))
    assert any(alice.user_id in str(e) for e in bob.events_in(room_id))


async def test_client_survives_homeserver_restart(lab: Lab, make_client) -> None:
    hs1, hs2 = lab.homeservers
    carol = await make_client(await hs1.register_user(unique_localpart("carol")))
    dave = await make_client(await hs2.register_user(unique_localpart("dave")))
    room_id = await carol.create_dm(dave.user_id)
    await dave.join(await dave.wait_for_invite(lambda s: s.room_id == room_id))

    await hs2.restart()  # same ports, same database: dave's sync loop reconnects by itself
    await carol.send_text(room_id, "still there?")
    got = await dave.wait_for_message(room_id, "still there?")
    assert got.sender == carol.user_id
