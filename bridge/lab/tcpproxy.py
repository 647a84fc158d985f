"""A TCP proxy on loopback that a test can cut and restore: what the bridge sees when
PostgreSQL or its homeserver stops answering (`cut(hang=True)`: connections accepted, nothing
answered, as with a dead host or a full network) or goes away (`cut()`: connections refused,
as with a stopped server). Used by the health tests (tests/e2e/test_operator.py)."""
from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    def __init__(self, target_host: str = "127.0.0.1", target_port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port or self.port or 0,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def forward_url(self, url: str) -> str:
        """Forward to the host:port of this http(s) URL; the same URL through the proxy."""
        parts = urlsplit(url)
        self.target = (parts.hostname, parts.port)
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))

    async def cut(self, hang: bool = False) -> None:
        """Stop forwarding. hang: connections (old and new) stay open, unanswered;
        otherwise existing ones are dropped and new ones refused."""
        self._flowing.clear()
        if not hang:
            await self._close_server()
            self._drop_all()

    async def restore(self) -> None:
        """Forward again (connections made while cut are dropped: their requests are lost,
        as they would be)."""
        self._drop_all()
        if self._server is None:
            await self.start()
        self._flowing.set()

    async def stop(self) -> None:
        await self._close_server()
        self._drop_all()

    async def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._flowing.wait()
            if writer.transport.is_closing():  # made while cut, dropped at the restore
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ConnectionError):
            while data := await reader.read(65536):
                await self._flowing.wait()  # a hang: hold what comes, answer nothing
                if writer.transport.is_closing():
                    return
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, ConnectionError):
            writer.transport.abort()
