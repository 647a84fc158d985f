"""The appservice endpoint: the homeserver's token, then every event recorded exactly once."""
from __future__ import annotations

import json

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.intake import IntakeAppService
from bridge.state_store import TrimmedStateStore
from bridge.cluster.partitions import partition_of
from bridge.store import inbox, room_partitions

HS_TOKEN = "hs-token-" + "h" * 32
PATH = "/_matrix/app/v1/transactions/{}"
AUTH = {"Authorization": f"Bearer {HS_TOKEN}"}

# mautrix passes aiohttp the deprecated loop argument.
pytestmark = pytest.mark.filterwarnings("ignore:loop argument is deprecated:DeprecationWarning")


def event(event_id: str, room_id: str = "!room:example.org", **extra) -> dict:
    return {"event_id": event_id, "room_id": room_id, "type": "m.room.message",
            "sender": "@alice:example.org", "content": {"msgtype": "m.text", "body": "hi"},
            **extra}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[set[str]] = []
        self.partitions: list[dict[str, int] | None] = []

    async def __call__(self, room_ids: set[str], partitions: dict[str, int] | None) -> None:
        self.calls.append(room_ids)
        self.partitions.append(partitions)


async def make_client(pool, recorder, on_device_events=None, partitions=None) -> TestClient:
    appservice = IntakeAppService(
        server="http://127.0.0.1:1", domain="example.org", as_token="as-token-" + "a" * 32,
        hs_token=HS_TOKEN, bot_localpart="strangerbot", id="strangerbridge",
        state_store=TrimmedStateStore(), pool=pool, on_recorded=recorder)
    appservice.on_device_events = on_device_events
    appservice.partitions = partitions
    client = TestClient(TestServer(appservice.app))
    await client.start_server()
    return client


@pytest.fixture
async def recorder():
    return Recorder()


@pytest.fixture
async def client(pool, recorder):
    client = await make_client(pool, recorder)
    yield client
    await client.close()


async def stored(pool) -> list[str]:
    rows = await pool.fetch("SELECT event_id FROM inbox ORDER BY seq")
    return [r["event_id"] for r in rows]


async def put(client, txn_id: str, body, headers=AUTH, **kwargs):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return await client.put(PATH.format(txn_id), data=data, headers=headers, **kwargs)


async def assert_error(response, status: int, errcode: str) -> None:
    assert response.status == status
    assert (await response.json())["errcode"] == errcode


# -- the token --------------------------------------------------------------------------------

async def test_missing_token_is_unauthorized(client, pool, recorder):
    response = await put(client, "t1", {"events": [event("$1")]}, headers={})
    await assert_error(response, 401, "M_UNAUTHORIZED")
    assert await stored(pool) == [] and recorder.calls == []


@pytest.mark.parametrize("how", ["query", "header"])
async def test_wrong_token_is_forbidden(client, pool, recorder, how):
    if how == "query":
        response = await put(client, "t1", {"events": [event("$1")]}, headers={},
                             params={"access_token": "wrong"})
    else:
        response = await put(client, "t1", {"events": [event("$1")]},
                             headers={"Authorization": "Bearer wrong"})
    await assert_error(response, 403, "M_FORBIDDEN")
    assert await stored(pool) == [] and recorder.calls == []


async def test_wrong_header_beats_right_query_token(client, pool):
    response = await put(client, "t1", {"events": [event("$1")]},
                         headers={"Authorization": "Bearer wrong"},
                         params={"access_token": HS_TOKEN})
    await assert_error(response, 403, "M_FORBIDDEN")
    assert await stored(pool) == []


async def test_the_as_token_is_not_the_hs_token(client, pool):
    response = await put(client, "t1", {"events": [event("$1")]},
                         headers={"Authorization": "Bearer as-token-" + "a" * 32})
    await assert_error(response, 403, "M_FORBIDDEN")


@pytest.mark.parametrize("how", ["query", "header"])
async def test_right_token_is_accepted(client, pool, how):
    if how == "query":
        response = await put(client, "t1", {"events": [event("$1")]}, headers={},
                             params={"access_token": HS_TOKEN})
    else:
        response = await put(client, "t1", {"events": [event("$1")]})
    assert response.status == 200
    assert await stored(pool) == ["$1"]


async def test_other_endpoints_check_the_token(client):
    await assert_error(await client.get("/_matrix/app/v1/users/@x:example.org"),
                       401, "M_UNAUTHORIZED")
    await assert_error(await client.get("/_matrix/app/v1/users/@x:example.org",
                                        headers={"Authorization": "Bearer nope"}),
                       403, "M_FORBIDDEN")
    await assert_error(await client.get("/_matrix/app/v1/rooms/%23a:example.org",
                                        params={"access_token": "nope"}), 403, "M_FORBIDDEN")
    await assert_error(await client.post("/_matrix/app/v1/ping", json={}), 401, "M_UNAUTHORIZED")
    ping = await client.post("/_matrix/app/v1/ping", json={}, headers=AUTH)
    assert ping.status == 200
    # Nobody may conjure a user or alias in our namespace.
    await assert_error(await client.get("/_matrix/app/v1/users/@_stranger_x:example.org",
                                        headers=AUTH), 404, "M_NOT_FOUND")


