"""Call signalling across the boundary (bridge/relay/calls.py): allow-listed content, mapped
IDs, and the force_relay ICE filter on real-shaped SDP (aiortc's own, Chrome's, Firefox's)."""
from __future__ import annotations

import json
import re

import pytest

from bridge.relay.calls import (CallIds, ids_of, is_call_event, joins_group_call,
                                relay_only_candidate, relay_only_sdp, sanitise_call)
from bridge.relay.sanitise import Refused

# What aiortc 1.16 produced here with a coturn relay on 127.0.0.2 (host 192.0.2.2, fd00::2).
AIORTC_OFFER = "\r\n".join([
    "v=0", "o=- 4005388121 4005388121 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "a=msid-semantic:WMS *", "m=application 52547 UDP/DTLS/SCTP webrtc-datachannel",
    "c=IN IP4 192.0.2.2", "a=mid:0", "a=sctp-port:5000", "a=max-message-size:262144",
    "a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 192.0.2.2 52547 typ host",
    "a=candidate:d0bcf3d9c29a2bc887618212a1623bfa 1 udp 2130706431 fd00::2 52424 typ host",
    "a=candidate:3bf60621af2a3c4ddfa6cf7775c7851d 1 udp 16777215 127.0.0.2 56815 typ relay "
    "raddr 127.0.0.1 rport 37145",
    "a=end-of-candidates", "a=ice-ufrag:FfTT", "a=ice-pwd:nLxiPAangAFocbgMhTDN85",
    "a=fingerprint:sha-256 A0:BA:A3:AB:8E:8E:C7:B8:D3:75:C2:FC:EF:28:CA:06:C9:76:CB:3C:34:82:"
    "C6:EA:A1:2B:DB:96:65:06:80:79", "a=setup:actpass", ""])

# Chrome's shape: o= with 127.0.0.1, trickle, mDNS host, srflx, prflx, relay, TCP host.
CHROME_OFFER = "\r\n".join([
    "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "a=extmap-allow-mixed", "a=msid-semantic: WMS 3c7d0e0a", "m=audio 54400 UDP/TLS/RTP/SAVPF 111",
    "c=IN IP4 203.0.113.7", "a=rtcp:9 IN IP4 0.0.0.0",
    "a=candidate:2999745851 1 udp 2122260223 192.168.1.23 54400 typ host generation 0 "
    "network-id 1 network-cost 10",
    "a=candidate:1510613869 1 tcp 1518280447 192.168.1.23 9 typ host tcptype active "
    "generation 0 network-id 1",
    "a=candidate:4233069003 1 udp 2122262783 1f1c6b2e-2a2c-4d3b-9f2e-8a7d3b2c1a0f.local 56789 "
    "typ host generation 0 network-id 2",
    "a=candidate:842163049 1 udp 1686052607 203.0.113.7 54400 typ srflx raddr 192.168.1.23 "
    "rport 54400 generation 0 network-id 1 network-cost 10",
    "a=candidate:1845501695 1 udp 1845501695 203.0.113.8 54401 typ prflx raddr 192.168.1.23 "
    "rport 54400 generation 0",
    "a=candidate:3056289876 1 udp 41885439 198.51.100.20 61200 typ relay raddr 203.0.113.7 "
    "rport 54400 generation 0 ufrag Xyz1 network-id 1 network-cost 10 secret 192.168.1.23",
    "a=ice-ufrag:Xyz1", "a=ice-pwd:2a1b3c4d5e6f7g8h9i0j1k2l", "a=ice-options:trickle",
    "a=fingerprint:sha-256 11:22:33", "a=setup:actpass", "a=mid:0", "a=sendrecv",
    "a=msid:3c7d0e0a 9f8e7d6c", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2",
    "a=ssrc:12345 cname:abcdEFGH", ""])

