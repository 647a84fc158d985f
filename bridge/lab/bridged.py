"""A federated lab with the real bridge registered on the first homeserver, and the
steps a user takes with it (DM the bot, agree, start, accept the chat). Used by the
end-to-end tests and the benchmarks."""
from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import asyncpg
from ruamel.yaml import YAML

from bridge.lab.bridge_process import BridgeProcess, generate_registration, write_config
from bridge.lab.bridge_proxy import bridge_haproxy
from bridge.lab.client import LabClient, Seen
from bridge.lab.synapse import Lab, free_port
from bridge.lab.synapse_routes import Haproxy
from bridge.lab.synapse_workers import WorkerHomeserver, WorkerLayout, layout_from_env

BOT_LOCALPART = "strangerbot"


@dataclass
class BridgedLab:
    lab: Lab
    bridge: BridgeProcess
    database_uri: str
    clients: list[LabClient] = field(default_factory=list)
    # Cluster mode (start_bridged_lab(processes=N > 1)): every process, `bridge` the first,
    # behind `proxy` (HAProxy, the registration's URL).
    bridges: list[BridgeProcess] = field(default_factory=list)
    proxy: Haproxy | None = None

    def __post_init__(self) -> None:
        if not self.bridges:
            self.bridges = [self.bridge]

    # -- cluster mode: process i of self.bridges ------------------------------------------

    async def kill(self, i: int) -> None:
        """SIGKILL process i (as a crash: no goodbye to the others, its sessions just end)."""
        await self.bridges[i].stop(signal.SIGKILL)

    async def stop_process(self, i: int) -> int | None:
        """SIGTERM process i: a graceful stop (it hands its rooms over)."""
        return await self.bridges[i].stop(signal.SIGTERM)

    async def start_process(self, i: int) -> None:
        """(Re)start process i; returns once it answers ready."""
        await self.bridges[i].start()

    def log_of(self, i: int) -> str:
        return self.bridges[i].log_path.read_text(errors="replace")

    def instance_of(self, i: int) -> str:
        return f"bridge-{i + 1}"

    @property
    def bot_id(self) -> str:
        return f"@{BOT_LOCALPART}:{self.lab.homeservers[0].server_name}"

    @property
    def bridge_domain(self) -> str:
        return self.lab.homeservers[0].server_name

    async def client(self, hs_index: int, name: str, encrypted: bool = False) -> LabClient:
        """A new user with a unique localpart and a display name, syncing (with an E2EE
        device when `encrypted`)."""
        hs = self.lab.homeservers[hs_index]
        localpart = f"{name.lower()}{uuid.uuid4().hex[:8]}"
        display_name = f"{name} Q{uuid.uuid4().hex[:10]}"
        user = await hs.register_user(localpart, displayname=display_name)
        client = await LabClient.login(user, encrypted=encrypted)
        client.display_name = display_name
        await client.start_syncing()
        self.clients.append(client)
        return client

    async def open_dm(self, client: LabClient, encrypted: bool = False) -> str:
        """DM the bot the way clients do (`encrypted`: as Element X does); returns the room
        once the bot has greeted."""
        mark = client.mark()
        room_id = await client.create_dm(self.bot_id, encrypted=encrypted)
        await client.wait_for_event(
            lambda s: s.room_id == room_id and s.sender == self.bot_id
            and "agree" in (s.body or ""), since=mark, description="greeting")
        return room_id

    async def command(self, client: LabClient, dm: str, text: str, expect: str) -> Seen:
        """Send a command in the DM and wait for the bot's reply containing `expect`."""
        mark = client.mark()
        await client.send_text(dm, text)
        return await client.wait_for_event(
            lambda s: s.room_id == dm and s.sender == self.bot_id and expect in (s.body or ""),
            since=mark, description=f"reply to {text!r} containing {expect!r}")

    async def ready_user(self, hs_index: int, name: str,
                         encrypted: bool = False) -> tuple[LabClient, str]:
        """A user who has DMed the bot (`encrypted`: with an E2EE device and an encrypted DM,
        so their chat rooms are encrypted too) and agreed to the rules."""
        client = await self.client(hs_index, name, encrypted=encrypted)
        dm = await self.open_dm(client, encrypted=encrypted)
        await self.command(client, dm, "!agree", "Thanks")
        return client, dm

    async def accept_chat(self, client: LabClient, since: int, opened: bool = True) -> str:
        """Wait for the ghost's invite, join, and (when `opened`) wait for the opening notice."""
        room_id = await client.wait_for_invite(
            lambda s: re.match(r"@_stranger_", s.sender or "") is not None, since=since)
        await client.join(room_id)
        if not opened:
            return room_id
        await client.wait_for_event(
            lambda s: s.room_id == room_id and "now chatting" in (s.body or ""), since=since,
            description="chat opened notice")
        return room_id

    async def pair(self, a: LabClient, a_dm: str, b: LabClient, b_dm: str) -> tuple[str, str]:
        """Both !start, accept their invites, and see the chat open; returns their rooms."""
        a_mark, b_mark = a.mark(), b.mark()
        await self.command(a, a_dm, "!start", "Looking")
        await self.command(b, b_dm, "!start", "Looking")
        return await self.accept_both(a, a_mark, b, b_mark)

    async def accept_both(self, a: LabClient, a_mark: int, b: LabClient, b_mark: int):
        a_room = await self.accept_chat(a, a_mark, opened=False)
        b_room = await self.accept_chat(b, b_mark, opened=False)
        for client, room, mark in ((a, a_room, a_mark), (b, b_room, b_mark)):
            await client.wait_for_event(
                lambda s: s.room_id == room and "now chatting" in (s.body or ""), since=mark,
                description="chat opened notice")
        return a_room, b_room

    async def cleaned_up(self, room_ids: list[str], timeout: float = 60) -> None:
        """Wait until the conversations of these chat rooms have ended and every side is
        cleaned up (goodbyes said, ghosts gone), as the bridge records it."""
        conn = await asyncpg.connect(self.database_uri)
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while await conn.fetchval(
                    """SELECT count(*) FROM conversation_sides s
                       JOIN conversation_sides mine ON mine.conversation_id = s.conversation_id
                       WHERE mine.room_id = ANY($1::text[]) AND s.closed_at IS NULL""",
                    room_ids):
                assert asyncio.get_running_loop().time() < deadline, "rooms not cleaned up"
                await asyncio.sleep(0.1)  # the database has no change notification to wait on
        finally:
            await conn.close()

    async def settled(self, client: LabClient, dm: str) -> None:
        """One last command answered in the user's DM: what the bridge sent before it has
        been received too (call after cleaned_up, before scanning what the user got)."""
        await self.command(client, dm, "!status", "Right now:")

    @contextlib.asynccontextmanager
    async def reconfigured(self, **overrides):
        """Run the bridge with some config keys changed (dotted keys), then as before."""
        original = self.bridge.config.read_text()
        yaml = YAML()
        data = yaml.load(original)
        for dotted, value in overrides.items():
            *parents, leaf = dotted.split(".")
            node = data
            for key in parents:
                node = node[key]
            node[leaf] = value
        with self.bridge.config.open("w") as f:
            yaml.dump(data, f)
        try:
            await self.bridge.restart()
            yield
        finally:
            self.bridge.config.write_text(original)
            await self.bridge.restart()

    async def shutdown(self, admin_dsn: str | None) -> None:
        """Stop everything this lab started and drop its database (through `admin_dsn`;
        None when the whole server goes, as in the fault tests)."""
        await self.close_clients()
        await asyncio.gather(*(bridge.stop() for bridge in self.bridges))
        if self.proxy is not None:
            await self.proxy.stop()
        await self.lab.stop()
        if admin_dsn is None:
            return
        for hs in self.lab.homeservers:
            if isinstance(hs, WorkerHomeserver):
                await hs.drop_database()
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(
                f"DROP DATABASE IF EXISTS {self.database_uri.rsplit('/', 1)[1]} WITH (FORCE)")
        finally:
            await admin.close()

    async def close_clients(self) -> None:
        for client in self.clients:
            await client.close()
        self.clients.clear()


