"""A lab homeserver split into Synapse workers, as a large deployment runs it:

- the main process (federation over TLS stays here, with the admin and media APIs);
- `client1`, a generic worker for the client API (sync, sends, joins, keys, ...), reached
  through HAProxy on the homeserver's client port (bridge/lab/synapse_routes.py);
- `persister1` (and `persister2`): event persisters (`stream_writers: events`), sharded by room;
- `appservice1`: the appservice sender (`notify_appservices_from_worker`);
- optionally `fedsender1`: the federation sender (`federation_sender_instances`);
- PostgreSQL (workers need it: a database of its own on the given server) and a Redis of its
  own (bridge/lab/redis_server.py) for replication.

Every process has an internal HTTP listener with the replication and metrics resources, so a
test can read, per process, what it did (`metric`). `STRANGER_LAB_WORKERS=1` makes the e2e
labs' first homeserver (the bridge's) one of these (`layout_from_env`).
"""
from __future__ import annotations

import asyncio
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import asyncpg
import yaml

from .redis_server import RedisServer
from .synapse import Homeserver, LabError, die_with_parent, free_port, terminate
from .synapse_routes import Haproxy, haproxy_config

GENERIC_WORKER = "synapse.app.generic_worker"


@dataclass(frozen=True)
class WorkerLayout:
    persisters: int = 2
    federation_sender: bool = True

    @property
    def worker_names(self) -> list[str]:
        return (["client1"] + self.persister_names + ["appservice1"]
                + (["fedsender1"] if self.federation_sender else []))

    @property
    def persister_names(self) -> list[str]:
        return [f"persister{i + 1}" for i in range(self.persisters)]


def layout_from_env(environ: dict[str, str] | None = None) -> WorkerLayout | None:
    """`STRANGER_LAB_WORKERS`: unset, empty or 0 for a single-process Synapse, 1 for workers."""
    value = (environ if environ is not None else os.environ).get("STRANGER_LAB_WORKERS", "")
    if value.strip() in ("", "0"):
        return None
    if value.strip() != "1":
        raise LabError(f"STRANGER_LAB_WORKERS must be 0 or 1, not {value!r}")
    return WorkerLayout()


