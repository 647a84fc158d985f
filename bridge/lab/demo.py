"""The local demo: ``python -m bridge.lab.demo`` (run from the repository root).

Brings the bridge up for real on this machine: PostgreSQL (yours, the local one, or an
embedded one), one Synapse homeserver with the bridge registered, two demo accounts, and the
bridge itself. Everything lives in ``.demo/`` and survives a re-run (same ports, same
accounts). Ctrl-C stops the bridge, then Synapse.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from .bridge_process import BridgeProcess, generate_registration
from .synapse import Lab, LabError, free_port

DB_NAME = "stranger_demo"
LOCAL_ADMIN_URI = "postgresql://postgres@127.0.0.1:5432/postgres"
ACCOUNTS = ("demo1", "demo2")


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


# ---- (1) PostgreSQL ----

async def ensure_database(admin_uri: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_uri, timeout=5)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')  # name is our constant
    finally:
        await conn.close()


async def local_postgres_uri() -> str | None:
    """The machine's PostgreSQL on 127.0.0.1:5432 when it lets user postgres in."""
    try:
        await ensure_database(LOCAL_ADMIN_URI, DB_NAME)
    except Exception as exc:  # refused, auth failure, no asyncpg: fall back to embedded
        say(f"no usable PostgreSQL on 127.0.0.1:5432 ({type(exc).__name__}: {exc})")
        return None
    return f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}"


async def embedded_postgres(pgdata: Path) -> tuple[str, Any]:
    """Start (or reuse) a pgserver cluster in *pgdata*; returns (URI, server handle)."""
    with warnings.catch_warnings():  # platformdirs complains about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        import pgserver

    pgdata.mkdir(parents=True, exist_ok=True)
    # get_server blocks (initdb on first run, then pg_ctl start): keep the loop free.
    server = await asyncio.to_thread(pgserver.get_server, pgdata, cleanup_mode="stop")
    await ensure_database(server.get_uri("postgres"), DB_NAME)
    return server.get_uri(DB_NAME), server  # a Unix-socket URI: ...@/db?host=<socket dir>


async def choose_database(demo_dir: Path, mode: str) -> tuple[str, Any]:
    if mode == "auto" and os.environ.get("STRANGER_DEMO_PG"):
        return os.environ["STRANGER_DEMO_PG"], None
    if mode in ("auto", "local"):
        uri = await local_postgres_uri()
        if uri:
            return uri, None
        if mode == "local":
            raise SystemExit("--postgres local: no PostgreSQL accepting user postgres on :5432")
    say("starting an embedded PostgreSQL (pgserver) in " + str(demo_dir / "pgdata"))
    return await embedded_postgres(demo_dir / "pgdata")


# ---- ports that stay the same across runs ----

def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def stable_ports(path: Path) -> dict[str, int]:
    saved: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
    used: set[int] = set()
    ports: dict[str, int] = {}
    for key in ("federation", "client", "appservice"):
        port = saved.get(key)
        if port and port_is_free(port) and port not in used:
            used.add(port)
        elif port and key == "federation":
            # The federation port is part of the server name, which Synapse's database is
            # tied to: it cannot silently change.
            raise SystemExit(f"port {port} (server name localhost:{port}) is in use. Stop what "
                             f"uses it, or delete {path.parent} to start the demo afresh.")
        else:
            port = free_port(used)
        ports[key] = port
    path.write_text(json.dumps(ports, indent=2) + "\n")
    return ports


# ---- (2) bridge config and registration ----

