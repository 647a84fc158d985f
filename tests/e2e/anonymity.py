"""Scanning everything a client received for another user's identifiers.

What counts as received is LabClient.received(): every response body whole for the whole
test (each /sync: every room, the DM with the bot included, invites, to-device, presence,
account data, device lists, room summaries), every decrypted room event and every decrypted
to-device payload. A test scans at its very end, after the goodbyes and the clean-up.
"""
from __future__ import annotations

import json
from typing import Any

from bridge.lab.client import LabClient, Received


def identifiers_of(client: LabClient) -> dict[str, str]:
    """What would identify this user: IDs, names, and their device's ID and keys."""
    user_id = client.user_id
    localpart, server = user_id[1:].split(":", 1)
    names = client.display_name.split()
    found = {"user id": user_id, "localpart": localpart, "server name": server,
             "display name": client.display_name,
             "display name's unique part": names[-1] if names else "",
             "device id": client.user.device_id}
    for algorithm, key in client.identity_keys.items():
        found[f"device {algorithm} key"] = key
    return found


def leaks(record: list[Received] | list[dict[str, Any]], who: LabClient, *,
          allowed_servers: set[str] = frozenset()) -> list[str]:
    """Which of `who`'s identifiers appear anywhere in `record` (raw JSON, every field), and
    where. `allowed_servers` (the bridge's own, the viewer's own) are no leak: the first is
    in every ghost's and the bot's ID, the second in the viewer's own IDs."""
    found = []
    for entry in record:
        where, body = (entry.what, entry.body) if isinstance(entry, Received) else ("", entry)
        text = json.dumps(body)
        for label, value in identifiers_of(who).items():
            if label == "server name" and value in allowed_servers:
                continue
            if value and value in text:
                found.append(f"{label} {value!r} in {where or 'an event'}")
    return found


def leaks_to(viewer: LabClient, partner: LabClient, bridge_domain: str) -> list[str]:
    """What of `partner` reached `viewer`, in anything the viewer's client ever received."""
    own_server = viewer.user_id.split(":", 1)[1]
    return leaks(viewer.received(), partner, allowed_servers={bridge_domain, own_server})


def assert_anonymous(bridge_domain: str, *viewer_and_partner: tuple[LabClient, LabClient]
                     ) -> None:
    """For each (viewer, partner): nothing of the partner in all the viewer received."""
    found = {f"{viewer.user_id} got {leak}" for viewer, partner in viewer_and_partner
             for leak in leaks_to(viewer, partner, bridge_domain)}
    assert not found, "\n".join(sorted(found))