# -- the body ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body", ["{not json", b"\xff\xfe\x00", ""])
async def test_body_that_is_not_json(client, pool, recorder, body):
    await assert_error(await put(client, "t1", body), 400, "M_NOT_JSON")
    assert recorder.calls == []


@pytest.mark.parametrize("body", [{}, {"events": "nope"}, {"events": {"a": 1}}, [], "null", 42])
async def test_body_without_an_events_list(client, pool, recorder, body):
    await assert_error(await put(client, "t1", json.dumps(body)), 400, "M_BAD_JSON")
    assert await stored(pool) == [] and recorder.calls == []


async def test_valid_transaction_is_recorded(client, pool, recorder):
    events = [event("$1", "!a:example.org"), event("$2", "!b:example.org"),
              event("$3", "!a:example.org")]
    response = await put(client, "t1", {"events": events})
    assert response.status == 200
    assert await response.json() == {}
    assert await stored(pool) == ["$1", "$2", "$3"]
    assert recorder.calls == [{"!a:example.org", "!b:example.org"}]
    assert [e for _, e in await inbox.pending(pool, "!a:example.org")] == [events[0], events[2]]


async def test_several_processes_record_each_event_with_its_rooms_partition(pool, recorder):
    """A chat room placed in its conversation's partition has its events recorded there;
    any other room in the one its ID hashes to. The owner to wake is told which."""
    await room_partitions.put(pool, "!chat:example.org", 5)
    client = await make_client(pool, recorder, partitions=16)
    try:
        response = await put(client, "t1", {"events": [event("$1", "!chat:example.org"),
                                                       event("$2", "!dm:example.org")]})
        assert response.status == 200
    finally:
        await client.close()
    hashed = partition_of("!dm:example.org", 16)
    assert recorder.partitions == [{"!chat:example.org": 5, "!dm:example.org": hashed}]
    rows = await pool.fetch("SELECT event_id, partition FROM inbox ORDER BY seq")
    assert [(r["event_id"], r["partition"]) for r in rows] == [("$1", 5), ("$2", hashed)]
    assert [p.partition for p in await inbox.pending(pool, "!chat:example.org", count=16)] == [5]


async def test_one_process_records_no_partition(client, pool, recorder):
    assert (await put(client, "t1", {"events": [event("$1")]})).status == 200
    assert recorder.partitions == [None]
    assert await pool.fetchval("SELECT partition FROM inbox") is None


async def test_empty_transaction(client, pool, recorder):
    response = await put(client, "t1", {"events": []})
    assert response.status == 200
    assert await stored(pool) == [] and recorder.calls == []


async def test_the_legacy_path_works_too(client, pool):
    response = await client.put("/transactions/t1", json={"events": [event("$1")]},
                                headers=AUTH)
    assert response.status == 200
    assert await stored(pool) == ["$1"]


async def test_retried_transactions_and_events_are_stored_once(client, pool):
    events = [event("$1"), event("$2")]
    for txn_id in ("t1", "t1", "t2"):  # a retry, then the same events under a new txn id
        assert (await put(client, txn_id, {"events": events})).status == 200
    assert (await put(client, "t3", {"events": [event("$2"), event("$3")]})).status == 200
    assert await stored(pool) == ["$1", "$2", "$3"]


async def test_a_handled_event_redelivered_is_not_handled_again(client, pool):
    assert (await put(client, "t1", {"events": [event("$1")]})).status == 200
    ((seq, _),) = await inbox.pending(pool, "!room:example.org")
    await inbox.mark_handled(pool, seq)
    assert (await put(client, "t2", {"events": [event("$1")]})).status == 200
    assert await inbox.pending(pool, "!room:example.org") == []


async def test_malformed_events_are_skipped(client, pool, recorder):
    events = [
        event("$good1"),
        "not an event",
        None,
        {"room_id": "!room:example.org", "type": "m.room.message", "sender": "@a:x"},
        event("$no_room", room_id=""),
        event(12345),
        event("$bad_type", type=["m.room.message"]),
        event("$bad_content", content="text"),
        {k: v for k, v in event("$no_sender").items() if k != "sender"},
        event("$good2", "!other:example.org"),
    ]
    response = await put(client, "t1", {"events": events})
    assert response.status == 200
    assert await stored(pool) == ["$good1", "$good2"]
    assert recorder.calls == [{"!room:example.org", "!other:example.org"}]


