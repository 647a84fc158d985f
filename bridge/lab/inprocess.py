"""The whole bridge (StrangerBridge: intake, dispatcher, handler, pairing, portal, relay,
recovery) in this process, against the fake homeserver and a real PostgreSQL: for fuzzing,
memory measurements and delivery-fault tests that need thousands of conversations or
precise control over what the homeserver delivers.
"""
from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from bridge.app import StrangerBridge
from bridge.config import Config
from bridge.lab.bridge_process import write_config
from bridge.lab.fakehs import FakeHomeserver
from bridge.lab.synapse import free_port

SERVER_NAME = "fake.test"
BOT = "strangerbot"


@dataclass
class InProcessBridge:
    bridge: StrangerBridge
    hs: FakeHomeserver
    config: Config
    users: dict[str, "SimUser"] = field(default_factory=dict)

    @property
    def bot_id(self) -> str:
        return self.hs.bot_id

    async def stop(self) -> None:
        await self.bridge.stop()
        await self.hs.stop()

    async def quiesce(self, timeout: float = 60) -> None:
        """Wait until the homeserver has delivered everything and the bridge has finished
        handling it, including background room work (opening, closing)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            await self.hs.settled(max(0.1, deadline - loop.time()))
            busy = [t for t in self.bridge.background._tasks
                    if t not in self.bridge.long_running]
            busy += list(self.bridge.dispatcher._workers.values())
            if not busy:
                if self.hs._outbox or self.hs._delivering:
                    continue
                return
            if loop.time() > deadline:
                raise TimeoutError(f"bridge still busy after {timeout}s: {busy[:5]}")
            await asyncio.wait(busy, timeout=max(0.1, deadline - loop.time()))

    def user(self, localpart: str) -> "SimUser":
        user = SimUser(self, f"@{localpart}:{SERVER_NAME}")
        self.users[user.user_id] = user
        return user

    async def pair(self, first: str, second: str) -> tuple["SimUser", "SimUser"]:
        """Two new users who agree, start and accept: returned once their chat is open."""
        a, b = self.user(first), self.user(second)
        await a.ready()
        await b.ready()
        await self.pair_users(a, b)
        return a, b

    async def pair_users(self, a: "SimUser", b: "SimUser") -> None:
        """Two ready users start (a first), accept, and see their chat open."""
        mark = self.hs.mark()
        await a.command("!start", "Looking")
        await b.command("!start", "Looking")
        await a.accept(mark)
        await b.accept(mark)
        await a.wait_opened(mark)
        await b.wait_opened(mark)

    def is_ghost(self, user_id: str) -> bool:
        return self.config.is_ghost(user_id)


@dataclass
class SimUser:
    """A user acting directly through the fake homeserver."""
    world: InProcessBridge
    user_id: str
    dm: str | None = None
    room: str | None = None  # the current chat room

    @property
    def hs(self) -> FakeHomeserver:
        return self.world.hs

    def _bot_says(self, room_id: str, text: str):
        return lambda e: (e["room_id"] == room_id and e["sender"] == self.world.bot_id
                          and text in str(e["content"].get("body", "")))

    async def command(self, text: str, expect: str, timeout: float = 30) -> dict:
        mark = self.hs.mark()
        self.hs.say(self.dm, self.user_id, text)
        return await self.hs.wait_for(self._bot_says(self.dm, expect), timeout, mark,
                                      f"reply to {text!r} with {expect!r}")

    async def open_dm(self) -> None:
        mark = self.hs.mark()
        # (create_room invites the bot, once, as a client's createRoom does)
        self.dm = self.hs.create_room(self.user_id, direct_with=self.world.bot_id)
        await self.hs.wait_for(self._bot_says(self.dm, "agree"), 30, mark, "greeting")

    async def ready(self) -> None:
        await self.open_dm()
        await self.command("!agree", "Thanks")

    async def accept(self, mark: int, timeout: float = 30) -> str:
        """Wait for a ghost's invite after `mark`, join, and return the room."""
        invite = await self.hs.wait_for(
            lambda e: e["type"] == "m.room.member" and e.get("state_key") == self.user_id
            and e["content"].get("membership") == "invite" and self.world.is_ghost(e["sender"]),
            timeout, mark, "chat invite")
        self.room = invite["room_id"]
        self.hs.member(self.room, self.user_id, "join")
        return self.room

    async def wait_opened(self, mark: int, timeout: float = 30) -> None:
        room = self.room
        await self.hs.wait_for(lambda e: e["room_id"] == room and "now chatting" in str(
            e["content"].get("body", "")), timeout, mark, "chat opened")

    async def wait_ghost_left(self, mark: int, timeout: float = 30) -> None:
        room = self.room
        await self.hs.wait_for(
            lambda e: e["room_id"] == room and e["type"] == "m.room.member"
            and self.world.is_ghost(e.get("state_key", ""))
            and e["content"].get("membership") == "leave", timeout, mark, "ghost leaving")


