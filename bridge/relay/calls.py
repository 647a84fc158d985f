"""1:1 VoIP signalling (m.call.*) across the anonymity boundary, and the ICE filter.

Like sanitise.py, outgoing content is built from scratch: only fields we understand, type
checked. The IDs that name someone are swapped by the caller (bridge/store/calls.py keeps
the per-conversation mapping) and handed in as `CallIds`:
- party_id is the sender's device ID: the partner sees a random stand-in instead;
- selected_party_id (select_answer) names the *receiver's* own party, as the sender saw it:
  it is mapped back to the receiver's real party ID, or their client hangs up ("answered
  elsewhere");
- call_id is client-generated, usually random, but nothing stops a client from putting
  something telling in it: it is mapped too (a random stand-in per call), so no value the
  sender chose crosses;
- invitee (a user ID) is dropped: in a two-person room the call is for the one other member.

With force_relay, every ICE candidate that is not a TURN relay is removed (from the SDP and
from m.call.candidates), and the addresses a relay candidate carries about its origin
(raddr/rport) and the SDP's c=/o=/a=rtcp addresses are blanked, so that only the TURN
server's relay addresses cross. Pure: no I/O.
"""
from __future__ import annotations

import re

from bridge.group_calls import GROUP_CALL_NOTIFY_TYPES
from bridge.refused import Refused
from bridge.store.calls import CallIds

CALL_EVENT_TYPES = frozenset({
    "m.call.invite", "m.call.candidates", "m.call.answer", "m.call.select_answer",
    "m.call.negotiate", "m.call.reject", "m.call.hangup", "m.call.sdp_stream_metadata_changed",
})
# Element Call / MatrixRTC (Element X): group calls through an SFU, nothing 1:1 to relay.

MAX_SDP_BYTES = 60000  # an event is at most 64 KiB
MAX_CANDIDATES = 200
MAX_ID_LENGTH = 255
_VERSIONS = (0, "0", "1")
_REASON = re.compile(r"[a-z_.]{1,64}")  # user_hangup, ice_failed, invite_timeout, ...
_STREAM_ID = re.compile(r"[A-Za-z0-9{}_.\-]{1,128}")
_STREAM_PURPOSES = ("m.usermedia", "m.screenshare")
_UFRAG = re.compile(r"[A-Za-z0-9+/]{1,256}")
_CAPABILITIES = ("m.call.transferee", "m.call.dtmf")


class _Refuse(Exception):
    pass


def is_call_event(event_type: str) -> bool:
    """Routed here rather than to sanitise(): 1:1 signalling, and group call notifications
    (dropped silently: the member state event that comes with them tells the caller)."""
    return event_type in CALL_EVENT_TYPES or event_type in GROUP_CALL_NOTIFY_TYPES


def _in_group_call(content: object) -> bool:
    if not isinstance(content, dict):
        return False
    if "memberships" in content:  # MSC3401's first shape: one event, a list per device
        return isinstance(content["memberships"], list) and bool(content["memberships"])
    return bool(content)  # one event per device; {} is the leave


def joins_group_call(event: dict) -> bool:
    """Whether this group call member state event is someone joining (not a refresh of a
    membership, nor a leave): the moment to tell them, once per call."""
    unsigned = event.get("unsigned")
    previous = unsigned.get("prev_content") if isinstance(unsigned, dict) else None
    return _in_group_call(event.get("content")) and not _in_group_call(previous)


def ids_of(content: object) -> tuple[str | None, str | None, str | None]:
    """The call_id, party_id and selected_party_id the sender used (None: absent or not a
    usable ID), for the caller to map."""
    if not isinstance(content, dict):
        return None, None, None
    return tuple(value if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH else None
                 for value in (content.get(k) for k in ("call_id", "party_id",
                                                        "selected_party_id")))  # type: ignore


# --- ICE candidates and SDP (force_relay) ------------------------------------------------

# candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
_CANDIDATE = re.compile(
    r"candidate:(?P<foundation>[A-Za-z0-9+/]{1,32}) (?P<component>\d{1,3}) "
    r"(?P<transport>[A-Za-z]{1,8}) (?P<priority>\d{1,10}) (?P<address>\S{1,255}) "
    r"(?P<port>\d{1,5}) typ (?P<type>[a-z]{1,16})(?P<rest>( \S{1,255} \S{1,255})*)")