# Firefox's shape: its own o= username, uppercase transports, an IPv6 host, a=rtcp address.
FIREFOX_ANSWER = "\r\n".join([
    "v=0", "o=mozilla...THIS_IS_SDPARTA-99.0 5130932316381734010 0 IN IP4 0.0.0.0", "s=-",
    "t=0 0", "a=fingerprint:sha-256 AA:BB:CC", "a=group:BUNDLE 0", "a=ice-options:trickle",
    "a=msid-semantic:WMS *", "m=audio 50001 UDP/TLS/RTP/SAVPF 109", "c=IN IP6 2001:db8::5",
    "a=candidate:0 1 UDP 2122252543 10.0.0.5 50001 typ host",
    "a=candidate:1 1 UDP 1686052863 203.0.113.9 50001 typ srflx raddr 10.0.0.5 rport 50001",
    "a=candidate:2 1 UDP 92217087 198.51.100.20 62000 typ relay raddr 203.0.113.9 rport 50001",
    "a=candidate:3 1 TCP 2105524479 10.0.0.5 9 typ host tcptype active",
    "a=candidate:4 1 UDP 2122187007 2001:db8::5 50002 typ host",
    "a=sendrecv", "a=end-of-candidates", "a=ice-pwd:e3f4", "a=ice-ufrag:a1b2", "a=mid:0",
    "a=rtcp:50002 IN IP4 10.0.0.5", "a=rtcp-mux", "a=setup:active", ""])

_ADDRESS = re.compile(r"(?<![\w.:])(\d{1,3}(?:\.\d{1,3}){3}|[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7})"
                      r"(?![\w.:])|[\w-]+\.local\b")


def addresses(sdp: str) -> set[str]:
    lines = "\n".join(line for line in sdp.splitlines() if not line.startswith("a=fingerprint:"))
    return {m.group(0) for m in _ADDRESS.finditer(lines)}


@pytest.mark.parametrize("sdp, relay_address, private", [
    (AIORTC_OFFER, "127.0.0.2", {"192.0.2.2", "fd00::2", "127.0.0.1"}),
    (CHROME_OFFER, "198.51.100.20", {"192.168.1.23", "203.0.113.7", "203.0.113.8",
                                      "127.0.0.1", "1f1c6b2e-2a2c-4d3b-9f2e-8a7d3b2c1a0f.local"}),
    (FIREFOX_ANSWER, "198.51.100.20", {"10.0.0.5", "203.0.113.9", "2001:db8::5"}),
], ids=["aiortc", "chrome", "firefox"])
def test_force_relay_sdp_keeps_only_the_relay_address(sdp, relay_address, private):
    assert private <= addresses(sdp)  # the samples do carry what must go
    out = relay_only_sdp(sdp)
    assert addresses(out) <= {relay_address, "0.0.0.0", "::"}
    assert re.findall(r"typ (\w+)", out) == ["relay"]
    (relay,) = [line for line in out.split("\r\n") if line.startswith("a=candidate:")]
    assert f" {relay_address} " in relay and "raddr 0.0.0.0 rport 0" in relay
    # Everything that is not about addresses is untouched, in order.
    untouched = [line for line in sdp.split("\r\n")
                 if not line.startswith(("a=candidate:", "c=", "o=", "a=rtcp:"))]
    assert [line for line in out.split("\r\n")
            if not line.startswith(("a=candidate:", "c=", "o=", "a=rtcp:"))] == untouched
    assert out.endswith("\r\n")


def test_force_relay_sdp_blanks_connection_origin_and_rtcp_lines():
    out = relay_only_sdp(FIREFOX_ANSWER).split("\r\n")
    assert "c=IN IP6 ::" in out
    assert "o=- 5130932316381734010 0 IN IP4 0.0.0.0" in out  # no client name either
    assert "a=rtcp:50002 IN IP4 0.0.0.0" in out
    assert "a=end-of-candidates" in out
    chrome = relay_only_sdp(CHROME_OFFER).split("\r\n")
    assert "o=- 4611731400430051336 2 IN IP4 0.0.0.0" in chrome
    assert "c=IN IP4 0.0.0.0" in chrome and "a=rtcp:9 IN IP4 0.0.0.0" in chrome


