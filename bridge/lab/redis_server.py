"""A throwaway Redis on loopback: the replication bus of a lab Synapse split into workers.

No persistence (`--save '' --appendonly no`): a lab's replication stream is worth nothing
after the lab stops. `./dev test` installs Debian's `redis-server` when it is missing.
"""
from __future__ import annotations

import asyncio
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .synapse import LabError, die_with_parent, free_port, terminate


@dataclass
class RedisServer:
    directory: Path
    port: int = field(default_factory=free_port)
    _process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self, timeout: float = 20) -> None:
        if self.running:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise LabError("redis-server is not installed: a Synapse with workers needs Redis "
                           "(apt-get install redis-server; ./dev test does it)")
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", str(self.directory),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform == "linux" else None)
        deadline = time.monotonic() + timeout
        while not await self.ping():
            if self._process.returncode is not None:
                raise LabError(f"redis-server exited with {self._process.returncode}: "
                               f"{self.log_path.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                await self.stop()
                raise LabError(f"redis-server not answering on port {self.port} after {timeout}s")
            await asyncio.sleep(0.05)

    async def ping(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return (await asyncio.wait_for(reader.readline(), 2)).startswith(b"+PONG")
        except (OSError, asyncio.TimeoutError):
            return False
        finally:
            writer.close()

    async def stop(self) -> None:
        proc, self._process = self._process, None
        await terminate(proc, 10)