# Extension attributes kept (after raddr/rport): all numbers or ICE tokens, nothing about
# where the candidate came from.
_EXTENSIONS = {"tcptype": re.compile(r"active|passive|so"), "generation": re.compile(r"\d{1,10}"),
               "ufrag": _UFRAG, "network-id": re.compile(r"\d{1,10}"),
               "network-cost": re.compile(r"\d{1,10}")}


def relay_only_candidate(candidate: str) -> str | None:
    """The candidate attribute (with or without "a=") if it is a TURN relay candidate, with
    raddr/rport blanked (0.0.0.0 / 0, as browsers do to hide them); None for anything else
    (host, srflx, prflx, or unreadable: fail closed)."""
    prefix = "a=" if candidate.startswith("a=") else ""
    m = _CANDIDATE.fullmatch(candidate[len(prefix):])
    if m is None or m["type"] != "relay":
        return None
    rest = m["rest"].split()
    out = [f"candidate:{m['foundation']} {m['component']} {m['transport']} {m['priority']} "
           f"{m['address']} {m['port']} typ relay"]
    if "raddr" in rest[::2]:
        out.append("raddr 0.0.0.0 rport 0")
    for key, value in zip(rest[::2], rest[1::2]):
        pattern = _EXTENSIONS.get(key)
        if pattern is not None and pattern.fullmatch(value):
            out.append(f"{key} {value}")
    return prefix + " ".join(out)


_CONNECTION = re.compile(r"c=IN (IP4|IP6) \S+")
_ORIGIN = re.compile(r"o=\S+ (\d{1,20}) (\d{1,20}) IN (IP4|IP6) \S+")
_RTCP = re.compile(r"a=rtcp:(\d{1,5}) IN (IP4|IP6) \S+")
_BLANK = {"IP4": "0.0.0.0", "IP6": "::"}


def relay_only_sdp(sdp: str) -> str:
    """The SDP with only relay candidates, and no address other than theirs."""
    newline = "\r\n" if "\r\n" in sdp else "\n"
    out = []
    for line in sdp.split(newline):
        if line.startswith("a=candidate:"):
            line = relay_only_candidate(line)
        elif line.startswith("a=remote-candidates:"):
            line = None
        elif m := _CONNECTION.fullmatch(line):
            line = f"c=IN {m[1]} {_BLANK[m[1]]}"
        elif line.startswith("o="):
            m = _ORIGIN.fullmatch(line)
            line = f"o=- {m[1]} {m[2]} IN {m[3]} {_BLANK[m[3]]}" if m else "o=- 0 0 IN IP4 0.0.0.0"
        elif m := _RTCP.fullmatch(line):
            line = f"a=rtcp:{m[1]} IN {m[2]} {_BLANK[m[2]]}"
        elif line.startswith(("c=", "a=rtcp:")) and " " in line:
            line = None  # an address in a shape we do not know: drop it rather than pass it
        if line is not None:
            out.append(line)
    return newline.join(out)


# --- content ---------------------------------------------------------------------------

def _opt(content: dict, key: str, kind: type) -> object:
    value = content.get(key)  # JSON null counts as absent
    if value is not None and (not isinstance(value, kind)
                              or kind is int and isinstance(value, bool)):
        raise _Refuse(f"{key} has the wrong type")
    return value


def _lifetime(content: dict, out: dict) -> None:
    lifetime = _opt(content, "lifetime", int)
    if lifetime is not None:
        if not 0 <= lifetime <= 24 * 3600 * 1000:
            raise _Refuse("lifetime out of range")
        out["lifetime"] = lifetime


def _description(value: object, types: tuple[str, ...], force_relay: bool) -> dict:
    if not isinstance(value, dict) or value.get("type") not in types:
        raise _Refuse("session description missing or of the wrong type")
    sdp = value.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise _Refuse("sdp missing")
    try:
        if len(sdp.encode("utf-8")) > MAX_SDP_BYTES:
            raise _Refuse("sdp too long")
    except UnicodeEncodeError:
        raise _Refuse("sdp is not valid UTF-8") from None
    return {"type": value["type"], "sdp": relay_only_sdp(sdp) if force_relay else sdp}


def _stream_metadata(content: dict, out: dict) -> None:
    metadata = _opt(content, "sdp_stream_metadata", dict)
    if metadata is None:
        return
    kept = {}
    for stream_id, info in metadata.items():
        if (isinstance(stream_id, str) and _STREAM_ID.fullmatch(stream_id)
                and isinstance(info, dict) and info.get("purpose") in _STREAM_PURPOSES):
            kept[stream_id] = {"purpose": info["purpose"]}
            for flag in ("audio_muted", "video_muted"):
                if isinstance(info.get(flag), bool):
                    kept[stream_id][flag] = info[flag]
    out["sdp_stream_metadata"] = kept


