"""The reverse proxy in front of a lab Synapse split into workers: HAProxy (Debian's
`haproxy`), routing the client API by the endpoint lists of Synapse's workers documentation
(element-hq/synapse docs/workers.md, "synapse.app.generic_worker") to the generic worker and
everything else to the main process.

Left on main on purpose: the stream writers' endpoints whose writer is main here (typing,
sendToDevice, receipts, tags/account_data writes, device-list writes go through either), the
admin API (user registration), media, and the appservice ping. Federation does not pass
through the proxy: its TLS listener stays on the main process.
"""
from __future__ import annotations

import asyncio
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .synapse import LabError, die_with_parent, terminate

# From docs/workers.md: "This worker can handle API requests matching the following regular
# expressions" (the client-API part; the federation part is not routed, see above).
GENERIC_WORKER_ROUTES = [
    # Sync requests
    r"^/_matrix/client/(r0|v3)/sync$",
    r"^/_matrix/client/(api/v1|r0|v3)/events$",
    r"^/_matrix/client/(api/v1|r0|v3)/initialSync$",
    r"^/_matrix/client/(api/v1|r0|v3)/rooms/[^/]+/initialSync$",
    # Client API requests
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/createRoom$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/publicRooms$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/joined_members$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/context/.*$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/members$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/state$",
    r"^/_matrix/client/v1/rooms/.*/hierarchy$",
    r"^/_matrix/client/(v1|unstable)/rooms/.*/relations/",
    r"^/_matrix/client/v1/rooms/.*/threads$",
    r"^/_matrix/client/(r0|v3|unstable)/account/3pid$",
    r"^/_matrix/client/(r0|v3|unstable)/account/whoami$",
    r"^/_matrix/client/(r0|v3|unstable)/account/deactivate$",
    r"^/_matrix/client/(r0|v3)/delete_devices$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/devices(/|$)",
    r"^/_matrix/client/versions$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/voip/turnServer$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/event/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/joined_rooms$",
    r"^/_matrix/client/v1/rooms/.*/timestamp_to_event$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable/.*)/rooms/.*/aliases",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/search$",
    r"^/_matrix/client/(r0|v3|unstable)/user/.*/filter(/|$)",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/directory/room/.*$",
    r"^/_matrix/client/(r0|v3|unstable)/capabilities$",
    r"^/_matrix/client/(r0|v3|unstable)/notifications$",
    # Encryption requests
    r"^/_matrix/client/(r0|v3|unstable)/keys/query$",
    r"^/_matrix/client/(r0|v3|unstable)/keys/changes$",
    r"^/_matrix/client/(r0|v3|unstable)/keys/claim$",
    r"^/_matrix/client/(r0|v3|unstable)/room_keys/",
    r"^/_matrix/client/(r0|v3|unstable)/keys/upload",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/keys/device_signing/upload$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/keys/signatures/upload$",
    # Registration/login requests
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/login$",
    r"^/_matrix/client/(r0|v3|unstable)/register$",
    r"^/_matrix/client/(r0|v3|unstable)/register/available$",
    r"^/_matrix/client/v1/register/m.login.registration_token/validity$",
    r"^/_matrix/client/(r0|v3|unstable)/password_policy$",
    # Event sending requests
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/redact",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/send",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/state/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/(join|invite|leave|ban|unban|kick)$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/join/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/knock/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/profile/",
    # User directory search requests
    r"^/_matrix/client/(r0|v3|unstable)/user_directory/search$",
]

# "Additionally, the following REST endpoints can be handled for GET requests" (pagination is
# there too: one generic worker here, so all of a room's pagination goes to the same one).
GENERIC_WORKER_GET_ROUTES = [
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/pushrules/",
    r"^/_matrix/client/(r0|v3|unstable)/.*/tags",
    r"^/_matrix/client/(r0|v3|unstable)/.*/account_data",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/presence/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/messages$",
]


def haproxy_config(port: int, main_port: int, worker_port: int) -> str:
    """An HAProxy configuration: loopback `port` in front, the generic worker's client
    listener for its endpoints, the main process's for the rest."""
    acls = [f"    acl worker_path path_reg {regex}" for regex in GENERIC_WORKER_ROUTES]
    acls += [f"    acl worker_get_path path_reg {regex}" for regex in GENERIC_WORKER_GET_ROUTES]
    return "\n".join([
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        # Long-polling /sync holds a request open for its timeout (30 s in the lab clients).
        "    timeout client 10m",
        "    timeout server 10m",
        "    option forwardfor",
        "frontend client",
        f"    bind 127.0.0.1:{port}",
        *acls,
        "    acl read_only method GET HEAD",
        "    use_backend generic_worker if worker_path",
        "    use_backend generic_worker if read_only worker_get_path",
        "    default_backend main",
        "backend main",
        f"    server main 127.0.0.1:{main_port}",
        "backend generic_worker",
        f"    server client1 127.0.0.1:{worker_port}",
        "",
    ])


@dataclass
class Haproxy:
    """An HAProxy process with a configuration of its own (this module's routes, or the
    bridge processes' round robin: bridge/lab/bridge_proxy.py)."""
    directory: Path
    config: str
    _process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.directory / "haproxy.cfg"

    @property
    def log_path(self) -> Path:
        return self.directory / "haproxy.log"

    async def start(self) -> None:
        binary = shutil.which("haproxy") or (
            "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
        if binary is None:
            raise LabError("haproxy is not installed: a Synapse with workers and several bridge "
                           "processes are reached through it (apt-get install haproxy; ./dev "
                           "test does it)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config)
        with self.log_path.open("ab") as log:
            # -db: foreground, no daemon; its exit is ours to see.
            self._process = await asyncio.create_subprocess_exec(
                binary, "-db", "-f", str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform == "linux" else None)

    @property
    def exited(self) -> int | None:
        return None if self._process is None else self._process.returncode

    async def stop(self) -> None:
        proc, self._process = self._process, None
        await terminate(proc, 10)
