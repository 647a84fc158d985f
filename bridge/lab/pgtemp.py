"""A throwaway PostgreSQL server of our own, on a free port, that a test may stop and start
at will (the machine's shared server is never touched). Uses the machine's PostgreSQL
binaries (/usr/lib/postgresql/<version>/bin), or those bundled with the `pgserver` package;
as root, the server runs as the `postgres` user (PostgreSQL refuses to run as root).
"""
from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import tempfile
from pathlib import Path

from .synapse import free_port


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    try:
        import pgserver  # noqa: F401
        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if (bundled / "pg_ctl").exists():
            return bundled
    except ImportError:
        pass
    raise RuntimeError("no PostgreSQL binaries found (install postgresql, or pgserver)")


class TempPostgres:
    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="stranger-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.log = self.root / "postgres.log"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    async def _run(self, *args: str, check: bool = True) -> str:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL)
        output, _ = await proc.communicate()
        text = output.decode(errors="replace")
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {text}")
        return text

    async def init(self) -> None:
        await self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync")

    async def start(self) -> None:
        """Start and wait until it accepts connections."""
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=100")
        await self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log),
                        "-w", "-t", "60", "start")

    async def stop(self, mode: str = "fast") -> None:
        """fast: terminate sessions and shut down cleanly; immediate: as a crash would."""
        await self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop",
                        check=False)

    async def destroy(self) -> None:
        await self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