async def start_inprocess_bridge(root: Path, database_uri: str, *, echo: bool = True,
                                 keep_sent: bool = True, timeline_limit: int = 500,
                                 **overrides) -> InProcessBridge:
    as_token, hs_token = secrets.token_hex(16), secrets.token_hex(16)
    hs = FakeHomeserver(SERVER_NAME, as_token, hs_token, BOT, echo=echo, keep_sent=keep_sent,
                        timeline_limit=timeline_limit)
    await hs.start(free_port())
    port = free_port()
    path = root / "bridge-config.yaml"
    write_config(path, homeserver_url=hs.url, domain=SERVER_NAME, port=port,
                 database_uri=database_uri, **{
                     "appservice.bot_username": BOT, "appservice.as_token": as_token,
                     "appservice.hs_token": hs_token, "bridge.encryption.allow": False,
                     "logging.level": "INFO", **overrides})
    config = Config(str(path))
    config.load()
    config.update(save=False)
    config.validate()
    bridge = StrangerBridge(config)
    try:
        await bridge.start()
    except BaseException:
        await bridge.stop()
        await hs.stop()
        raise
    hs.bridge_url = f"http://127.0.0.1:{port}"
    return InProcessBridge(bridge, hs, config)


def existing_keys(overrides: dict) -> dict:
    """The overrides whose keys the example config has (others are not this tree's)."""
    from ruamel.yaml import YAML

    from bridge.lab.bridge_process import REPO
    data = YAML().load((REPO / "bridge" / "example-config.yaml").read_text())
    kept = {}
    for dotted, value in overrides.items():
        node = data
        for key in dotted.split("."):
            node = node.get(key) if hasattr(node, "get") else None
            if node is None:
                break
        if node is not None:
            kept[dotted] = value
    return kept


async def conversation_wave(world: InProcessBridge, users: list[SimUser]) -> None:
    """Each user (an even number of idle, agreed users) starts, is paired, joins, says
    something and hears their partner; then the chats are stopped, the bridge cleans the
    rooms up and the users leave them. Returns once the bridge is idle again."""
    hs = world.hs
    mark = hs.mark()
    for user in users:
        await user.command("!start", "Looking")
    await asyncio.gather(*(user.accept(mark) for user in users))
    await asyncio.gather(*(user.wait_opened(mark) for user in users))
    for user in users:
        hs.say(user.room, user.user_id, f"hello from {user.user_id}")

    async def hears_partner(user: SimUser) -> None:
        room = user.room
        await hs.wait_for(lambda e: e["room_id"] == room and world.is_ghost(e["sender"])
                          and str(e["content"].get("body", "")).startswith("hello from"),
                          30, mark, "partner's message")

    await asyncio.gather(*(hears_partner(user) for user in users))
    for user in users:
        hs.say(user.room, user.user_id, "!stop")
    await asyncio.gather(*(user.wait_ghost_left(mark) for user in users))
    for user in users:
        hs.member(user.room, user.user_id, "leave")
        user.room = None
    await world.quiesce()


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cache_sizes(world: InProcessBridge) -> dict[str, int]:
    """Everything the bridge keeps in memory per room, ghost or conversation."""
    store = world.bridge.state_store
    sizes = {name: len(getattr(store, name)) for name in (
        "members", "full_member_list", "power_levels", "encryption", "create", "_read",
        "_registered", "_presence")}
    sizes["appservice children"] = len(world.bridge.appservice.intent.api.children)
    sizes["dispatcher workers"] = len(world.bridge.dispatcher._workers)
    sizes["dispatcher dirty"] = len(world.bridge.dispatcher._dirty)
    sizes["background tasks"] = len(world.bridge.background._tasks)
    return sizes
