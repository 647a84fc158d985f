"""HAProxy in front of several bridge processes (cluster mode): the lab's configuration is
contrib/haproxy.cfg, the production example, with its listener and servers on loopback."""
from __future__ import annotations

import asyncio
import csv
import re
from pathlib import Path

from .synapse_routes import Haproxy

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "contrib" / "haproxy.cfg"


def bridge_haproxy_config(port: int, backend_ports: list[int], stats_socket: Path | None = None,
                          example: str | None = None) -> str:
    """contrib/haproxy.cfg for the lab: its `defaults`, `frontend` and `backend` as they are,
    bound to 127.0.0.1:`port`, one server per backend port (bridge-1, bridge-2, ...), and a
    global section for a foreground process without syslog."""
    text = EXAMPLE.read_text() if example is None else example
    sections = text[text.index("\ndefaults"):]
    out = ["global", "    maxconn 4096"]
    if stats_socket is not None:  # (for the tests: which server got how many requests)
        out.append(f"    stats socket {stats_socket}")
    servers_done = False
    for line in sections.splitlines():
        stripped = line.strip()
        if stripped in ("log global", "option httplog"):
            continue  # (no syslog in the lab)
        if stripped.startswith("bind "):
            line = f"    bind 127.0.0.1:{port}"
        elif stripped.startswith("server "):
            if servers_done:
                continue
            servers_done = True
            out += [f"    server bridge-{i + 1} 127.0.0.1:{p} check"
                    for i, p in enumerate(backend_ports)]
            continue
        out.append(line)
    config = "\n".join(out) + "\n"
    assert re.search(r"^\s*option httpchk GET /_matrix/mau/live", config, re.M), config
    return config


def bridge_haproxy(directory: Path, port: int, backend_ports: list[int]) -> Haproxy:
    return Haproxy(directory, bridge_haproxy_config(port, backend_ports,
                                                    stats_socket=directory / "stats.sock"))


async def server_requests(proxy: Haproxy) -> dict[str, int]:
    """Requests each bridge process was sent so far (HAProxy's "show stat": stot)."""
    reader, writer = await asyncio.open_unix_connection(str(proxy.directory / "stats.sock"))
    try:
        writer.write(b"show stat\n")
        await writer.drain()
        text = (await reader.read()).decode()
    finally:
        writer.close()
    rows = list(csv.reader(line for line in text.splitlines() if line))
    header = [name.lstrip("# ") for name in rows[0]]
    out = {}
    for row in rows[1:]:
        record = dict(zip(header, row))
        if record.get("svname", "").startswith("bridge-"):
            out[record["svname"]] = int(record["stot"] or 0)
    return out
