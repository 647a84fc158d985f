"""Hostile input on the appservice API, fuzzed with hypothesis against the whole bridge in
this process (its real aiohttp app, intake, dispatcher, handler, relay; real PostgreSQL;
the fake homeserver standing in for Synapse).

Every transaction carries a mix of generated hostile events (malformed JSON values, wrong
types, missing fields, unknown event types, invalid room and user IDs, bodies near and over
the size limit, deeply nested JSON and formatted bodies, NUL, lone surrogates, non-finite
numbers) and a few valid messages from a user in a live chat. Whatever else is in it: the
answer is 200 (or 400 for a body that is not a JSON transaction at all, 413 over the size
limit), nothing is logged at ERROR or above, the bridge keeps running, and the valid
messages are recorded, handled and relayed to the partner, in order.
"""
from __future__ import annotations

import json
import logging
import uuid

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import intake
from bridge.lab.bridge_process import NO_RATE_LIMITS
from bridge.lab.inprocess import existing_keys, start_inprocess_bridge

pytestmark = pytest.mark.filterwarnings("ignore:loop argument is deprecated:DeprecationWarning")

SIZE_LIMIT = 256 * 1024  # the transaction size limit, lowered so "near and over" is cheap
MAX_BODY = 4096  # bridge.max_body_bytes for these tests


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[str]:
        found = [f"{r.name}: {r.getMessage()}" + (f"\n{logging.Formatter().formatException(r.exc_info)}"
                                                  if r.exc_info else "") for r in self.records]
        self.records.clear()
        return found


class Chat:
    """A live conversation between alice and bob, and a way to talk to the bridge raw."""

    def __init__(self, world, alice, bob) -> None:
        self.world, self.alice, self.bob = world, alice, bob
        self.url = world.hs.bridge_url
        self.token = world.config["appservice.hs_token"]
        self.session: aiohttp.ClientSession | None = None

    async def put(self, body: bytes, token: str | None = "right") -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.token if token == 'right' else token}"
        async with self.session.put(
                f"{self.url}/_matrix/app/v1/transactions/{uuid.uuid4().hex}", data=body,
                headers=headers) as response:
            return response.status, await response.json(content_type=None)

    def valid(self, body: str) -> dict:
        return {"event_id": f"$valid-{uuid.uuid4().hex}", "room_id": self.alice.room,
                "sender": self.alice.user_id, "type": "m.room.message",
                "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": body}}

    async def relayed(self, bodies: list[str], mark: int) -> list[str]:
        """Wait until bob's room got every body, then return what it got, in order."""
        hs, room = self.world.hs, self.bob.room
        for body in bodies:
            await hs.wait_for(lambda e: e["room_id"] == room and e["content"].get("body") == body,
                              15, mark, f"relay of {body!r}")
        return [e["content"].get("body") for e in hs.sent[mark:]
                if e["room_id"] == room and e["content"].get("body") in bodies]


@pytest.fixture
async def chat(tmp_path, database_uri, monkeypatch):
    monkeypatch.setattr(intake, "MAX_TRANSACTION_BYTES", SIZE_LIMIT)
    world = await start_inprocess_bridge(
        tmp_path, database_uri, **existing_keys({"bridge.max_body_bytes": MAX_BODY,
                                                 "logging.level": "WARNING",
                                                 **NO_RATE_LIMITS}))
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    try:
        alice, bob = await world.pair("alice", "bob")
        chat = Chat(world, alice, bob)
        chat.errors = errors
        async with aiohttp.ClientSession() as chat.session:
            yield chat
        assert errors.take() == []
        await world.quiesce()
        assert await world.bridge.pool.fetchval(
            "SELECT count(*) FROM inbox WHERE handled_at IS NULL") == 0
        assert await world.bridge.pool.fetchval(
            "SELECT state FROM conversations ORDER BY id DESC LIMIT 1") == "active"
    finally:
        logging.getLogger().removeHandler(errors)
        await world.stop()


# -- strategies -------------------------------------------------------------------------------

def nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40))
json_values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)),
    max_leaves=20)
weird_strings = st.one_of(
    st.text(max_size=60), st.just(""), st.just(" "), st.just("\u0000"), st.just("\ud800"),
    st.just("!"), st.just("@"), st.just("!nocolon"), st.just("@:"), st.just("$"),
    st.text(min_size=300, max_size=2000), st.just("@alice:fake.test"),
    st.just("@_stranger_abc:fake.test"), st.just("@strangerbot:fake.test"),
    st.just("!room:fake.test\n"), st.just("m.room.member"))
event_types = st.one_of(st.sampled_from([
    "m.room.message", "m.room.member", "m.reaction", "m.room.redaction", "m.sticker",
    "m.room.encrypted", "m.room.name", "m.typing", "m.receipt", "m.call.invite",
    "org.example.unknown", "m.room.power_levels", "m.room.create"]), weird_strings)
html_bodies = st.one_of(
    st.integers(min_value=1, max_value=20000).map(lambda n: "<b>" * n + "x" + "</b>" * n),
    st.integers(min_value=1, max_value=5000).map(lambda n: "<blockquote>" * n),
    st.text(max_size=200),
    st.just('<a href="https://matrix.to/#/@alice:fake.test">x</a><img src="mxc://a/b">'))
