"""The real bridge as a child process, for end-to-end tests, benchmarks and the demo."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
from ruamel.yaml import YAML

from .synapse import die_with_parent

REPO = Path(__file__).resolve().parents[2]

# For labs whose point is not the rate limits (load, bursts, fuzzing, benchmarks): limits no
# test or benchmark reaches, and no link hold. (Pass through inprocess.existing_keys where
# the bench may run on a tree without these keys.)
NO_RATE_LIMITS = {
    "bridge.rate_limits.messages.burst": 1000, "bridge.rate_limits.messages.per_minute": 6000,
    "bridge.rate_limits.churn.free": 1000, "bridge.rate_limits.invites.burst": 1000,
    "bridge.rate_limits.invites.per_hour": 100000,
    "bridge.links.hold_messages": 0, "bridge.links.hold_seconds": 0,
}


def write_config(path: Path, *, homeserver_url: str, domain: str, port: int, database_uri: str,
                 **overrides: Any) -> None:
    """A bridge config from the example, pointed at a lab homeserver and database.
    `overrides` maps dotted keys (e.g. "bridge.invite_timeout") to values."""
    yaml = YAML()
    data = yaml.load((REPO / "bridge" / "example-config.yaml").read_text())
    values = {"homeserver.address": homeserver_url, "homeserver.domain": domain,
              "appservice.address": f"http://127.0.0.1:{port}",
              "appservice.hostname": "127.0.0.1", "appservice.port": port,
              "database.uri": database_uri, **overrides}
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[leaf] = value
    with path.open("w") as f:
        yaml.dump(data, f)


async def generate_registration(config: Path, registration: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "-g", "-c", str(config), "-r", str(registration),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"registration failed: {output.decode()}")


class BridgeProcess:
    def __init__(self, config: Path, port: int, log_path: Path) -> None:
        self.config = config
        self.port = port
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 60) -> None:
        log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "-c", str(self.config), cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # a Ctrl-C is for the parent to handle, in order
            preexec_fn=die_with_parent if sys.platform == "linux" else None)
        log.close()
        await self._wait_ready(timeout)

    async def _wait_ready(self, timeout: float) -> None:
        """The bridge answers ready once it has started up completely."""
        url = f"http://127.0.0.1:{self.port}/_matrix/mau/ready"
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"bridge exited with {self.process.returncode}:\n"
                                       f"{self.log_tail()}")
                try:
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"bridge not ready after {timeout}s:\n{self.log_tail()}")
                await asyncio.sleep(0.1)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """SIGTERM for a graceful stop, SIGKILL for a crash."""
        if self.process is None or self.process.returncode is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            self.process.kill()
            return await self.process.wait()

    async def restart(self, sig: int = signal.SIGTERM) -> None:
        await self.stop(sig)
        await self.start()

    def log_mark(self) -> int:
        """Where the log ends now: wait_for_log(since=...) looks only after it."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    async def wait_for_log(self, text: str, since: int = 0, timeout: float = 60) -> str:
        """The first log line after `since` containing `text`, as soon as it is written."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            with self.log_path.open("rb") as f:
                f.seek(since)
                for line in f.read().decode(errors="replace").splitlines():
                    if text in line:
                        return line
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no log line with {text!r} after {timeout}s:\n"
                                   f"{self.log_tail()}")
            await asyncio.sleep(0.1)  # the file has no change notification to wait on

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