@dataclass
class WorkerHomeserver(Homeserver):
    layout: WorkerLayout = field(default_factory=WorkerLayout)
    admin_dsn: str = ""  # the PostgreSQL server Synapse's own database is made on
    database_name: str = ""
    main_client_port: int = 0
    ports: dict[str, int] = field(default_factory=dict)  # internal listener per process
    worker_client_port: int = 0
    redis: RedisServer | None = field(default=None, repr=False)
    proxy: Haproxy | None = field(default=None, repr=False)
    _workers: dict[str, asyncio.subprocess.Process] = field(default_factory=dict, repr=False)

    @classmethod
    def replacing(cls, hs: Homeserver, admin_dsn: str, layout: WorkerLayout | None = None,
                  database_name: str | None = None) -> "WorkerHomeserver":
        """The same homeserver (name, ports, directory, registrations), split into workers,
        its database `database_name` (made at start if missing) on `admin_dsn`'s server."""
        layout = layout or WorkerLayout()
        base = {f.name: getattr(hs, f.name) for f in fields(Homeserver) if f.init}
        return cls(**base, layout=layout, admin_dsn=admin_dsn,
                   database_name=database_name or f"synapse_hs{hs.index}_{secrets.token_hex(4)}",
                   main_client_port=free_port(),
                   ports={name: free_port() for name in ["main", *layout.worker_names]},
                   worker_client_port=free_port(),
                   redis=RedisServer(hs.directory / "redis"))

    # --- configuration ---------------------------------------------------------------------

    def _database(self) -> dict[str, Any]:
        url = urlparse(self.admin_dsn)
        return {"name": "psycopg2", "args": {
            "user": url.username or "postgres", "password": url.password or "",
            "host": url.hostname or "127.0.0.1", "port": url.port or 5432,
            "dbname": self.database_name, "cp_min": 1, "cp_max": 3}}

    def _internal_listener(self, name: str) -> dict[str, Any]:
        return {"port": self.ports[name], "bind_addresses": ["127.0.0.1"], "type": "http",
                "resources": [{"names": ["replication", "metrics"]}]}

    def build_config(self) -> dict[str, Any]:
        config = super().build_config()
        client, federation = config["listeners"]
        client["port"] = self.main_client_port  # the proxy listens on client_port
        client["x_forwarded"] = True
        assert self.redis is not None
        config.update({
            "database": self._database(),
            "listeners": [client, federation, self._internal_listener("main")],
            "enable_metrics": True,
            "redis": {"enabled": True, "host": "127.0.0.1", "port": self.redis.port},
            "worker_replication_secret": self.registration_shared_secret,
            "instance_map": {name: {"host": "127.0.0.1", "port": self.ports[name]}
                             for name in ["main", *self.layout.persister_names]},
            "stream_writers": {"events": self.layout.persister_names},
            "notify_appservices_from_worker": "appservice1",
        })
        if self.layout.federation_sender:
            config["federation_sender_instances"] = ["fedsender1"]
        return config

    def worker_config(self, name: str) -> dict[str, Any]:
        listeners = [self._internal_listener(name)]
        if name == "client1":
            listeners.append({"port": self.worker_client_port, "bind_addresses": ["127.0.0.1"],
                              "type": "http", "x_forwarded": True,
                              "resources": [{"names": ["client"], "compress": False}]})
        return {"worker_app": GENERIC_WORKER, "worker_name": name,
                "worker_listeners": listeners}

    def worker_config_path(self, name: str) -> Path:
        return self.directory / f"{name}.yaml"

    def worker_log_path(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    # --- processes -------------------------------------------------------------------------

    async def _ensure_database(self) -> None:
        admin = await asyncpg.connect(self.admin_dsn)
        try:
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1",
                                        self.database_name):
                # Synapse refuses a database whose collation is not C.
                await admin.execute(
                    f"CREATE DATABASE {self.database_name} ENCODING 'UTF8' LC_COLLATE 'C' "
                    "LC_CTYPE 'C' TEMPLATE template0")
        finally:
            await admin.close()

    async def drop_database(self) -> None:
        admin = await asyncpg.connect(self.admin_dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {self.database_name} WITH (FORCE)")
        finally:
            await admin.close()

    async def _spawn(self, module: str, configs: list[Path],
                     log_path: Path) -> asyncio.subprocess.Process:
        with log_path.open("ab") as log:
            log.write(f"\n===== lab start {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
            log.flush()
            args = [arg for path in configs for arg in ("-c", str(path))]
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", module, *args, cwd=self.directory,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform == "linux" else None)

    async def start(self) -> None:
        if self.running:
            return
        assert self.redis is not None
        try:
            await self._ensure_database()
            await self.redis.start()
            self.write_config()
            self._process = await self._spawn("synapse.app.homeserver", [self.config_path],
                                              self.log_path)
            # Main first: it creates or upgrades the schema the workers then read.
            await self._wait_ready(f"http://127.0.0.1:{self.main_client_port}"
                                   "/_matrix/client/versions")
            for name in self.layout.worker_names:
                self.worker_config_path(name).write_text(
                    yaml.safe_dump(self.worker_config(name), sort_keys=False))
                self._workers[name] = await self._spawn(
                    GENERIC_WORKER, [self.config_path, self.worker_config_path(name)],
                    self.worker_log_path(name))
            await asyncio.gather(*(
                self._wait_ready(f"http://127.0.0.1:{self.ports[name]}/health",
                                 self._workers[name], f"worker {name}")
                for name in self.layout.worker_names))
            self.proxy = Haproxy(self.directory / "proxy", haproxy_config(
                self.client_port, self.main_client_port, self.worker_client_port))
            await self.proxy.start()
            await self._wait_ready()  # through the proxy, answered by the generic worker
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, LabError):
                raise LabError(f"{exc}\n{self.logs_tail()}") from None
            raise

    def logs_tail(self, lines: int = 30) -> str:
        parts = []
        for name, path in [("main", self.log_path),
                           *((n, self.worker_log_path(n)) for n in self.layout.worker_names),
                           ("haproxy", self.directory / "proxy" / "haproxy.log")]:
            if path.exists():
                text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                parts.append(f"--- tail of {name} ({path}) ---\n{text}")
        return "\n".join(parts)

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()
        workers, self._workers = self._workers, {}
        await asyncio.gather(*(terminate(proc, self.stop_timeout) for proc in workers.values()))
        await super().stop()
        if self.redis is not None:
            await self.redis.stop()

    # --- what each process did -------------------------------------------------------------

    async def metrics(self, process: str) -> str:
        """The Prometheus text of one process ("main" or a worker's name)."""
        url = f"http://127.0.0.1:{self.ports[process]}/_synapse/metrics"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as resp:
                if resp.status != 200:
                    raise LabError(f"{process}: metrics answered HTTP {resp.status}")
                return await resp.text()

    async def metric(self, process: str, name: str, **labels: str) -> float:
        """The sum of a counter's samples in one process (those with these label values)."""
        return sum_samples(await self.metrics(process), name, **labels)

    def pids(self) -> dict[str, int]:
        """Process ID of every Synapse process of this homeserver, by name."""
        found = {name: proc.pid for name, proc in self._workers.items()
                 if proc.returncode is None}
        if self.running and self._process is not None:
            found["main"] = self._process.pid
        return found


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def sum_samples(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric `name` (a counter's `_total` accepted either way) whose
    labels include `labels`."""
    names = {name, name + "_total"} if not name.endswith("_total") else {name}
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) not in names:
            continue
        have = dict(_LABEL.findall(match.group(3) or ""))
        if all(have.get(key) == value for key, value in labels.items()):
            total += float(match.group(4))
    return total