message_contents = st.fixed_dictionaries({}, optional={
    "msgtype": st.one_of(st.sampled_from(["m.text", "m.notice", "m.emote", "m.image",
                                          "m.file", "m.location"]), json_values),
    "body": st.one_of(st.text(max_size=200).filter(lambda b: not b.startswith("!")),
                      st.integers(min_value=MAX_BODY - 2, max_value=MAX_BODY + 2).map(
                          lambda n: "é" * (n // 2) + "x" * (n % 2)), json_values),
    "format": st.one_of(st.just("org.matrix.custom.html"), json_values),
    "formatted_body": st.one_of(html_bodies, json_values),
    "m.relates_to": st.one_of(json_values, st.fixed_dictionaries({
        "rel_type": st.one_of(st.sampled_from(["m.replace", "m.annotation", "m.thread"]),
                              json_values),
        "event_id": st.one_of(weird_strings, json_values),
        "m.in_reply_to": st.one_of(json_values, st.fixed_dictionaries(
            {"event_id": st.one_of(weird_strings, json_values)}))})),
    "m.new_content": json_values,
    "m.mentions": json_values,
    "url": st.one_of(st.just("mxc://fake.test/abc"), json_values),
    "deep": st.integers(min_value=1, max_value=300).map(nested),
})


def templates(chat: Chat) -> list[dict]:
    """Valid events of each kind the bridge acts on; mutated one field at a time below."""
    def event(**fields) -> dict:
        return {"event_id": f"$h-{uuid.uuid4().hex}", "origin_server_ts": 1, **fields}
    return [
        event(room_id=chat.alice.room, sender=chat.alice.user_id, type="m.room.message",
              content={"msgtype": "m.text", "body": "a message"}),
        event(room_id=chat.alice.dm, sender=chat.alice.user_id, type="m.room.message",
              content={"msgtype": "m.text", "body": "!help"}),
        event(room_id=f"!{uuid.uuid4().hex}:elsewhere.test", sender="@someone:elsewhere.test",
              type="m.room.member", state_key=chat.world.bot_id,
              content={"membership": "invite", "is_direct": True}),
        event(room_id=chat.alice.room, sender="@intruder:elsewhere.test", type="m.room.member",
              state_key="@intruder:elsewhere.test", content={"membership": "join"}),
        event(room_id=chat.alice.room, sender=chat.alice.user_id, type="m.reaction",
              content={"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x",
                                        "key": "+1"}}),
    ]


@st.composite
def mutated_event(draw, chat: Chat) -> dict:
    """A valid event with one field (or one content field) missing or of a wrong type."""
    event = draw(st.sampled_from(templates(chat)))
    where = event if draw(st.booleans()) else event["content"]
    key = draw(st.sampled_from(sorted(where)))
    if key == "event_id":
        where[key] = draw(json_values.filter(lambda v: not isinstance(v, str)))
    elif draw(st.booleans()):
        del where[key]
    else:
        where[key] = draw(json_values)
    return event


@st.composite
def hostile_event(draw, chat: Chat) -> object:
    kind = draw(st.sampled_from(["scalar", "fields", "mutated", "mutated", "in_chat",
                                 "member"]))
    if kind == "scalar":
        return draw(json_values)
    if kind == "mutated":
        return draw(mutated_event(chat))
    if kind == "member":  # memberships of strangers in rooms of ours or nobody's
        return {"event_id": f"$h-{uuid.uuid4().hex}", "type": "m.room.member",
                "room_id": draw(st.sampled_from([chat.alice.room, chat.alice.dm, "!x:y", "!"])),
                "sender": draw(weird_strings), "state_key": draw(st.one_of(
                    weird_strings, json_values).filter(
                        lambda k: k not in (chat.alice.user_id, chat.bob.user_id))),
                "content": {"membership": draw(st.one_of(st.sampled_from(
                    ["invite", "join", "leave", "ban", "knock"]), json_values))}}
    if kind == "in_chat":  # alice, in her live chat, sending anything but a valid leave
        event = {"event_id": f"$h-{uuid.uuid4().hex}", "room_id": chat.alice.room,
                 "sender": chat.alice.user_id, "type": draw(event_types.filter(
                     lambda t: t != "m.room.member")), "content": draw(message_contents)}
        if draw(st.booleans()):
            event["state_key"] = draw(st.one_of(weird_strings, json_values))
        return event
    event: dict = {}
    for key, values in (("event_id", st.one_of(weird_strings.map(lambda s: f"${s}"),
                                               json_values)),
                        ("room_id", st.one_of(weird_strings, json_values)),
                        ("sender", st.one_of(weird_strings, json_values)),
                        ("type", st.one_of(event_types, json_values)),
                        ("content", st.one_of(message_contents, json_values)),
                        ("state_key", st.one_of(weird_strings, json_values)),
                        ("unsigned", json_values),
                        ("origin_server_ts", json_values)):
        if draw(st.integers(0, 5)):  # usually present, sometimes missing
            event[key] = draw(values)
    if isinstance(event.get("event_id"), str):
        event["event_id"] += uuid.uuid4().hex  # fresh: dedup must not hide what it does
    return event


def encode(body: object, how: str) -> bytes:
    if how == "ascii":
        return json.dumps(body).encode()
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


# -- the fuzz test ----------------------------------------------------------------------------

@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
async def test_fuzzed_transactions(chat: Chat, data):
    valid_bodies = [f"valid {uuid.uuid4().hex[:8]} {i}" for i in range(data.draw(st.integers(0, 2)))]
    events = data.draw(st.lists(hostile_event(chat), max_size=6))
    position = 0
    for body in valid_bodies:  # anywhere in the transaction, in their own order
        position = data.draw(st.integers(position, len(events)))
        events.insert(position, chat.valid(body))
        position += 1
    how = data.draw(st.sampled_from(["ascii", "utf8"]))
    mark = chat.world.hs.mark()
    status, answer = await chat.put(encode({"events": events}, how))
    assert status == 200, answer
    relayed = await chat.relayed(valid_bodies, mark)
    assert relayed == valid_bodies, "each valid message relayed once, in order"
    await chat.world.quiesce()
    assert chat.errors.take() == []


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
async def test_fuzzed_bodies_that_are_not_transactions(chat: Chat, data):
    """Not JSON, invalid UTF-8, JSON too deeply nested to parse, JSON that is not an object
    with an events list: 400, nothing recorded, nothing logged at ERROR."""
    valid = chat.valid("never to be seen")
    good = json.dumps({"events": [valid]}).encode()
    body = data.draw(st.one_of(
        st.binary(max_size=200),
        st.integers(1, len(good) - 1).map(lambda n: good[:n]),  # truncated
        st.integers(0, len(good) - 1).map(lambda i: good[:i] + b"\xff\xfe" + good[i:]),
        st.integers(1100, 50000).map(lambda n: b'{"events": [' + b"[" * n + b"]" * n + b"]}"),
        json_values.filter(lambda v: not (isinstance(v, dict) and isinstance(v.get("events"), list))
                           ).map(lambda v: json.dumps(v).encode()),
        st.just(b'{"events": {"0": {}}}'), st.just(b"")))
    await chat.world.quiesce()
    count = await chat.world.bridge.pool.fetchval("SELECT count(*) FROM inbox")
    status, answer = await chat.put(body)
    if status == 200:  # valid UTF-8 and JSON after all, e.g. a truncation that still parses
        assert json.loads(body)["events"] is not None
        return
    assert status == 400 and answer["errcode"] in ("M_NOT_JSON", "M_BAD_JSON"), (status, answer)
    assert await chat.world.bridge.pool.fetchval("SELECT count(*) FROM inbox") == count
    assert chat.errors.take() == []


# -- explicit edges -----------------------------------------------------------------------------

async def test_size_limit(chat: Chat):
    """A transaction just under the limit is taken whole; one byte over is refused with 413
    (and the homeserver, which never sends more than it allows, is not wedged by it)."""
    filler_event = chat.valid("filler")
    envelope = {"events": [filler_event, chat.valid("under the limit")]}
    filler_event["content"]["padding"] = ""
    room = SIZE_LIMIT - len(json.dumps(envelope).encode())
    filler_event["content"]["padding"] = "x" * room
    body = json.dumps(envelope).encode()
    assert len(body) == SIZE_LIMIT
    mark = chat.world.hs.mark()
    status, _ = await chat.put(body)
    assert status == 200
    assert await chat.relayed(["filler", "under the limit"], mark) == ["filler", "under the limit"]

    filler_event["event_id"] += "x"  # new events, one byte more
    envelope["events"][1]["event_id"] = f"$valid-{uuid.uuid4().hex}"
    body = json.dumps(envelope).encode()
    assert len(body) == SIZE_LIMIT + 1
    status, answer = await chat.put(body)
    assert (status, answer["errcode"]) == (413, "M_TOO_LARGE")
    assert chat.errors.take() == []
    # The real limit fits a full transaction of the largest events a homeserver allows.
    assert intake.MAX_TRANSACTION_BYTES == SIZE_LIMIT


def test_the_real_size_limit_fits_full_transactions():
    import importlib
    fresh = importlib.reload(intake)
    assert fresh.MAX_TRANSACTION_BYTES >= 100 * 65536


async def test_unstorable_values_are_skipped_not_retried_forever(chat: Chat):
    """PostgreSQL's jsonb has no NaN or Infinity (1e999 parses as inf), no NUL and no lone
    surrogates: such an event is skipped, not a 503 the homeserver would retry for ever."""
    bodies = ["before the poison", "after the poison"]
    poisons = ["1e999", "-1e999", "NaN", "Infinity", '"a\\u0000b"', '"\\ud800"',
               '{"k\\u0000": 1}', '{"a":' * 800 + "1" + "}" * 800]
    events = [json.dumps(chat.valid(bodies[0]))]
    for poison in poisons:
        events.append(json.dumps(chat.valid("poison")).replace('"poison"', poison))
    events.append(json.dumps(chat.valid(bodies[1])))
    raw = ('{"events": [' + ", ".join(events) + "]}").encode()
    mark = chat.world.hs.mark()
    status, _ = await chat.put(raw)
    assert status == 200
    assert await chat.relayed(bodies, mark) == bodies
    assert chat.errors.take() == []


async def test_tokens_are_still_checked_whatever_the_body(chat: Chat):
    for token, expected in ((None, 401), ("wrong", 403)):
        status, answer = await chat.put(b"\xff not json", token=token)
        assert status == expected