def _capabilities(content: dict, out: dict) -> None:
    capabilities = _opt(content, "capabilities", dict)
    if capabilities is not None:
        out["capabilities"] = {k: capabilities[k] for k in _CAPABILITIES
                               if isinstance(capabilities.get(k), bool)}


def _candidates(content: dict, force_relay: bool) -> list[dict]:
    candidates = content.get("candidates")
    if not isinstance(candidates, list) or not 0 < len(candidates) <= MAX_CANDIDATES:
        raise _Refuse("candidates missing")
    kept = []
    for item in candidates:
        if not isinstance(item, dict) or not isinstance(item.get("candidate"), str):
            raise _Refuse("a candidate is not an object with a candidate string")
        text = item["candidate"]
        if text != "":  # "" is the end-of-candidates marker: it always passes
            if force_relay:
                text = relay_only_candidate(text)
            elif not _CANDIDATE.fullmatch(text):
                text = None  # not an ICE candidate: whatever it is, it does not cross
            if text is None or len(text) > 1024:
                continue
        one: dict = {"candidate": text}
        if isinstance(item.get("sdpMid"), str) and len(item["sdpMid"]) <= 32:
            one["sdpMid"] = item["sdpMid"]
        index = item.get("sdpMLineIndex")
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < 1000:
            one["sdpMLineIndex"] = index
        if isinstance(item.get("usernameFragment"), str) and _UFRAG.fullmatch(item["usernameFragment"]):
            one["usernameFragment"] = item["usernameFragment"]
        kept.append(one)
    return kept


def sanitise_call(event_type: str, content: object, ids: CallIds, *,
                  force_relay: bool) -> dict | Refused | None:
    """Content for the partner's room; Refused when it cannot be relayed; None when nothing
    of it is left to send (m.call.candidates whose every candidate was filtered out)."""
    if event_type in GROUP_CALL_NOTIFY_TYPES:
        return None
    if event_type not in CALL_EVENT_TYPES:
        return Refused("unsupported_event", "event type not relayed")
    if not isinstance(content, dict):
        return Refused("malformed", "content is not an object")
    try:
        return _build(event_type, content, ids, force_relay)
    except _Refuse as refusal:
        return Refused("malformed", str(refusal.args[0]))


def _build(event_type: str, content: dict, ids: CallIds, force_relay: bool) -> dict | None:
    version = content.get("version")
    if version not in _VERSIONS or isinstance(version, bool):
        raise _Refuse("unknown call version")
    if ids.call_id is None:
        raise _Refuse("call_id missing")
    out: dict = {"call_id": ids.call_id, "version": version}
    if "party_id" in content:
        if ids.party_id is None:
            raise _Refuse("party_id is not an ID")
        out["party_id"] = ids.party_id
    elif version == "1":
        raise _Refuse("party_id missing")
    if event_type == "m.call.invite":
        _lifetime(content, out)
        out["offer"] = _description(content.get("offer"), ("offer",), force_relay)
        _stream_metadata(content, out)
        _capabilities(content, out)
    elif event_type == "m.call.answer":
        out["answer"] = _description(content.get("answer"), ("answer",), force_relay)
        _stream_metadata(content, out)
        _capabilities(content, out)
    elif event_type == "m.call.negotiate":
        _lifetime(content, out)
        out["description"] = _description(content.get("description"), ("offer", "answer"),
                                          force_relay)
        _stream_metadata(content, out)
    elif event_type == "m.call.candidates":
        out["candidates"] = _candidates(content, force_relay)
        if not out["candidates"]:
            return None
    elif event_type == "m.call.select_answer":
        if ids.selected_party_id is None:
            raise _Refuse("selected_party_id names no party of this call")
        out["selected_party_id"] = ids.selected_party_id
    elif event_type in ("m.call.hangup", "m.call.reject"):
        reason = _opt(content, "reason", str)
        if reason is not None and _REASON.fullmatch(reason):
            out["reason"] = reason
    elif event_type == "m.call.sdp_stream_metadata_changed":
        _stream_metadata(content, out)
        if "sdp_stream_metadata" not in out:
            raise _Refuse("sdp_stream_metadata missing")
    return out