def test_force_relay_sdp_drops_address_lines_of_unknown_shape():
    sdp = "v=0\nc=IN IP4\nc=IN IP9 10.1.1.1\na=rtcp:9 IN IP4 10.1.1.1 extra\no=garbage\n" \
          "a=remote-candidates:1 10.1.1.1 5000\n"
    out = relay_only_sdp(sdp)
    assert "10.1.1.1" not in out and "garbage" not in out
    assert out.split("\n") == ["v=0", "o=- 0 0 IN IP4 0.0.0.0", ""]


@pytest.mark.parametrize("candidate", [
    "candidate:1 1 udp 2122252543 10.0.0.5 50001 typ host",
    "candidate:1 1 udp 1686052863 203.0.113.9 50001 typ srflx raddr 10.0.0.5 rport 50001",
    "candidate:1 1 udp 1845501695 203.0.113.8 54401 typ prflx raddr 10.0.0.5 rport 1",
    "candidate:1 1 udp 1 a.local 5 typ host",
    "candidate:1 1 udp 41885439 198.51.100.20 61200 typ relay raddr",  # unreadable
    "candidate:1 1 udp 41885439 198.51.100.20 61200 typ relay\nraddr 10.0.0.5 rport 1",
    "garbage 198.51.100.20 typ relay",
    "",
])
def test_non_relay_or_unreadable_candidates_are_dropped(candidate):
    assert relay_only_candidate(candidate) is None


def test_relay_candidate_loses_its_origin_and_unknown_extensions():
    out = relay_only_candidate(
        "candidate:3056289876 1 udp 41885439 198.51.100.20 61200 typ relay raddr 203.0.113.7 "
        "rport 54400 generation 0 ufrag Xyz1 network-id 1 network-cost 10 note 10.0.0.5")
    assert out == ("candidate:3056289876 1 udp 41885439 198.51.100.20 61200 typ relay "
                   "raddr 0.0.0.0 rport 0 generation 0 ufrag Xyz1 network-id 1 network-cost 10")
    assert relay_only_candidate("candidate:2 1 UDP 92217087 198.51.100.20 62000 typ relay") == \
        "candidate:2 1 UDP 92217087 198.51.100.20 62000 typ relay"


# --- content ---------------------------------------------------------------------------------

IDS = CallIds(call_id="MAPPEDCALL", party_id="MAPPEDPARTY", selected_party_id="RECEIVERDEVICE")
SENDER = {"call_id": "1700000000000aliceCall", "party_id": "ALICEDEVICE", "version": "1"}


def test_invite_is_rebuilt_with_mapped_ids_and_nothing_else():
    content = {**SENDER, "lifetime": 60000, "offer": {"type": "offer", "sdp": AIORTC_OFFER},
               "invitee": "@alice:hs1.example", "conf_id": "group", "x-extra": "@alice:hs1",
               "sdp_stream_metadata": {"{abc-1}": {"purpose": "m.usermedia", "audio_muted": False,
                                                   "who": "@alice:hs1"},
                                       "bad id @alice": {"purpose": "m.usermedia"},
                                       "s2": {"purpose": "nope"}},
               "capabilities": {"m.call.transferee": False, "m.call.dtmf": True, "x": "@alice"}}
    out = sanitise_call("m.call.invite", content, IDS, force_relay=False)
    assert out == {"call_id": "MAPPEDCALL", "party_id": "MAPPEDPARTY", "version": "1",
                   "lifetime": 60000, "offer": {"type": "offer", "sdp": AIORTC_OFFER},
                   "sdp_stream_metadata": {"{abc-1}": {"purpose": "m.usermedia",
                                                       "audio_muted": False}},
                   "capabilities": {"m.call.transferee": False, "m.call.dtmf": True}}
    relayed = sanitise_call("m.call.invite", content, IDS, force_relay=True)
    assert relayed["offer"]["sdp"] == relay_only_sdp(AIORTC_OFFER)
    assert "ALICEDEVICE" not in json.dumps(out) and "aliceCall" not in json.dumps(out)