async def start_bridged_lab(root: Path, admin_dsn: str, database_name: str, *,
                            homeserver_config: dict | None = None,
                            extra_registrations: list[Path] = (),
                            homeserver_via: Callable[[str], str] | None = None,
                            workers: WorkerLayout | None | bool = True,
                            processes: int = 1,
                            **config_overrides) -> BridgedLab:
    """`homeserver_config`: top-level homeserver.yaml keys for both homeservers (e.g. TURN);
    `extra_registrations`: other appservices on the first homeserver (a bench's own);
    `homeserver_via`: given the first homeserver's client URL, the URL the bridge is to
    use for it (e.g. through a proxy a test can cut: bridge/lab/tcpproxy.py);
    `workers`: the first homeserver split into Synapse workers (on PostgreSQL, through
    `admin_dsn`'s server) with this layout; True (the default) follows STRANGER_LAB_WORKERS,
    None or False keeps it one process on SQLite;
    `processes`: more than 1 runs that many bridge processes in cluster mode (plain rooms
    only: encryption off), instances bridge-1, bridge-2, ..., each on its own port and log
    (bridge-N.log), behind HAProxy (bridge/lab/bridge_proxy.py, contrib/haproxy.cfg) whose
    port is the registration's URL;
    `config_overrides`: the bridge's config, by dotted key."""
    layout = layout_from_env() if workers is True else (workers or None)
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {database_name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {database_name}")
    finally:
        await admin.close()
    database_uri = re.sub(r"/[^/]*$", f"/{database_name}", admin_dsn)
    # Ports and names exist before start, so config and registration can be written first.
    registration = root / "registration.yaml"
    lab = Lab(root / "lab", count=2,
              appservice_registrations={0: [registration, *extra_registrations]},
              extra_config=homeserver_config)
    if layout is not None:
        lab.homeservers[0] = WorkerHomeserver.replacing(
            lab.homeservers[0], admin_dsn, layout, database_name=f"{database_name}_synapse")
    hs1 = lab.homeservers[0]
    port = free_port()
    config = root / "bridge-config.yaml"
    homeserver_url = hs1.client_url if homeserver_via is None else homeserver_via(hs1.client_url)
    overrides = {"appservice.bot_username": BOT_LOCALPART, "logging.level": "DEBUG",
                 **config_overrides}
    proxy = None
    if processes > 1:
        proxy_port = free_port()
        overrides = {**overrides, "appservice.address": f"http://127.0.0.1:{proxy_port}",
                     "bridge.cluster.enabled": True, "bridge.encryption.allow": False,
                     "bridge.instance": "bridge-1"}
    write_config(config, homeserver_url=homeserver_url, domain=hs1.server_name, port=port,
                 database_uri=database_uri, **overrides)
    await generate_registration(config, registration)
    bridges = [BridgeProcess(config, port, root / "bridge.log")]
    if processes > 1:
        bridges = [BridgeProcess(config, port, root / "bridge-1.log")]
        yaml = YAML()
        first = yaml.load(config.read_text())  # with the tokens -g wrote
        for i in range(1, processes):
            other_port = free_port()
            first["appservice"]["port"] = other_port
            first["bridge"]["instance"] = f"bridge-{i + 1}"
            other = root / f"bridge-config-{i + 1}.yaml"
            with other.open("w") as f:
                yaml.dump(first, f)
            bridges.append(BridgeProcess(other, other_port, root / f"bridge-{i + 1}.log"))
        proxy = bridge_haproxy(root / "proxy", proxy_port, [b.port for b in bridges])
    try:
        await lab.start()
        if proxy is not None:
            await proxy.start()
        # One after the other: the first migrates the database.
        await bridges[0].start()
        await asyncio.gather(*(bridge.start() for bridge in bridges[1:]))
    except BaseException:
        await asyncio.gather(*(bridge.stop() for bridge in bridges))
        if proxy is not None:
            await proxy.stop()
        await lab.stop()
        for hs in lab.homeservers:  # (a Synapse split into workers has a database of its own)
            if isinstance(hs, WorkerHomeserver):
                await hs.drop_database()
        raise
    return BridgedLab(lab, bridges[0], database_uri, bridges=bridges, proxy=proxy)
