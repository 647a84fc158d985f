"""The floor for opening a conversation: a bare appservice, registered next to the bridge
on the same homeserver, that pairs users who send it `!start` and opens each side with
only the requests a conversation needs (register the ghost, name it, one createRoom that
invites the user), both sides at once. No database, no replies, no relaying: what is left
is what the homeservers must do, so bench/open.py can tell the bridge's own overhead apart.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path
from urllib.parse import quote

import aiohttp
import yaml
from aiohttp import web

from bridge.portal import DEFAULT_EVENT_POWER

log = logging.getLogger("bridge.lab.floor")

BOT_LOCALPART = "floorbot"
GHOST_PREFIX = "_floor_"


class FloorRelay:
    def __init__(self, port: int) -> None:
        self.port = port
        self.as_token = secrets.token_hex(16)
        self.hs_token = secrets.token_hex(16)
        self.homeserver_url = ""
        self.domain = ""
        self.waiting: str | None = None  # a user who sent !start and has no partner yet
        self.opened = 0
        self.errors: list[str] = []
        self._tasks: set[asyncio.Task] = set()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    @property
    def bot_id(self) -> str:
        return f"@{BOT_LOCALPART}:{self.domain}"

    def write_registration(self, path: Path) -> None:
        path.write_text(yaml.safe_dump({
            "id": "floor", "url": f"http://127.0.0.1:{self.port}",
            "as_token": self.as_token, "hs_token": self.hs_token,
            "sender_localpart": BOT_LOCALPART, "rate_limited": False,
            "namespaces": {"users": [{"exclusive": True, "regex": f"@{GHOST_PREFIX}.*"}],
                           "aliases": [], "rooms": []}}))

    async def start(self, homeserver_url: str, domain: str) -> None:
        self.homeserver_url, self.domain = homeserver_url, domain
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.as_token}"})
        app = web.Application()
        app.router.add_put("/_matrix/app/v1/transactions/{txn}", self._transaction)
        app.router.add_put("/transactions/{txn}", self._transaction)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()

    async def _transaction(self, request: web.Request) -> web.Response:
        body = await request.json()
        for event in body.get("events", []):
            self._spawn(self._handle(event))
        return web.json_response({})

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, event: dict) -> None:
        try:
            if (event.get("type") == "m.room.member" and event.get("state_key") == self.bot_id
                    and event.get("content", {}).get("membership") == "invite"):
                await self._join(event["room_id"])
            elif (event.get("type") == "m.room.message"
                  and event.get("content", {}).get("body") == "!start"):
                user_id = event["sender"]
                if self.waiting is None or self.waiting == user_id:
                    self.waiting = user_id
                    return
                partner, self.waiting = self.waiting, None
                await asyncio.gather(self._open_side(partner), self._open_side(user_id))
                self.opened += 1
        except Exception as e:  # noqa: BLE001 - counted and reported by the bench
            self.errors.append(f"{type(e).__name__}: {e}"[:300])

    async def _join(self, room_id: str, attempts: int = 8) -> None:
        # Right after a federated invite the join can be refused ("not invited"): the
        # invite has not reached every part of the server yet. Retry, as clients do.
        delay = 0.1
        for attempt in range(attempts):
            try:
                await self._request("POST", f"/join/{quote(room_id)}", {})
                return
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(delay)
                delay *= 2

    async def _open_side(self, user_id: str) -> None:
        localpart = f"{GHOST_PREFIX}{secrets.token_hex(8)}"
        ghost = f"@{localpart}:{self.domain}"
        await self._request("POST", "/register", {
            "type": "m.login.application_service", "username": localpart,
            "inhibit_login": True}, as_user=ghost)
        await self._request("PUT", f"/profile/{quote(ghost)}/displayname",
                            {"displayname": "Stranger"}, as_user=ghost)
        await self._request("POST", "/createRoom", {
            "preset": "private_chat", "is_direct": True, "invite": [user_id],
            "initial_state": [
                {"type": "m.room.history_visibility", "state_key": "",
                 "content": {"history_visibility": "invited"}},
                {"type": "m.room.guest_access", "state_key": "",
                 "content": {"guest_access": "forbidden"}}],
            "power_level_override": {"events": {**DEFAULT_EVENT_POWER,
                                                "m.room.encryption": 0}}}, as_user=ghost)

    async def _request(self, method: str, path: str, body: dict,
                       as_user: str | None = None) -> dict:
        assert self._session is not None
        params = {"user_id": as_user} if as_user else None
        async with self._session.request(method, f"{self.homeserver_url}/_matrix/client/v3{path}",
                                         json=body, params=params) as response:
            data = await response.json(content_type=None)
            if response.status != 200:
                raise RuntimeError(f"{method} {path}: HTTP {response.status} {data}")
            return data