def write_bridge_config(example: Path, target: Path, *, homeserver_url: str, domain: str,
                        appservice_port: int, database_uri: str) -> dict[str, Any]:
    """Fill in the keys the demo owns; keep everything else (and any edits) as it is."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=4, sequence=4, offset=2)  # the example's layout
    config = yaml.load((target if target.exists() else example).read_text())
    config["homeserver"]["address"] = homeserver_url
    config["homeserver"]["domain"] = domain
    config["appservice"]["address"] = f"http://127.0.0.1:{appservice_port}"
    config["appservice"]["hostname"] = "127.0.0.1"
    config["appservice"]["port"] = appservice_port
    config["database"]["uri"] = database_uri
    with target.open("w") as f:
        yaml.dump(config, f)
    return config


# ---- (4) demo accounts ----

async def ensure_accounts(lab: Lab, path: Path) -> dict[str, str]:
    """Create demo1/demo2 with random passwords, once; later runs reuse accounts.txt."""
    hs = lab.homeservers[0]
    saved: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, password = line.partition(" ")
            if name and password:
                saved[name] = password
    for name in ACCOUNTS:
        password = saved.get(name) or secrets.token_urlsafe(12)
        try:
            await hs.register_user(name, password, displayname=name)
        except LabError as exc:
            if exc.errcode != "M_USER_IN_USE":
                raise
            if name not in saved:
                say(f"warning: {name} already exists with a password not in {path}")
        saved[name] = password
    path.write_text("".join(f"{n} {p}\n" for n, p in saved.items()))
    path.chmod(0o600)
    return saved


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.lab.demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path(".demo"), help="state directory")
    parser.add_argument("--example", type=Path, default=Path("config.example.yaml"))
    parser.add_argument("--postgres", choices=("auto", "local", "embedded"), default="auto")
    parser.add_argument("--no-bridge", action="store_true",
                        help="only PostgreSQL, Synapse and the accounts (no registration)")
    args = parser.parse_args(argv)
    demo: Path = args.dir.resolve()
    demo.mkdir(parents=True, exist_ok=True)
    if not args.no_bridge and not args.example.exists():
        raise SystemExit(f"{args.example} not found: run from the repository root or pass --example")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    db_uri, pg_server = await choose_database(demo, args.postgres)
    say(f"database: {db_uri}")
    ports = stable_ports(demo / "ports.json")
    registration = demo / "registration.yaml"
    lab = Lab(demo / "synapse", count=1, ports=[(ports["client"], ports["federation"])],
              appservice_registrations=None if args.no_bridge else {0: [registration]})
    hs = lab.homeservers[0]
    bridge: BridgeProcess | None = None
    try:
        bot = "(bridge not started)"
        if not args.no_bridge:
            config_path = demo / "config.yaml"
            config = write_bridge_config(args.example, config_path, homeserver_url=hs.client_url,
                                         domain=hs.server_name,
                                         appservice_port=ports["appservice"],
                                         database_uri=db_uri)
            bot = f"@{config['appservice']['bot_username']}:{hs.server_name}"
            # Regenerated every run, so tokens and the registration's URL always agree.
            await generate_registration(config_path, registration)
        say(f"starting Synapse {hs.server_name} (log: {hs.log_path})")
        await lab.start()
        accounts = await ensure_accounts(lab, demo / "accounts.txt")
        if not args.no_bridge:
            bridge = BridgeProcess(demo / "config.yaml", ports["appservice"], demo / "bridge.log")
            try:
                await bridge.start()
            except (RuntimeError, TimeoutError) as e:
                say(f"the bridge did not come up: {e}")
                return 1
        if stop.is_set():  # Ctrl-C while starting up
            return 130
        print(f"\n  Homeserver URL (Element Web/Desktop, FluffyChat, Cinny: custom homeserver):"
              f"\n      {hs.client_url}\n  Bot: {bot}   (open a DM with it)\n  Logins:")
        for name, password in accounts.items():
            print(f"      @{name}:{hs.server_name}   password {password}")
        print(f"  Logs: {hs.log_path}" + ("" if args.no_bridge else f", {demo / 'bridge.log'}"))
        print("\n  Ctrl-C to stop.\n", flush=True)
        waiters = [asyncio.create_task(stop.wait())]
        if bridge is not None:
            waiters.append(asyncio.create_task(bridge.process.wait()))
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if bridge is not None and bridge.process.returncode is not None:
            say(f"the bridge exited with code {bridge.process.returncode}; tail of its log:\n"
                f"{tail(demo / 'bridge.log')}")
            return 1
        return 0
    finally:
        say("stopping")
        if bridge is not None:
            await bridge.stop()
        await lab.stop()
        if pg_server is not None:
            await asyncio.to_thread(pg_server.cleanup)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
