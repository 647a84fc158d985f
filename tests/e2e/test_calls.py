"""End to end: 1:1 calls between two real WebRTC peers (aiortc), signalled only through the
bridge (m.call.* between an hs1 user and an hs2 user), with a real TURN server (coturn).

The TURN server listens on 127.0.0.1 and relays from 127.0.0.2; the peers' own addresses
are the machine's interfaces (never 127.0.0.1: aioice leaves it out). So with force_relay,
the only address the receiving client may see is 127.0.0.2, and any of the sender's own
addresses (collected from the sender's real SDP and candidates) in what arrived is a leak.
"""
from __future__ import annotations

import asyncio
import json
import re
import uuid

import asyncpg
import pytest
import pytest_asyncio
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from bridge.lab.bridged import BridgedLab
from bridge.lab.client import LabClient, Seen
from bridge.lab.turn import TurnServer
from tests.e2e.anonymity import leaks
from tests.e2e.conftest import _bridged_lab

pytestmark = pytest.mark.e2e

RELAY_IP = "127.0.0.2"
_IP = re.compile(r"(?<![\w.:])(\d{1,3}(?:\.\d{1,3}){3}|[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7})"
                 r"(?![\w.:])")


@pytest_asyncio.fixture(scope="module")
async def turn(tmp_path_factory: pytest.TempPathFactory) -> TurnServer:
    server = TurnServer(tmp_path_factory.mktemp("turn"), relay_ip=RELAY_IP)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture(scope="module")
async def bridged(tmp_path_factory: pytest.TempPathFactory, turn: TurnServer) -> BridgedLab:
    """This module's own lab: both homeservers hand out the TURN server (turn_uris,
    turn_shared_secret), and the bridge filters candidates (force_relay)."""
    async for lab in _bridged_lab(tmp_path_factory, "calls",
                                  homeserver_config=turn.synapse_config(),
                                  **{"bridge.calls.force_relay": True}):
        yield lab


async def turn_servers(client: LabClient) -> list[RTCIceServer]:
    """What the user's own homeserver hands out (GET /voip/turnServer), as Element does."""
    got = await client.api("GET", "/_matrix/client/v3/voip/turnServer")
    return [RTCIceServer(urls=got["uris"], username=got["username"], credential=got["password"])]


def addresses(value: object) -> set[str]:
    text = json.dumps(value).replace("\\r\\n", "\n")
    text = "\n".join(line for line in text.split("\n") if "fingerprint" not in line)
    return {m.group(0) for m in _IP.finditer(text)}