def test_answer_and_negotiate_carry_their_description():
    answer = sanitise_call("m.call.answer", {**SENDER, "answer": {"type": "answer",
                                                                  "sdp": FIREFOX_ANSWER}},
                           IDS, force_relay=True)
    assert answer["answer"] == {"type": "answer", "sdp": relay_only_sdp(FIREFOX_ANSWER)}
    negotiate = sanitise_call("m.call.negotiate", {**SENDER, "lifetime": 10000, "description": {
        "type": "offer", "sdp": CHROME_OFFER}}, IDS, force_relay=False)
    assert negotiate["description"]["sdp"] == CHROME_OFFER and negotiate["lifetime"] == 10000


def test_select_answer_names_the_receivers_own_party():
    out = sanitise_call("m.call.select_answer", {**SENDER, "selected_party_id": "MAPPEDBOB"},
                        IDS, force_relay=False)
    assert out["selected_party_id"] == "RECEIVERDEVICE" and out["party_id"] == "MAPPEDPARTY"
    unknown = CallIds(call_id="C", party_id="P", selected_party_id=None)
    assert sanitise_call("m.call.select_answer", {**SENDER, "selected_party_id": "X"}, unknown,
                         force_relay=False) == Refused("malformed", "selected_party_id names no "
                                                                    "party of this call")


def test_candidates_filtered_and_end_marker_passes():
    candidates = [
        {"candidate": "candidate:1 1 udp 2122252543 10.0.0.5 50001 typ host", "sdpMid": "0",
         "sdpMLineIndex": 0},
        {"candidate": "candidate:2 1 udp 92217087 198.51.100.20 62000 typ relay raddr 10.0.0.5 "
                      "rport 50001", "sdpMid": "0", "sdpMLineIndex": 0,
         "usernameFragment": "a1b2", "foo": "@alice:hs1"},
        {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0},
    ]
    relayed = sanitise_call("m.call.candidates", {**SENDER, "candidates": candidates}, IDS,
                            force_relay=True)
    assert relayed["candidates"] == [
        {"candidate": "candidate:2 1 udp 92217087 198.51.100.20 62000 typ relay raddr 0.0.0.0 "
                      "rport 0", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "a1b2"},
        {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}]
    plain = sanitise_call("m.call.candidates", {**SENDER, "candidates": candidates}, IDS,
                          force_relay=False)
    assert [c["candidate"] for c in plain["candidates"]] == [c["candidate"] for c in candidates]
    assert "foo" not in plain["candidates"][1]
    odd = [{"candidate": "I am @alice:hs1.example", "sdpMid": "0"}, candidates[0]]
    assert [c["candidate"] for c in sanitise_call(
        "m.call.candidates", {**SENDER, "candidates": odd}, IDS, force_relay=False)["candidates"]] \
        == [candidates[0]["candidate"]]
    only_host = {**SENDER, "candidates": candidates[:1]}
    assert sanitise_call("m.call.candidates", only_host, IDS, force_relay=True) is None


def test_hangup_and_reject_keep_only_a_reason_code():
    out = sanitise_call("m.call.hangup", {**SENDER, "reason": "user_hangup"}, IDS, force_relay=False)
    assert out == {"call_id": "MAPPEDCALL", "party_id": "MAPPEDPARTY", "version": "1",
                   "reason": "user_hangup"}
    out = sanitise_call("m.call.reject", {**SENDER, "reason": "I am @alice:hs1"}, IDS,
                        force_relay=False)
    assert "reason" not in out
    legacy = sanitise_call("m.call.hangup", {"call_id": "c", "version": 0}, CallIds("MAPPED"),
                           force_relay=False)
    assert legacy == {"call_id": "MAPPED", "version": 0}


