"""The e2e anonymity scan finds a leak wherever it is planted: the LabClient records what
its nio client parses (every response body, every decrypted to-device payload), offline
here, and tests/e2e/anonymity.py scans that record for the partner's identifiers."""
from __future__ import annotations

import json
from pathlib import Path

import olm
import pytest
from nio import ToDeviceEvent
from yarl import URL

from bridge.lab.client import LabClient
from bridge.lab.synapse import Homeserver, LabUser
from tests.e2e.anonymity import identifiers_of, leaks_to

BRIDGE = "hs1.test"
GHOST = f"@_stranger_abc:{BRIDGE}"


class Response:
    """What nio's parse_body reads of an aiohttp response."""

    def __init__(self, path: str, body: dict) -> None:
        self.method, self.url, self._body = "GET", URL(f"http://127.0.0.1{path}"), body

    async def json(self) -> dict:
        return json.loads(json.dumps(self._body))


async def client(tmp_path: Path, localpart: str, server: str, device: str) -> LabClient:
    hs = Homeserver(0, server, "http://127.0.0.1:9", tmp_path, "secret")
    lab_client = await LabClient.login(
        LabUser(f"@{localpart}:{server}", "token", device, "pw", hs), encrypted=True)
    lab_client.display_name = f"{localpart.title()} Q{device.lower()}"
    return lab_client


@pytest.fixture
async def viewer_and_partner(tmp_path):
    viewer = await client(tmp_path / "v", "alice1234", BRIDGE, "ALICEDEVIC")
    partner = await client(tmp_path / "p", "bob5678", "hs2.test", "BOBDEVICEX")
    yield viewer, partner
    for c in (viewer, partner):
        await c.close()


def sync(**sections) -> dict:
    """A /sync body: a chat room with the ghost, the DM with the bot, and `sections`."""
    timeline = [{"type": "m.room.message", "sender": GHOST, "event_id": "$1",
                 "content": {"msgtype": "m.text", "body": "hello"}}]
    return {"next_batch": "s1", "rooms": {"join": {
        "!chat:hs1.test": {"timeline": {"events": timeline},
                           "summary": {"m.heroes": [GHOST]}},
        "!dm:hs1.test": {"timeline": {"events": []}}}}, **sections}


async def receive(viewer: LabClient, body: dict) -> None:
    await viewer.nio.parse_body(Response("/_matrix/client/v3/sync", body))


async def test_a_clean_record_has_no_leak(viewer_and_partner):
    viewer, partner = viewer_and_partner
    await receive(viewer, sync(to_device={"events": []}))
    assert viewer.received() and leaks_to(viewer, partner, BRIDGE) == []


@pytest.mark.parametrize("label", ["device id", "device curve25519 key",
                                   "device ed25519 key", "user id", "display name's unique part"])
async def test_a_planted_identifier_in_account_data_is_found(viewer_and_partner, label):
    viewer, partner = viewer_and_partner
    value = identifiers_of(partner)[label]
    await receive(viewer, sync(account_data={"events": [
        {"type": "org.example.notes", "content": {"deep": [{"note": f"x{value}x"}]}}]}))
    found = leaks_to(viewer, partner, BRIDGE)
    assert any(f.startswith(label) and "/sync" in f for f in found), found


async def test_the_partners_server_is_a_leak_but_the_bridges_is_not(viewer_and_partner):
    viewer, partner = viewer_and_partner
    await receive(viewer, sync(presence={"events": [
        {"type": "m.presence", "sender": f"@someone:{BRIDGE}", "content": {}}]}))
    assert leaks_to(viewer, partner, BRIDGE) == []
    await receive(viewer, sync(device_lists={"changed": ["@someone:hs2.test"]}))
    assert leaks_to(viewer, partner, BRIDGE) == ["server name 'hs2.test' in GET "
                                                 "/_matrix/client/v3/sync"]


async def test_a_leak_inside_an_encrypted_to_device_message_is_found_decrypted(
        viewer_and_partner):
    """The ciphertext hides the device ID; the viewer's device decrypts it (real Olm), and
    the scan of what it decrypted finds it."""
    viewer, partner = viewer_and_partner
    machine = viewer.nio.olm
    machine.account.generate_one_time_keys(1)
    one_time_key = next(iter(machine.account.one_time_keys["curve25519"].values()))
    ghost_device = olm.Account()
    session = olm.OutboundSession(ghost_device, viewer.identity_keys["curve25519"],
                                  one_time_key)
    payload = {"type": "org.example.hint", "sender": GHOST, "sender_device": "GHOSTDEV",
               "keys": {"ed25519": ghost_device.identity_keys["ed25519"]},
               "recipient": viewer.user_id,
               "recipient_keys": {"ed25519": viewer.identity_keys["ed25519"]},
               "content": {"partner_device": partner.user.device_id}}
    message = session.encrypt(json.dumps(payload))
    event = {"type": "m.room.encrypted", "sender": GHOST, "content": {
        "algorithm": "m.olm.v1.curve25519-aes-sha2",
        "sender_key": ghost_device.identity_keys["curve25519"],
        "ciphertext": {viewer.identity_keys["curve25519"]: {
            "type": message.message_type, "body": message.ciphertext}}}}
    await receive(viewer, sync(to_device={"events": [event]}))
    assert leaks_to(viewer, partner, BRIDGE) == []  # the ciphertext alone shows nothing
    machine.handle_to_device_event(ToDeviceEvent.parse_event(event))
    assert leaks_to(viewer, partner, BRIDGE) == [
        f"device id {partner.user.device_id!r} in decrypted to-device"]


async def test_the_record_outlives_the_client(viewer_and_partner):
    viewer, partner = viewer_and_partner
    await receive(viewer, sync(to_device={"events": [
        {"type": "m.dummy", "sender": GHOST, "content": {"hint": partner.user_id}}]}))
    await viewer.close()
    assert (f"user id {partner.user_id!r} in GET /_matrix/client/v3/sync"
            in leaks_to(viewer, partner, BRIDGE))
