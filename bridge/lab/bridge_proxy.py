"""HAProxy in front of several bridge processes (cluster mode): the lab's configuration is
contrib/haproxy.cfg, the production example, with its listener and servers on loopback."""
from __future__ import annotations

import re
from pathlib import Path

from .synapse_routes import Haproxy

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "contrib" / "haproxy.cfg"


def bridge_haproxy_config(port: int, backend_ports: list[int],
                          example: str | None = None) -> str:
    """contrib/haproxy.cfg for the lab: its `defaults`, `frontend` and `backend` as they are,
    bound to 127.0.0.1:`port`, one server per backend port (bridge-1, bridge-2, ...), and a
    global section for a foreground process without syslog."""
    text = EXAMPLE.read_text() if example is None else example
    sections = text[text.index("\ndefaults"):]
    out = ["global", "    maxconn 4096"]
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
    return Haproxy(directory, bridge_haproxy_config(port, backend_ports))