@pytest.mark.parametrize("event_type, content, ids, detail", [
    ("m.call.invite", [], IDS, "content is not an object"),
    ("m.call.invite", {**SENDER, "version": "2"}, IDS, "unknown call version"),
    ("m.call.invite", {**SENDER, "version": True}, IDS, "unknown call version"),
    ("m.call.invite", {**SENDER, "offer": {"type": "offer", "sdp": AIORTC_OFFER}},
     CallIds(None, "P"), "call_id missing"),
    ("m.call.invite", {"call_id": "c", "version": "1", "offer": {}}, IDS, "party_id missing"),
    ("m.call.invite", {**SENDER, "offer": {"type": "answer", "sdp": AIORTC_OFFER}}, IDS,
     "session description missing or of the wrong type"),
    ("m.call.invite", {**SENDER, "offer": {"type": "offer", "sdp": 5}}, IDS, "sdp missing"),
    ("m.call.invite", {**SENDER, "offer": {"type": "offer", "sdp": "v=0" + "x" * 60000}}, IDS,
     "sdp too long"),
    ("m.call.invite", {**SENDER, "offer": {"type": "offer", "sdp": "v=0\ud800"}}, IDS,
     "sdp is not valid UTF-8"),
    ("m.call.invite", {**SENDER, "lifetime": "60", "offer": {"type": "offer",
                                                             "sdp": AIORTC_OFFER}}, IDS,
     "lifetime has the wrong type"),
    ("m.call.invite", {**SENDER, "lifetime": -1}, IDS, "lifetime out of range"),
    ("m.call.candidates", {**SENDER, "candidates": []}, IDS, "candidates missing"),
    ("m.call.candidates", {**SENDER, "candidates": [{"candidate": 1}]}, IDS,
     "a candidate is not an object with a candidate string"),
    ("m.call.sdp_stream_metadata_changed", SENDER, IDS, "sdp_stream_metadata missing"),
])
def test_malformed_call_events_are_refused(event_type, content, ids, detail):
    assert sanitise_call(event_type, content, ids, force_relay=False) == Refused("malformed", detail)


def test_only_call_event_types():
    assert sanitise_call("m.call.asserted_identity", SENDER, IDS, force_relay=False) == \
        Refused("unsupported_event", "event type not relayed")


def test_ids_of_takes_only_usable_ids():
    assert ids_of({**SENDER, "selected_party_id": "B"}) == ("1700000000000aliceCall",
                                                           "ALICEDEVICE", "B")
    assert ids_of({"call_id": 5, "party_id": "", "selected_party_id": "x" * 256}) == \
        (None, None, None)
    assert ids_of("nope") == (None, None, None)


# --- group calls (Element Call) ----------------------------------------------------------------

@pytest.mark.parametrize("content, previous, joins", [
    ({"application": "m.call", "call_id": "", "device_id": "DEV", "scope": "m.room"}, None, True),
    ({"application": "m.call", "call_id": "", "device_id": "DEV"}, {}, True),
    ({"application": "m.call", "call_id": "", "device_id": "DEV"},
     {"application": "m.call", "call_id": "", "device_id": "DEV"}, False),  # a refresh
    ({}, {"application": "m.call"}, False),  # the leave
    ({"memberships": [{"call_id": "", "device_id": "DEV"}]}, {"memberships": []}, True),
    ({"memberships": [{"call_id": "", "device_id": "DEV"}]},
     {"memberships": [{"call_id": "", "device_id": "DEV", "expires": 1}]}, False),
    ({"memberships": []}, None, False),
    ("nonsense", None, False),
])
def test_joining_a_group_call_is_told_once(content, previous, joins):
    event = {"type": "org.matrix.msc3401.call.member", "content": content,
             "unsigned": {} if previous is None else {"prev_content": previous}}
    assert joins_group_call(event) is joins


@pytest.mark.parametrize("event_type", ["m.call.notify", "org.matrix.msc4075.rtc.notification"])
def test_group_call_notifications_cross_silently_as_nothing(event_type):
    assert is_call_event(event_type)
    assert sanitise_call(event_type, {"application": "m.call", "notify_type": "ring"}, IDS,
                         force_relay=False) is None
