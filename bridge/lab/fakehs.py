"""A fake homeserver, in-process, for tests and benchmarks that need the whole bridge but not
a real Synapse: fuzzing the appservice API, memory over thousands of conversations, and
delivery faults that real homeservers only show by chance.

It implements just the client-server endpoints the bridge calls (as the appservice, with
``user_id`` masquerading), answers like Synapse (including send deduplication by
transaction ID), keeps each room's timeline and members, and pushes every event to the
bridge in sequential appservice transactions, retrying until it gets a 200, as Synapse does.
Simulated users act through ``emit``. A room is forgotten once everyone has left it, so the
fake itself stays small over long runs.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
from aiohttp import web

log = logging.getLogger("bridge.lab.fakehs")

Predicate = Callable[[dict], bool]
USER = web.RequestKey("user", str)  # who the appservice acts as in this request


@dataclass
class FakeRoom:
    room_id: str
    creator: str
    members: dict[str, str] = field(default_factory=dict)  # user ID -> membership
    timeline: list[dict] = field(default_factory=list)
    state: dict[tuple[str, str], dict] = field(default_factory=dict)


def _served(event: dict) -> dict:
    """The event as the homeserver serves it: with its age now."""
    return {**event, "unsigned": {"age": int(time.time() * 1000) - event["origin_server_ts"]}}


def _error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


class FakeHomeserver:
    def __init__(self, server_name: str, as_token: str, hs_token: str, bot_localpart: str,
                 *, echo: bool = True, keep_sent: bool = True, timeline_limit: int = 500) -> None:
        self.server_name = server_name
        self.as_token = as_token
        self.hs_token = hs_token
        self.bot_id = f"@{bot_localpart}:{server_name}"
        # echo: deliver the bridge's own events back to it, as a homeserver does.
        self.echo = echo
        self.keep_sent = keep_sent
        self.timeline_limit = timeline_limit
        self.bridge_url: str | None = None
        self.rooms: dict[str, FakeRoom] = {}
        self.registered: set[str] = set()  # users that exist (registering again: M_USER_IN_USE)
        self.sent: list[dict] = []  # events the bridge created (sends, state, memberships)
        self.unknown: list[str] = []  # endpoints the fake does not implement
        self.requests = 0
        # fail(method, path, user) -> a response to answer instead (fault injection)
        self.fault: Callable[[str, str, str], web.Response | None] | None = None
        # strand(event) -> True: the event is persisted but never pushed to the bridge, as
        # when Synapse's appservice recoverer race strands a transaction.
        self.strand: Callable[[dict], bool] | None = None
        self.stranded: list[dict] = []
        self.account_data: dict[tuple[str, str], dict] = {}  # (user, type) -> content
        self._ephemeral_pushes: set[asyncio.Task] = set()
        self.txn_cache: OrderedDict[tuple[str, str], str] = OrderedDict()  # bounded
        self._ids = itertools.count(1)
        self._txn_ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._outbox: list[dict] = []
        self._outbox_ready = asyncio.Event()
        self._delivering = False
        self.delivered_transactions = 0
        self.refused_transactions = 0
        self.retry_delay = 0.05
        self.app = self._make_app()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._delivery: asyncio.Task | None = None
        self.url: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession()
        self._delivery = asyncio.create_task(self._deliver_forever(), name="fake hs delivery")

    async def stop(self) -> None:
        if self._delivery:
            self._delivery.cancel()
            try:
                await self._delivery
            except (asyncio.CancelledError, Exception):
                pass
        if self._session:
            await self._session.close()
        if self._runner:
            await self._runner.cleanup()

    # -- what simulated users do ---------------------------------------------------------------

    def new_id(self, sigil: str) -> str:
        return f"{sigil}fake{next(self._ids)}"

    def create_room(self, creator: str, *, direct_with: str | None = None) -> str:
        room_id = f"{self.new_id('!')}:{self.server_name}"
        room = FakeRoom(room_id, creator)
        self.rooms[room_id] = room
        self.registered.add(creator)
        self._persist(room, creator, "m.room.create", {"creator": creator, "room_version": "10"},
                      state_key="")
        self._persist(room, creator, "m.room.member", {"membership": "join"}, state_key=creator)
        self._persist(room, creator, "m.room.power_levels",
                      {"users": {creator: 100, **({direct_with: 100} if direct_with else {})},
                       "users_default": 0, "events_default": 0, "state_default": 50,
                       "invite": 0, "kick": 50, "ban": 50, "redact": 50}, state_key="")
        if direct_with:
            self._persist(room, creator, "m.room.member",
                          {"membership": "invite", "is_direct": True}, state_key=direct_with)
        return room_id

    def emit(self, room_id: str, sender: str, event_type: str, content: Any,
             state_key: str | None = None) -> dict:
        """A simulated user's event: persisted, then delivered to the bridge."""
        return self._persist(self.rooms[room_id], sender, event_type, content, state_key)

    def say(self, room_id: str, sender: str, body: str) -> dict:
        return self.emit(room_id, sender, "m.room.message", {"msgtype": "m.text", "body": body})

    def member(self, room_id: str, user_id: str, membership: str) -> dict:
        return self.emit(room_id, user_id, "m.room.member", {"membership": membership},
                         state_key=user_id)

    # -- waiting for the bridge ----------------------------------------------------------------

    async def wait_for(self, predicate: Predicate, timeout: float = 30,
                       since: int = 0, description: str = "event") -> dict:
        """The first event the bridge created (index >= since) that matches."""
        pos = since

        async def scan() -> dict:
            nonlocal pos
            async with self._changed:
                while True:
                    while pos < len(self.sent):
                        event = self.sent[pos]
                        pos += 1
                        if predicate(event):
                            return event
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"fake homeserver: no {description} from the bridge within "
                               f"{timeout}s") from None

    def mark(self) -> int:
        return len(self.sent)

    def forget_sent(self) -> None:
        """Drop the record of what the bridge sent (long runs); marks restart at 0."""
        self.sent.clear()

    async def settled(self, timeout: float = 30) -> None:
        """Everything emitted so far has been delivered to (and accepted by) the bridge."""
        async def idle() -> None:
            async with self._changed:
                while self._outbox or self._delivering:
                    await self._changed.wait()
        await asyncio.wait_for(idle(), timeout)

    # -- delivery to the bridge ------------------------------------------------------------------

    def _persist(self, room: FakeRoom, sender: str, event_type: str, content: Any,
                 state_key: str | None = None, *, by_bridge: bool = False) -> dict:
        event: dict[str, Any] = {
            "event_id": f"{self.new_id('$')}", "room_id": room.room_id, "sender": sender,
            "type": event_type, "content": content,
            "origin_server_ts": int(time.time() * 1000)}
        if state_key is not None:
            event["state_key"] = state_key
            room.state[(event_type, state_key)] = event
            if event_type == "m.room.member" and isinstance(content, dict):
                room.members[state_key] = content.get("membership", "leave")
        room.timeline.append(event)
        if len(room.timeline) > self.timeline_limit:  # long-lived rooms (DMs): recent history
            del room.timeline[:len(room.timeline) - self.timeline_limit]
        if by_bridge and self.keep_sent:
            self.sent.append(event)
        if self.strand is not None and self.strand(event):
            self.stranded.append(event)  # persisted, never delivered (Synapse's race)
        elif self.echo or not by_bridge:
            self._outbox.append(event)
            self._outbox_ready.set()
        if state_key is not None and room.members and all(
                m in ("leave", "ban") for m in room.members.values()):
            del self.rooms[room.room_id]  # everyone left: nothing more can happen here
        return event

    async def _deliver_forever(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                batch, self._outbox = self._outbox[:100], self._outbox[100:]
                self._delivering = True
                txn_id = str(next(self._txn_ids))
                while not await self._push(txn_id, [_served(e) for e in batch]):
                    self.refused_transactions += 1
                    await asyncio.sleep(self.retry_delay)  # the homeserver's backoff
                self.delivered_transactions += 1
                self._delivering = False
                async with self._changed:
                    self._changed.notify_all()

    async def _push(self, txn_id: str, events: list[dict],
                    ephemeral: list[dict] | None = None) -> bool:
        if self.bridge_url is None:
            return False
        body: dict[str, Any] = {"events": events}
        if ephemeral:
            body["ephemeral"] = ephemeral
        try:
            async with self._session.put(
                    f"{self.bridge_url}/_matrix/app/v1/transactions/{txn_id}",
                    data=json.dumps(body),
                    headers={"Authorization": f"Bearer {self.hs_token}",
                             "Content-Type": "application/json"}) as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    # -- the client-server API the bridge uses --------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        c = "/_matrix/client/v3"
        r = app.router
        r.add_get("/_matrix/client/versions", self._versions)
        r.add_post(c + "/register", self._register)
        r.add_put(c + "/profile/{user}/displayname", self._ok)
        r.add_get(c + "/profile/{user}/displayname", self._no_profile)
        r.add_get(c + "/profile/{user}", self._ok_get)
        r.add_put(c + "/profile/{user}/avatar_url", self._ok)
        r.add_post(c + "/createRoom", self._create_room)
        r.add_post(c + "/join/{room}", self._join)
        r.add_post(c + "/rooms/{room}/join", self._join)
        r.add_post(c + "/rooms/{room}/invite", self._invite)
        r.add_post(c + "/rooms/{room}/leave", self._leave)
        r.add_post(c + "/rooms/{room}/kick", self._kick)
        r.add_put(c + "/rooms/{room}/send/{type}/{txn}", self._send)
        r.add_put(c + "/rooms/{room}/state/{type}/{state_key:.*}", self._put_state)
        r.add_get(c + "/rooms/{room}/state/{type}/{state_key:.*}", self._get_state)
        r.add_get(c + "/rooms/{room}/context/{event}", self._context)
        r.add_get(c + "/rooms/{room}/messages", self._messages)
        r.add_get(c + "/joined_rooms", self._joined_rooms)
        r.add_get(c + "/user/{user}/account_data/{type}", self._get_account_data)
        r.add_put(c + "/user/{user}/account_data/{type}", self._put_account_data)
        r.add_put(c + "/rooms/{room}/typing/{user}", self._typing)
        r.add_post(c + "/rooms/{room}/receipt/{type}/{event}", self._ok)
        r.add_post("/_matrix/client/v1/appservice/{id}/ping", self._ping)
        r.add_route("*", "/{tail:.*}", self._unknown)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        self.requests += 1
        if request.headers.get("Authorization") != f"Bearer {self.as_token}":
            return _error(401, "M_UNKNOWN_TOKEN", "not the appservice token")
        user = request.query.get("user_id", self.bot_id)
        request[USER] = user
        if self.fault is not None:
            answer = self.fault(request.method, request.path, user)
            if answer is not None:
                return answer
        return await handler(request)

    def _room(self, request: web.Request) -> FakeRoom | None:
        return self.rooms.get(request.match_info["room"])

    async def _body(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _versions(self, request: web.Request) -> web.Response:
        return web.json_response({"versions": ["v1.11"]})

    async def _ok(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _ok_get(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _no_profile(self, request: web.Request) -> web.Response:
        return _error(404, "M_NOT_FOUND", "no display name")

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({"duration_ms": 0})

    async def _unknown(self, request: web.Request) -> web.Response:
        self.unknown.append(f"{request.method} {request.path}")
        return _error(404, "M_UNRECOGNIZED", "not implemented by the fake homeserver")

    async def _register(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        user_id = f"@{body.get('username')}:{self.server_name}"
        if user_id in self.registered:
            return _error(400, "M_USER_IN_USE", "User ID already taken.")
        self.registered.add(user_id)
        return web.json_response({"user_id": user_id})

    async def _create_room(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        user = request[USER]
        room_id = self.create_room(user)
        room = self.rooms[room_id]
        for state in body.get("initial_state") or []:
            self._persist(room, user, state["type"], state.get("content", {}),
                          state_key=state.get("state_key", ""), by_bridge=True)
        for invitee in body.get("invite") or []:
            self._persist(room, user, "m.room.member", {
                "membership": "invite", **({"is_direct": True} if body.get("is_direct") else {})},
                state_key=invitee, by_bridge=True)
        await self._notify()
        return web.json_response({"room_id": room_id})

    async def _membership(self, request: web.Request, target: str, membership: str,
                          allowed: tuple[str, ...], extra: dict | None = None) -> web.Response:
        room = self._room(request)
        if room is None:
            return _error(404, "M_NOT_FOUND", "no such room")
        if room.members.get(target) in allowed:
            self._persist(room, request[USER], "m.room.member",
                          {"membership": membership, **(extra or {})}, state_key=target,
                          by_bridge=True)
            await self._notify()
        elif membership == "join" and room.members.get(target) != "join":
            return _error(403, "M_FORBIDDEN", "You are not invited to this room.")
        elif membership == "leave" and request[USER] == target:
            return _error(403, "M_FORBIDDEN", f"User {target} not in room {room.room_id}")
        elif membership == "leave":  # a kick (Synapse's words)
            return _error(403, "M_FORBIDDEN", "The target user is not in the room")
        elif membership == "invite":
            return _error(403, "M_FORBIDDEN", f"{target} is already in the room.")
        return web.json_response({"room_id": room.room_id} if membership == "join" else {})

    async def _join(self, request: web.Request) -> web.Response:
        room = self._room(request)
        if room is not None and room.members.get(request[USER]) == "join":
            return web.json_response({"room_id": room.room_id})  # already in: fine
        return await self._membership(request, request[USER], "join", ("invite",))

    async def _invite(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        return await self._membership(request, str(body.get("user_id")), "invite",
                                      (None, "leave"))

    async def _leave(self, request: web.Request) -> web.Response:
        return await self._membership(request, request[USER], "leave", ("join", "invite"))

    async def _kick(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        return await self._membership(request, str(body.get("user_id")), "leave",
                                      ("join", "invite"))

    async def _send(self, request: web.Request) -> web.Response:
        key = (request[USER], request.path)
        if key in self.txn_cache:  # Synapse's transaction-ID dedup
            return web.json_response({"event_id": self.txn_cache[key]})
        room = self._room(request)
        if room is None or room.members.get(request[USER]) != "join":
            return _error(403, "M_FORBIDDEN", "not in the room")
        event = self._persist(room, request[USER], request.match_info["type"],
                              await self._body(request), by_bridge=True)
        self.txn_cache[key] = event["event_id"]
        if len(self.txn_cache) > 20000:
            self.txn_cache.popitem(last=False)
        await self._notify()
        return web.json_response({"event_id": event["event_id"]})

    async def _put_state(self, request: web.Request) -> web.Response:
        room = self._room(request)
        if room is None:
            return _error(404, "M_NOT_FOUND", "no such room")
        body = await self._body(request)
        event_type, state_key = request.match_info["type"], request.match_info["state_key"]
        if event_type == "m.room.member":
            membership = body.get("membership")
            allowed = {"invite": (None, "leave"), "join": ("invite", "join"),
                       "leave": ("join", "invite")}.get(membership, ())
            if room.members.get(state_key) not in allowed:
                return _error(403, "M_FORBIDDEN", f"cannot {membership}")
        event = self._persist(room, request[USER], event_type, body, state_key=state_key,
                              by_bridge=True)
        await self._notify()
        return web.json_response({"event_id": event["event_id"]})

    async def _get_state(self, request: web.Request) -> web.Response:
        room = self._room(request)
        key = (request.match_info["type"], request.match_info["state_key"])
        if room is None or key not in room.state:
            return _error(404, "M_NOT_FOUND", "no such state")
        event = room.state[key]
        return web.json_response(event if request.query.get("format") == "event"
                                 else event["content"])

    def _filtered(self, request: web.Request, events: list[dict]) -> list[dict]:
        try:
            senders = json.loads(request.query.get("filter", "{}")).get("senders")
        except (ValueError, AttributeError):
            senders = None
        return [e for e in events if senders is None or e["sender"] in senders]

    async def _context(self, request: web.Request) -> web.Response:
        room = self._room(request)
        if room is None or room.members.get(request[USER]) != "join":
            return _error(403, "M_FORBIDDEN", "not in the room")
        ids = [e["event_id"] for e in room.timeline]
        event_id = request.match_info["event"]
        if event_id not in ids:
            return _error(404, "M_NOT_FOUND", "no such event")
        at = ids.index(event_id)
        half = int(request.query.get("limit", "10")) // 2
        before = self._filtered(request, room.timeline[:at])[-half:][::-1] if half else []
        after = self._filtered(request, room.timeline[at + 1:])[:half]
        return web.json_response({"event": _served(room.timeline[at]),
                                  "events_before": [_served(e) for e in before],
                                  "events_after": [_served(e) for e in after], "state": []})

    async def _messages(self, request: web.Request) -> web.Response:
        room = self._room(request)
        if room is None or room.members.get(request[USER]) != "join":
            return _error(403, "M_FORBIDDEN", "not in the room")
        limit = int(request.query.get("limit", "10"))
        events = self._filtered(request, room.timeline)
        chunk = events[::-1][:limit] if request.query.get("dir") == "b" else events[:limit]
        return web.json_response({"chunk": [_served(e) for e in chunk], "start": "s",
                                  "end": "e"})

    async def _get_account_data(self, request: web.Request) -> web.Response:
        stored = self.account_data.get((request[USER], request.match_info["type"]))
        if stored is None:
            return _error(404, "M_NOT_FOUND", "no account data of that type")
        return web.json_response(stored)

    async def _put_account_data(self, request: web.Request) -> web.Response:
        self.account_data[(request[USER], request.match_info["type"])] = await self._body(request)
        return web.json_response({})

    async def _typing(self, request: web.Request) -> web.Response:
        """Typing is echoed to the appservice as an ephemeral event, as Synapse does for
        rooms an appservice's users are in (sent once: not retried)."""
        typing = (await self._body(request)).get("typing") is True
        event = {"type": "m.typing", "room_id": request.match_info["room"],
                 "content": {"user_ids": [request[USER]] if typing else []}}
        task = asyncio.get_running_loop().create_task(
            self._push(f"e{next(self._txn_ids)}", [], [event]))
        self._ephemeral_pushes.add(task)
        task.add_done_callback(self._ephemeral_pushes.discard)
        return web.json_response({})

    async def _joined_rooms(self, request: web.Request) -> web.Response:
        user = request[USER]
        return web.json_response({"joined_rooms": [
            r.room_id for r in self.rooms.values() if r.members.get(user) == "join"]})