class Peer:
    """One side's WebRTC peer with a data channel, and the messages it got over it."""

    def __init__(self, client: LabClient, room: str, ice_servers: list[RTCIceServer]):
        self.client, self.room = client, room
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers))
        self.channel_open = asyncio.get_running_loop().create_future()
        self.received: asyncio.Queue[str] = asyncio.Queue()
        self.channel = None
        self.sent_sdp: list[str] = []  # what this side really produced, before any filter

        @self.pc.on("datachannel")
        def on_datachannel(channel):
            self._use(channel)

    def _use(self, channel) -> None:
        self.channel = channel
        channel.on("message", self.received.put_nowait)
        if channel.readyState == "open":
            self.channel_open.set_result(True)
        else:
            channel.on("open", lambda: self.channel_open.done() or self.channel_open.set_result(True))

    async def offer(self) -> tuple[str, list[dict]]:
        """The offer without its candidates, and the candidates (to trickle, as Element does)."""
        self._use(self.pc.createDataChannel("chat"))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = self.pc.localDescription.sdp
        self.sent_sdp.append(sdp)
        lines = sdp.split("\r\n")
        candidates = [{"candidate": line[2:], "sdpMid": "0", "sdpMLineIndex": 0}
                      for line in lines if line.startswith("a=candidate:")]
        bare = "\r\n".join(line for line in lines
                           if not line.startswith(("a=candidate:", "a=end-of-candidates")))
        return bare, candidates + [{"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}]

    async def answer(self, offer_sdp: str, candidates: list[dict]) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        for item in candidates:
            if item["candidate"]:
                candidate = candidate_from_sdp(item["candidate"].split(":", 1)[1])
                candidate.sdpMid, candidate.sdpMLineIndex = item.get("sdpMid"), item.get("sdpMLineIndex")
                await self.pc.addIceCandidate(candidate)
            else:
                await self.pc.addIceCandidate(None)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self.sent_sdp.append(self.pc.localDescription.sdp)
        return self.pc.localDescription.sdp

    def nominated_remote_address(self) -> str:
        ice = self.pc.sctp.transport.transport
        (pair,) = ice._connection._nominated.values()  # aioice's chosen pair
        return pair.remote_addr[0]

    async def close(self) -> None:
        await self.pc.close()


async def wait_call_event(client: LabClient, room: str, event_type: str, since: int) -> Seen:
    return await client.wait_for_event(
        lambda s: s.room_id == room and s.section == "timeline" and s.type == event_type,
        since=since, timeout=60, description=event_type)


def ghost_in(client: LabClient, room: str) -> str:
    """The Stranger in the user's room: whom their client would name as the invitee."""
    return next(s.sender for s in client.log if s.room_id == room and s.type == "m.room.message"
                and s.sender != client.user_id)


async def call(caller: LabClient, caller_room: str, callee: LabClient, callee_room: str,
               relay: bool) -> dict:
    """A whole call, signalled through the bridge: invite, trickled candidates, answer,
    select_answer, data both ways, hangup. Returns what each side received and sent."""
    ice_a = await turn_servers(caller) if relay else []
    ice_b = await turn_servers(callee) if relay else []
    a, b = Peer(caller, caller_room, ice_a), Peer(callee, callee_room, ice_b)
    call_id = f"call{uuid.uuid4().hex}"
    a_mark, b_mark = caller.mark(), callee.mark()
    base = {"call_id": call_id, "party_id": caller.user.device_id, "version": "1"}
    try:
        sdp, candidates = await a.offer()
        invite_id = await caller.send_raw(caller_room, "m.call.invite", {
            **base, "lifetime": 60000, "offer": {"type": "offer", "sdp": sdp},
            "invitee": ghost_in(caller, caller_room)})
        await caller.send_raw(caller_room, "m.call.candidates", {**base, "candidates": candidates})
        invite = await wait_call_event(callee, callee_room, "m.call.invite", b_mark)
        got_candidates = await wait_call_event(callee, callee_room, "m.call.candidates", b_mark)
        seen_call_id = invite.content["call_id"]
        answer_sdp = await b.answer(invite.content["offer"]["sdp"],
                                    got_candidates.content["candidates"])
        b_base = {"call_id": seen_call_id, "party_id": callee.user.device_id, "version": "1"}
        await callee.send_raw(callee_room, "m.call.answer", {
            **b_base, "answer": {"type": "answer", "sdp": answer_sdp}})
        answer = await wait_call_event(caller, caller_room, "m.call.answer", a_mark)
        await a.pc.setRemoteDescription(RTCSessionDescription(answer.content["answer"]["sdp"],
                                                              "answer"))
        await caller.send_raw(caller_room, "m.call.select_answer", {
            **base, "selected_party_id": answer.content["party_id"]})
        select = await wait_call_event(callee, callee_room, "m.call.select_answer", b_mark)

        await asyncio.wait_for(asyncio.gather(a.channel_open, b.channel_open), 60)
        a.channel.send("hello from the caller")
        assert await asyncio.wait_for(b.received.get(), 30) == "hello from the caller"
        b.channel.send("hello from the callee")
        assert await asyncio.wait_for(a.received.get(), 30) == "hello from the callee"
        paths = (a.nominated_remote_address(), b.nominated_remote_address())

        await callee.send_raw(callee_room, "m.call.hangup", {**b_base, "reason": "user_hangup"})
        hangup = await wait_call_event(caller, caller_room, "m.call.hangup", a_mark)
    finally:
        await a.close()
        await b.close()
    return {"invite": invite, "invite_id": invite_id, "candidates": got_candidates,
            "answer": answer, "select": select, "hangup": hangup, "call_id": call_id,
            "caller_sdp": a.sent_sdp, "callee_sdp": b.sent_sdp, "paths": paths,
            "caller_candidates": candidates}


def assert_ids_mapped(result: dict, caller: LabClient, callee: LabClient) -> None:
    invite, answer = result["invite"].content, result["answer"].content
    # The callee sees stand-ins for the caller's call and device...
    assert invite["call_id"] != result["call_id"]
    assert invite["party_id"] != caller.user.device_id and "invitee" not in invite
    assert result["candidates"].content["party_id"] == invite["party_id"]
    # ... the caller gets its own call back, and a stand-in for the callee's device ...
    assert answer["call_id"] == result["call_id"]
    assert answer["party_id"] != callee.user.device_id
    # ... and select_answer names the callee's own real party, or its client hangs up.
    assert result["select"].content["selected_party_id"] == callee.user.device_id
    assert result["hangup"].content == {"call_id": result["call_id"],
                                        "party_id": answer["party_id"], "version": "1",
                                        "reason": "user_hangup"}


def assert_nothing_identifying(lab: BridgedLab, viewer: LabClient, room: str, sender: LabClient,
                               sender_room: str, call_id: str) -> None:
    received = [s.decrypted or s.source for s in viewer.log
                if s.room_id == room and s.sender != viewer.user_id]
    assert leaks(received, sender, allowed_servers={lab.bridge_domain}) == []
    text = json.dumps(received)
    assert sender.user.device_id not in text, "the sender's device ID (party_id) crossed"
    assert call_id not in text, "the sender's own call ID crossed"
    original_ids = {s.event_id for s in sender.log if s.room_id == sender_room and s.event_id}
    assert not {i for i in original_ids if i in text}, "original event IDs crossed"


async def test_call_connects_peer_to_peer_in_plain_rooms(bridged: BridgedLab):
    async with bridged.reconfigured(**{"bridge.calls.force_relay": False}):
        alice, alice_dm = await bridged.ready_user(0, "Alice")
        bob, bob_dm = await bridged.ready_user(1, "Bob")
        alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
        result = await call(alice, alice_room, bob, bob_room, relay=False)
    assert_ids_mapped(result, alice, bob)
    # Without force_relay the peers' own addresses cross, and they connect directly.
    host_candidates = [c for c in result["candidates"].content["candidates"]
                       if " typ host" in c["candidate"]]
    assert host_candidates and RELAY_IP not in result["paths"]
    assert_nothing_identifying(bridged, bob, bob_room, alice, alice_room, result["call_id"])
    # Bob's client knows the call by its stand-in: Alice gets her own ID back, never it.
    assert_nothing_identifying(bridged, alice, alice_room, bob, bob_room,
                               result["invite"].content["call_id"])

    # The stand-ins (which name both devices) go with the conversation.
    assert await call_id_rows(bridged, alice.user.device_id) == 1
    mark = bob.mark()
    await alice.leave(alice_room)
    await bob.wait_for_event(lambda s: s.room_id == bob_room and s.membership == "leave"
                             and s.sender != bob.user_id, since=mark, description="ghost leaving")
    assert await call_id_rows(bridged, alice.user.device_id) == 0


async def call_id_rows(lab: BridgedLab, device_id: str) -> int:
    conn = await asyncpg.connect(lab.database_uri)
    try:
        return await conn.fetchval("SELECT count(*) FROM call_ids WHERE real_id = $1", device_id)
    finally:
        await conn.close()


@pytest.mark.parametrize("caller_encrypted, callee_encrypted", [(True, False), (True, True)],
                         ids=["mixed", "encrypted"])
async def test_force_relay_lets_no_address_cross_and_the_call_goes_through_turn(
        bridged: BridgedLab, turn: TurnServer, caller_encrypted: bool, callee_encrypted: bool):
    alice, alice_dm = await bridged.ready_user(0, "Alice", encrypted=caller_encrypted)
    bob, bob_dm = await bridged.ready_user(1, "Bob", encrypted=callee_encrypted)
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
    result = await call(alice, alice_room, bob, bob_room, relay=True)
    assert_ids_mapped(result, alice, bob)
    assert (result["invite"].raw_type == "m.room.encrypted") is callee_encrypted
    assert (result["answer"].raw_type == "m.room.encrypted") is caller_encrypted

    # Each side really offered its own addresses: host candidates, and raddr of the relay.
    for sdp in result["caller_sdp"] + result["callee_sdp"]:
        assert " typ host" in sdp and " typ relay raddr " in sdp
    own = addresses(result["caller_sdp"]) | addresses(result["callee_sdp"])
    assert own - {RELAY_IP, "0.0.0.0"}, "the peers' own addresses were expected in their SDP"
    # What each side received: relay candidates only, no address but the relay's.
    for received in ((result["invite"], result["candidates"], result["select"]),
                     (result["answer"], result["hangup"])):
        contents = [seen.content for seen in received]
        assert not re.search(r"typ (host|srflx|prflx)", json.dumps(contents))
        assert addresses(contents) <= {RELAY_IP, "0.0.0.0", "::"}
        assert addresses(contents) & {RELAY_IP}
    got = result["candidates"].content["candidates"]
    assert [c["candidate"] for c in got][-1] == ""  # the end-of-candidates marker passed
    assert all(" typ relay raddr 0.0.0.0 rport 0" in c["candidate"] for c in got[:-1])
    assert len(got) < len(result["caller_candidates"])  # the host candidates were dropped
    # And the call still connected, through the TURN server's relay on both sides.
    assert result["paths"] == (RELAY_IP, RELAY_IP)

    assert_nothing_identifying(bridged, bob, bob_room, alice, alice_room, result["call_id"])
    assert_nothing_identifying(bridged, alice, alice_room, bob, bob_room,
                               result["invite"].content["call_id"])


async def test_element_call_is_not_relayed_and_the_caller_is_told_once(bridged: BridgedLab):
    alice, alice_dm = await bridged.ready_user(0, "Alice")
    bob, bob_dm = await bridged.ready_user(1, "Bob")
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
    a_mark, b_mark = alice.mark(), bob.mark()
    state_key = f"_{alice.user_id}_{alice.user.device_id}"
    membership = {"application": "m.call", "call_id": "", "scope": "m.room",
                  "device_id": alice.user.device_id, "foci_preferred": [], "expires": 3600000}
    path = f"/_matrix/client/v3/rooms/{alice_room}/state/org.matrix.msc3401.call.member/"
    await alice.api("PUT", path + state_key, membership)
    await alice.wait_for_event(
        lambda s: s.room_id == alice_room and "Group calls" in (s.body or ""), since=a_mark,
        description="the group call notice")
    await alice.send_raw(alice_room, "org.matrix.msc4075.rtc.notification",
                         {"application": "m.call", "notification_type": "ring",
                          "m.mentions": {"user_ids": []}})
    await alice.api("PUT", path + state_key, {**membership, "expires": 7200000})  # a refresh
    await alice.api("PUT", path + state_key, {})  # the leave
    # Ordered after all of that in the relay: once it arrives, nothing else is coming.
    await alice.send_text(alice_room, "after the group call")
    await bob.wait_for_message(bob_room, "after the group call", since=b_mark)
    notices = [s for s in alice.log[a_mark:] if s.room_id == alice_room
               and "Group calls" in (s.body or "")]
    assert len(notices) == 1
    crossed = [s.type for s in bob.log[b_mark:] if s.room_id == bob_room]
    assert not [t for t in crossed if "call" in t or "rtc" in t], crossed


async def test_with_calls_off_the_caller_is_told_and_nothing_crosses(bridged: BridgedLab):
    async with bridged.reconfigured(**{"bridge.calls.enabled": False}):
        alice, alice_dm = await bridged.ready_user(0, "Alice")
        bob, bob_dm = await bridged.ready_user(1, "Bob")
        alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
        a_mark, b_mark = alice.mark(), bob.mark()
        base = {"call_id": "offcall", "party_id": alice.user.device_id, "version": "1"}
        await alice.send_raw(alice_room, "m.call.invite", {
            **base, "lifetime": 60000, "offer": {"type": "offer", "sdp": "v=0\r\n"}})
        await alice.wait_for_event(
            lambda s: s.room_id == alice_room and "Calls are turned off" in (s.body or ""),
            since=a_mark, description="the calls-off notice")
        await alice.send_raw(alice_room, "m.call.hangup", base)
        await alice.send_text(alice_room, "after the call")
        await bob.wait_for_message(bob_room, "after the call", since=b_mark)
    assert not [s for s in bob.log[b_mark:] if s.room_id == bob_room and "call" in (s.type or "")
                and s.type != "m.room.message"]
    assert len([s for s in alice.log[a_mark:] if "Calls are turned off" in (s.body or "")]) == 1