async def test_only_malformed_events(client, pool, recorder):
    response = await put(client, "t1", {"events": [{"event_id": "$x"}, []]})
    assert response.status == 200
    assert await stored(pool) == [] and recorder.calls == []


@pytest.mark.parametrize("hostile", [
    event("$nul_body", content={"msgtype": "m.text", "body": "a\u0000b"}),
    event("$nul_key", content={"msgtype": "m.text", "body": "x", "k\u0000": 1}),
    event("$nul\u0000id"),
    event("$lone_surrogate", content={"msgtype": "m.text", "body": "\ud800"}),
])
async def test_events_postgres_cannot_store_do_not_wedge_the_intake(client, pool, hostile):
    """PostgreSQL text holds no NUL and no lone surrogate; such an event must not turn the
    whole transaction into an error the homeserver would retry forever."""
    events = [event("$before"), hostile, event("$after")]
    response = await put(client, "t1", {"events": events})
    assert response.status == 200
    assert await stored(pool) == ["$before", "$after"]


async def test_harmless_text_that_looks_like_an_escape_is_kept(client, pool):
    body = "type \\u0000 to get a NUL, or \\\\u0000"
    response = await put(client, "t1", {"events": [
        event("$1", content={"msgtype": "m.text", "body": body})]})
    assert response.status == 200
    ((_, stored_event),) = await inbox.pending(pool, "!room:example.org")
    assert stored_event["content"]["body"] == body


async def test_on_recorded_may_be_a_plain_function(pool):
    calls: list[set[str]] = []
    client = await make_client(pool, lambda rooms, _partitions: calls.append(rooms))
    try:
        assert (await put(client, "t1", {"events": [event("$1")]})).status == 200
    finally:
        await client.close()
    assert calls == [{"!room:example.org"}]


async def test_database_unavailable_asks_for_a_retry(database_uri, recorder):
    broken = await asyncpg.create_pool(database_uri, min_size=1, max_size=2)
    client = await make_client(broken, recorder)
    try:
        await broken.close()
        response = await put(client, "t1", {"events": [event("$1"), event("$2")]})
        await assert_error(response, 503, "M_UNKNOWN")
        assert recorder.calls == []
    finally:
        await client.close()

    # Nothing was recorded or remembered: the retry of the same transaction is stored.
    pool = await asyncpg.create_pool(database_uri, min_size=1, max_size=2)
    try:
        assert await stored(pool) == []
        client = await make_client(pool, recorder)
        try:
            response = await put(client, "t1", {"events": [event("$1"), event("$2")]})
            assert response.status == 200
        finally:
            await client.close()
        assert await stored(pool) == ["$1", "$2"]
        assert recorder.calls == [{"!room:example.org"}]
    finally:
        await pool.close()



DEVICE_BODY = {"events": [event("$1")],
               "de.sorunome.msc2409.to_device": [{"type": "m.room.encrypted"}]}


async def test_device_events_are_handled_before_the_events_are_recorded(pool, recorder):
    seen: list[tuple[dict, list[str]]] = []

    async def on_device_events(body: dict) -> None:
        seen.append((body, await stored(pool)))

    client = await make_client(pool, recorder, on_device_events)
    try:
        assert (await put(client, "t1", DEVICE_BODY)).status == 200
    finally:
        await client.close()
    assert seen == [(DEVICE_BODY, [])]  # first, with the whole body
    assert await stored(pool) == ["$1"]


async def test_device_events_failing_for_now_ask_for_a_retry_and_record_nothing(pool, recorder):
    async def on_device_events(body: dict) -> None:
        raise ConnectionRefusedError("database away")  # the room key could not be stored

    client = await make_client(pool, recorder, on_device_events)
    try:
        await assert_error(await put(client, "t1", DEVICE_BODY), 503, "M_UNKNOWN")
    finally:
        await client.close()
    assert await stored(pool) == [] and recorder.calls == []


async def test_a_bug_in_device_events_does_not_block_the_room_events(pool, recorder):
    async def on_device_events(body: dict) -> None:
        raise KeyError("a bug")  # retrying would fail the same way, for ever

    client = await make_client(pool, recorder, on_device_events)
    try:
        assert (await put(client, "t1", DEVICE_BODY)).status == 200
    finally:
        await client.close()
    assert await stored(pool) == ["$1"]


async def test_an_appservice_never_started_stops_cleanly(pool, recorder):
    """A start-up that failed before the listener started stops without a second error
    hiding the first (mautrix's stop() reads the runner start() would have made)."""
    appservice = IntakeAppService(
        server="http://127.0.0.1:1", domain="example.org", as_token="as-token-" + "a" * 32,
        hs_token=HS_TOKEN, bot_localpart="strangerbot", id="strangerbridge",
        state_store=TrimmedStateStore(), pool=pool, on_recorded=recorder)
    await appservice.stop()
    assert appservice.runner is None
