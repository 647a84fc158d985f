"""Real Synapse homeservers on loopback, federating over TLS, for tests, benchmarks and the demo.

Each homeserver is named ``localhost:<federation port>`` (no .well-known/SRV lookups needed),
serves the client API over plain HTTP on a second port, and trusts the lab CA for federation.
Ports are picked per Lab, so parallel CI jobs do not collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import hmac
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from signedjson.key import generate_signing_key, write_signing_keys

from .certs import Certs, ensure_certs

# Rate limits high enough that no test or benchmark ever trips one.
_UNLIMITED = {"per_second": 100000, "burst_count": 100000}
_RATE_LIMITS: dict[str, Any] = {name: _UNLIMITED for name in (
    "rc_message", "rc_registration", "rc_joins_per_room", "rc_room_creation", "rc_profile",
    "rc_admin_redaction", "rc_3pid_validation", "rc_third_party_invite", "rc_media_create",
    "rc_key_requests", "rc_delayed_event_mgmt", "rc_reports", "rc_user_directory")} | {
    "rc_login": {"address": _UNLIMITED, "account": _UNLIMITED, "failed_attempts": _UNLIMITED},
    "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
    "rc_invites": {"per_room": _UNLIMITED, "per_user": _UNLIMITED, "per_issuer": _UNLIMITED},
    "rc_presence": {"per_user": _UNLIMITED},
    "rc_federation": {"window_size": 1000, "sleep_limit": 100000, "sleep_delay": 1,
                      "reject_limit": 100000, "concurrent": 1000},
}


class LabError(RuntimeError):
    """A homeserver failed to start, or refused a lab request (``errcode`` when it said why)."""

    def __init__(self, message: str, errcode: str | None = None):
        super().__init__(message)
        self.errcode = errcode


# Every port handed out by this process: a port picked for one Lab (and not bound by Synapse
# yet) must not be picked again for a bridge or a second Lab.
_HANDED_OUT: set[int] = set()


def free_port(exclude: set[int] | None = None) -> int:
    """A TCP port on 127.0.0.1 that is free right now and not handed out before (nor in
    *exclude*, which is updated)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT and (exclude is None or port not in exclude):
            _HANDED_OUT.add(port)
            if exclude is not None:
                exclude.add(port)
            return port


def unique_localpart(prefix: str) -> str:
    """A localpart that will not collide with earlier users of a long-lived lab."""
    return f"{prefix}-{secrets.token_hex(3)}"


