"""Scanning what a client received for another user's identifiers."""
from __future__ import annotations

import json

from bridge.lab.client import LabClient


def identifiers_of(client: LabClient) -> dict[str, str]:
    user_id = client.user_id
    localpart, server = user_id[1:].split(":", 1)
    return {"user id": user_id, "localpart": localpart, "server name": server,
            "display name": client.display_name,
            "display name's unique part": client.display_name.split()[-1]}


def leaks(events: list[dict], who: LabClient, *, allowed_server: str | None = None) -> list[str]:
    """Which of `who`'s identifiers appear anywhere in `events` (raw JSON, every field).
    `allowed_server` is the bridge's own server name: it necessarily appears in the ghost's
    and bot's IDs, so it only counts as a leak when it is `who`'s server elsewhere."""
    text = json.dumps(events)
    found = []
    for label, value in identifiers_of(who).items():
        if label == "server name" and value == allowed_server:
            continue
        if value and value in text:
            found.append(f"{label} {value!r}")
    return found

