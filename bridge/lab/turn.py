"""A real TURN server (coturn's `turnserver`) on loopback, for the call tests.

It authenticates with a shared secret (the TURN REST API scheme Synapse's
`turn_shared_secret` uses), listens on 127.0.0.1 and relays from a *different* loopback
address (127.0.0.2 by default), so that a test can tell a relay address from the machine's
own addresses. `./dev test` installs coturn (Debian's package) when it is missing.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import shutil
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .synapse import LabError, die_with_parent, free_port, terminate


def turn_credentials(secret: str, name: str, ttl: int = 3600) -> tuple[str, str]:
    """Username and password for the TURN REST API scheme (what Synapse hands clients)."""
    username = f"{int(time.time()) + ttl}:{name}"
    password = base64.b64encode(hmac.new(secret.encode(), username.encode(),
                                         hashlib.sha1).digest()).decode()
    return username, password


@dataclass
class TurnServer:
    directory: Path
    relay_ip: str = "127.0.0.2"
    listen_ip: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    realm: str = "stranger.lab"
    _process: asyncio.subprocess.Process | None = None

    @property
    def uri(self) -> str:
        return f"turn:{self.listen_ip}:{self.port}?transport=udp"

    @property
    def log_path(self) -> Path:
        return self.directory / "turnserver.log"

    def synapse_config(self) -> dict:
        """The homeserver.yaml keys that hand this server to clients (/voip/turnServer)."""
        return {"turn_uris": [self.uri], "turn_shared_secret": self.secret,
                "turn_user_lifetime": "1h", "turn_allow_guests": False}

    async def start(self, timeout: float = 20) -> None:
        binary = shutil.which("turnserver")
        if binary is None:
            raise LabError("coturn's turnserver is not installed (apt-get install coturn; "
                           "./dev test does it)")
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            binary, "-n",  # no config file: everything is here
            f"--listening-ip={self.listen_ip}", f"--listening-port={self.port}",
            f"--relay-ip={self.relay_ip}", "--min-port=49152", "--max-port=65535",
            "--use-auth-secret", f"--static-auth-secret={self.secret}", f"--realm={self.realm}",
            "--fingerprint", "--allow-loopback-peers",  # the lab's peers are all on loopback
            "--no-cli", "--no-tls", "--no-dtls", "--no-multicast-peers",
            f"--userdb={self.directory / 'turndb'}", f"--pidfile={self.directory / 'turn.pid'}",
            f"--log-file={self.log_path}", "--simple-log", "--no-stdout-log",
        ]
        self.log_path.unlink(missing_ok=True)
        self._process = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
            preexec_fn=die_with_parent if sys.platform == "linux" else None)
        deadline = time.monotonic() + timeout
        while not await self._answers_stun():
            if self._process.returncode is not None or time.monotonic() > deadline:
                tail = self.log()[-3000:]
                await self.stop()
                raise LabError(f"turnserver did not start on {self.listen_ip}:{self.port}:\n{tail}")

    async def _answers_stun(self) -> bool:
        """Whether a STUN Binding request gets an answer (coturn has no readiness signal)."""
        request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + secrets.token_bytes(12)
        loop = asyncio.get_running_loop()
        answered = loop.create_future()

        class Probe(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                if data[8:20] == request[8:20] and not answered.done():
                    answered.set_result(True)

        transport, _ = await loop.create_datagram_endpoint(
            Probe, remote_addr=(self.listen_ip, self.port))
        try:
            transport.sendto(request)
            await asyncio.wait_for(answered, 0.2)
            return True
        except (asyncio.TimeoutError, ConnectionRefusedError):
            return False
        finally:
            transport.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def stop(self) -> None:
        proc, self._process = self._process, None
        await terminate(proc, 10)