def die_with_parent() -> None:
    """``preexec_fn`` for lab children: SIGTERM when the parent dies (PR_SET_PDEATHSIG), so a
    test run killed outright leaves no orphan Synapse holding its ports."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)


async def terminate(proc: asyncio.subprocess.Process | None, timeout: float) -> None:
    """SIGTERM a lab child and wait for it; SIGKILL when it has not gone within `timeout`."""
    if proc is None or proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()


@dataclass
class LabUser:
    user_id: str
    access_token: str
    device_id: str
    password: str
    homeserver: "Homeserver" = field(repr=False)


@dataclass
class Homeserver:
    index: int
    server_name: str
    client_url: str
    directory: Path
    registration_shared_secret: str = field(repr=False)
    client_port: int = 0
    federation_port: int = 0
    certs: Certs | None = field(default=None, repr=False)
    appservice_config_files: list[Path] = field(default_factory=list)
    extra_config: dict[str, Any] = field(default_factory=dict)  # merged last, top-level keys
    startup_timeout: float = 60.0
    stop_timeout: float = 15.0
    _process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.directory / "homeserver.yaml"

    @property
    def log_path(self) -> Path:
        return self.directory / "homeserver.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def build_config(self) -> dict[str, Any]:
        if self.certs is None:
            raise LabError("Homeserver.certs must be set (Lab.start does it) before starting")
        d = self.directory
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "public_baseurl": self.client_url + "/",
            "report_stats": False,
            "signing_key_path": str(d / "signing.key"),
            "database": {"name": "sqlite3", "args": {"database": str(d / "homeserver.db")}},
            "media_store_path": str(d / "media_store"),
            "registration_shared_secret": self.registration_shared_secret,
            "enable_registration": False,
            "listeners": [
                {"port": self.client_port, "bind_addresses": ["127.0.0.1"], "type": "http",
                 "tls": False, "x_forwarded": False,
                 "resources": [{"names": ["client"], "compress": False}]},
                {"port": self.federation_port, "bind_addresses": ["127.0.0.1"], "type": "http",
                 "tls": True, "resources": [{"names": ["federation"], "compress": False}]},
            ],
            "tls_certificate_path": str(self.certs.cert),
            "tls_private_key_path": str(self.certs.key),
            # Keep certificate checking on, against our CA only.
            "federation_custom_ca_list": [str(self.certs.ca_cert)],
            # Without this, federation to loopback is blocked and shows up as a DNSLookupError.
            "ip_range_whitelist": ["127.0.0.0/8"],
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "bcrypt_rounds": 4,
            "presence": {"enabled": False},
            "url_preview_enabled": False,
            "enable_metrics": False,
            "app_service_config_files": [str(p) for p in self.appservice_config_files],
            # To-device messages and device-list/OTK extensions in AS transactions: what an
            # encrypting appservice needs; harmless otherwise.
            "experimental_features": {
                "msc2409_to_device_messages_enabled": True,
                "msc3202_transaction_extensions": True,
            },
            **_RATE_LIMITS,
        }
        config.update(self.extra_config)
        return config

    def write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "media_store").mkdir(exist_ok=True)
        key_path = self.directory / "signing.key"
        if not key_path.exists():  # keep the key across restarts: remote servers cache it
            with key_path.open("w") as f:
                write_signing_keys(f, [generate_signing_key("a_" + secrets.token_hex(2))])
        self.config_path.write_text(yaml.safe_dump(self.build_config(), sort_keys=False))

    def log_tail(self, lines: int = 60, since: int = 0) -> str:
        with self.log_path.open("rb") as f:
            f.seek(since)
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])

    async def start(self) -> None:
        if self.running:
            return
        self.write_config()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            log.write(f"\n===== lab start {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
            log.flush()
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path),
                cwd=self.directory, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                # Own session: a Ctrl-C in the demo's terminal reaches us, and we stop
                # Synapse in order, instead of everything dying at once.
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
        try:
            await self._wait_ready()
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, LabError):
                raise LabError(f"{exc}\n--- tail of {self.log_path} ---\n"
                               f"{self.log_tail(since=log_offset)}") from None
            raise

    async def _wait_ready(self, url: str | None = None,
                          process: asyncio.subprocess.Process | None = None,
                          what: str = "Synapse") -> None:
        """Until `url` (the client API's versions) answers 200; fails when `process` (the
        homeserver's) exits first."""
        url = url or f"{self.client_url}/_matrix/client/versions"
        deadline = time.monotonic() + self.startup_timeout
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                proc = process or self._process
                assert proc is not None
                if proc.returncode is not None:
                    raise LabError(f"{self.server_name}: {what} exited with code "
                                   f"{proc.returncode} during start-up")
                try:
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise LabError(f"{self.server_name}: not ready after {self.startup_timeout}s")
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        proc, self._process = self._process, None
        await terminate(proc, self.stop_timeout)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.post(self.client_url + path, json=body) as resp:
                data = await resp.json(content_type=None)
                if resp.status != 200:
                    raise LabError(f"{self.server_name} {path}: HTTP {resp.status} {data}",
                                   errcode=(data or {}).get("errcode"))
                return data

    async def register_user(self, localpart: str, password: str | None = None,
                            admin: bool = False, displayname: str | None = None) -> LabUser:
        """Create a user through the shared-secret admin API (nonce + HMAC-SHA1)."""
        password = password or secrets.token_urlsafe(12)
        path = "/_synapse/admin/v1/register"
        async with aiohttp.ClientSession() as session:
            async with session.get(self.client_url + path) as resp:
                nonce = (await resp.json())["nonce"]
        mac = hmac.new(self.registration_shared_secret.encode(), digestmod=hashlib.sha1)
        for part in (nonce, localpart, password):
            mac.update(part.encode() + b"\x00")
        mac.update(b"admin" if admin else b"notadmin")
        body: dict[str, Any] = {"nonce": nonce, "username": localpart, "password": password,
                                "admin": admin, "mac": mac.hexdigest()}
        if displayname is not None:
            body["displayname"] = displayname
        data = await self._post(path, body)
        return LabUser(data["user_id"], data["access_token"], data["device_id"], password, self)

    async def login(self, localpart: str, password: str) -> LabUser:
        """Password login, for users that already exist (e.g. the demo's accounts on a re-run)."""
        data = await self._post("/_matrix/client/v3/login", {
            "type": "m.login.password", "password": password,
            "identifier": {"type": "m.id.user", "user": localpart},
        })
        return LabUser(data["user_id"], data["access_token"], data["device_id"], password, self)


def _shared_secret(directory: Path) -> str:
    # Persisted so a lab kept on disk (the demo) can still create users after a restart.
    path = directory / "registration_shared_secret"
    if path.exists():
        return path.read_text().strip()
    directory.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    path.write_text(secret)
    return secret


class Lab:
    """*count* federating homeservers under *root* (``root/hs0``, ``root/hs1``, ...).

    Homeservers, names and ports exist from construction, so a bridge config and registration
    can be written against them before ``start()``. ``ports`` pins (client, federation) ports.
    """

    def __init__(self, root: Path, count: int = 2,
                 appservice_registrations: dict[int, list[Path]] | None = None, *,
                 ports: list[tuple[int, int]] | None = None,
                 extra_config: dict[str, Any] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        used: set[int] = {p for pair in ports or [] for p in pair}
        self.homeservers: list[Homeserver] = []
        for index in range(count):
            if ports and index < len(ports):
                client_port, federation_port = ports[index]
            else:
                client_port, federation_port = free_port(used), free_port(used)
            directory = self.root / f"hs{index}"
            self.homeservers.append(Homeserver(
                index, f"localhost:{federation_port}", f"http://127.0.0.1:{client_port}",
                directory, _shared_secret(directory), client_port, federation_port,
                appservice_config_files=list((appservice_registrations or {}).get(index, [])),
                extra_config=dict(extra_config or {})))

    @property
    def ports(self) -> list[tuple[int, int]]:
        return [(hs.client_port, hs.federation_port) for hs in self.homeservers]

    async def start(self) -> None:
        certs = ensure_certs(self.root / "certs")  # one CA and cert shared by all servers
        for hs in self.homeservers:
            hs.certs = certs
        results = await asyncio.gather(*(hs.start() for hs in self.homeservers),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise errors[0]

    async def stop(self) -> None:
        await asyncio.gather(*(hs.stop() for hs in self.homeservers))

    async def __aenter__(self) -> "Lab":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
