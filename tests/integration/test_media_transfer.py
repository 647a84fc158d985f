"""Downloading attachments over real HTTP: the size cap holds whatever the server claims,
and each kind of failure is either a refusal (told to the sender) or a retry."""
from __future__ import annotations

import logging

import aiohttp
import pytest
from aiohttp import web
from mautrix.appservice import AppServiceAPI, IntentAPI
from mautrix.crypto.attachments import encrypt_attachment
from mautrix.errors import MatrixStandardRequestError

from bridge.media import transfer
from bridge.state_store import TrimmedStateStore

PREFIX = "/_matrix/client/v1/media/download/remote.example"
GHOST = "@_stranger_abc:bridge.example"
TOKEN = "as_token_for_the_test"


@pytest.fixture
async def server():
    seen: list[web.Request] = []

    async def ok(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(body=b"x" * 1000)

    async def streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to trust
        await response.prepare(request)
        for _ in range(100):
            await response.write(b"y" * 1000)
        return response

    async def declared(request: web.Request) -> web.Response:
        return web.Response(body=b"z" * 5000)

    routes = {"ok": ok, "streamed": streamed, "declared": declared,
              "gone": lambda r: web.json_response({"errcode": "M_NOT_FOUND"}, status=404),
              "remote_down": lambda r: web.json_response({}, status=502),
              "busy": lambda r: web.json_response({"errcode": "M_LIMIT_EXCEEDED"}, status=429),
              "broken": lambda r: web.json_response({}, status=500)}
    app = web.Application()

    async def dispatch(request: web.Request):
        handler = routes[request.match_info["media"]]
        result = handler(request)
        return await result if hasattr(result, "__await__") else result

    async def upload(request: web.Request) -> web.Response:
        seen.append(request)
        body = await request.read()
        if len(body) > 100:
            return web.json_response({"errcode": "M_TOO_LARGE"}, status=413)
        return web.json_response({"content_uri": "mxc://bridge.example/new"})

    app.router.add_get(PREFIX + "/{media}", dispatch)
    app.router.add_post("/_matrix/media/v3/upload", upload)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as session:
        bot_api = AppServiceAPI(f"http://127.0.0.1:{port}", "@bot:bridge.example", TOKEN,
                                log=logging.getLogger("test.media"), client_session=session)
        state_store = TrimmedStateStore()  # the bridge's own
        await state_store.registered(GHOST)
        yield IntentAPI(GHOST, bot_api.user(GHOST), state_store=state_store), seen
    await runner.cleanup()


async def test_a_download_is_authenticated_as_the_ghost(server):
    intent, seen = server
    assert await transfer.download(intent, "mxc://remote.example/ok", 1000) == b"x" * 1000
    (request,) = seen
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.query["user_id"] == GHOST


@pytest.mark.parametrize("media, reason", [
    ("ok", "media_too_big"),  # 1000 bytes, cap 999
    ("declared", "media_too_big"),  # refused from Content-Length alone
    ("streamed", "media_too_big"),  # no Content-Length: cut off while streaming
    ("gone", "media_unavailable"), ("remote_down", "media_unavailable"),
])
async def test_refusals(server, media, reason):
    intent, _ = server
    with pytest.raises(transfer.Unavailable) as refused:
        await transfer.download(intent, f"mxc://remote.example/{media}", 999)
    assert refused.value.args == (reason,)


@pytest.mark.parametrize("media, status", [("busy", 429), ("broken", 500)])
async def test_a_busy_homeserver_is_retried_not_refused(server, media, status):
    intent, _ = server
    with pytest.raises(MatrixStandardRequestError) as error:
        await transfer.download(intent, f"mxc://remote.example/{media}", 10_000)
    assert error.value.http_status == status  # transient for the dispatcher


@pytest.mark.parametrize("mxc", [
    "mxc://remote.example/../../admin", "mxc://remote.example/a?b=c", "mxc://remote.example/a/b",
    "mxc://remote example/a", "https://remote.example/a", "mxc:///a", "", None, 5,
])
def test_only_well_formed_mxc_uris_are_fetched(mxc):
    with pytest.raises(transfer.Unavailable):
        transfer.parse_mxc(mxc)


def test_encrypted_files_are_checked_then_decrypted():
    ciphertext, info = encrypt_attachment(b"picture bytes")
    info.url = "mxc://remote.example/enc"
    file = info.serialize()
    mxc, material = transfer.encrypted_source(file)
    assert mxc == "mxc://remote.example/enc"
    assert transfer.decrypt(ciphertext, material) == b"picture bytes"
    with pytest.raises(transfer.Unavailable) as refused:
        transfer.decrypt(ciphertext + b"!", material)  # hash mismatch
    assert refused.value.args == ("media_unreadable",)
    for broken in ({**file, "v": "v1"}, {**file, "key": {**file["key"], "alg": "A128CBC"}},
                   {**file, "iv": None}, {**file, "url": "mxc://x/../y"}, "not a dict"):
        with pytest.raises(transfer.Unavailable):
            transfer.encrypted_source(broken)


async def test_uploads_are_made_as_the_ghost_and_too_large_is_a_refusal(server):
    intent, seen = server
    source, size = await transfer.upload(intent, b"small", "image/png", "image.png", False)
    assert (source, size) == ({"url": "mxc://bridge.example/new"}, 5)
    assert seen[-1].query["user_id"] == GHOST and seen[-1].query["filename"] == "image.png"
    source, size = await transfer.upload(intent, b"small", "image/png", None, True)
    assert source["file"]["url"] == "mxc://bridge.example/new" and size == 5
    assert seen[-1].headers["Content-Type"] == "application/octet-stream"
    assert "filename" not in seen[-1].query
    with pytest.raises(transfer.Unavailable) as refused:
        await transfer.upload(intent, b"x" * 200, "image/png", "image.png", False)
    assert refused.value.args == ("media_too_big",)
