"""Appservice-mode encryption: each device event of a transaction reaches its own device."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest

from bridge.encryption.device_events import DeviceEvents

BOT = "@strangerbot:example.org"
GHOST = "@_stranger_abc:example.org"


class FakeDevice:
    def __init__(self, user_id: str, device_id: str, fail: Exception | None = None) -> None:
        self.client = type("C", (), {"mxid": user_id})()
        self.device_id = device_id
        self.fail = fail
        self.got: list[tuple[str, object]] = []

    async def handle_to_device(self, evt) -> None:
        if self.fail is not None and evt.content.get("fail"):
            raise self.fail
        self.got.append(("to_device", evt.sender))

    async def handle_otk_count(self, counts: dict) -> None:
        self.got.append(("otk", counts["signed_curve25519"]))

    async def handle_device_lists(self, changed: list[str]) -> None:
        self.got.append(("device_lists", changed))


class FakeGhosts:
    def __init__(self, *devices: FakeDevice) -> None:
        self.devices = {d.client.mxid: d for d in devices}

    async def find(self, user_id: str, device_id: str):
        device = self.devices.get(user_id)
        return device if device is not None and device.device_id == device_id else None


def to_device(to_user: str, to_device_id: str, sender: str = "@alice:hs2", **content) -> dict:
    return {"type": "m.room.encrypted", "sender": sender, "to_user_id": to_user,
            "to_device_id": to_device_id,
            "content": {"algorithm": "m.olm.v1.curve25519-aes-sha2", "sender_key": "k",
                        "ciphertext": {}, **content}}


def started(bot: FakeDevice, *ghosts: FakeDevice) -> DeviceEvents:
    events = DeviceEvents()
    events.start(bot, FakeGhosts(*ghosts))
    return events


async def test_each_to_device_message_reaches_its_device_only():
    bot, ghost = FakeDevice(BOT, "BOTDEV"), FakeDevice(GHOST, "GHOSTDEV")
    await started(bot, ghost).handle({"de.sorunome.msc2409.to_device": [
        to_device(GHOST, "GHOSTDEV", sender="@alice:hs2"),
        to_device(BOT, "BOTDEV", sender="@bob:hs1"),
        to_device(GHOST, "OLDDEVICE", sender="@carol:hs1"),   # a device we no longer have
        to_device("@_stranger_gone:example.org", "X"),           # a ghost we do not have
    ]})
    assert ghost.got == [("to_device", "@alice:hs2")]
    assert bot.got == [("to_device", "@bob:hs1")]


async def test_device_lists_go_to_one_device_and_key_counts_to_their_own():
    bot, ghost = FakeDevice(BOT, "BOTDEV"), FakeDevice(GHOST, "GHOSTDEV")
    await started(bot, ghost).handle({
        "org.matrix.msc3202.device_lists": {"changed": ["@alice:hs2", 7], "left": []},
        "org.matrix.msc3202.device_one_time_keys_count": {
            GHOST: {"GHOSTDEV": {"signed_curve25519": 3}, "OTHER": {"signed_curve25519": 1}},
            BOT: {"BOTDEV": {"signed_curve25519": 50}},
        }})
    assert bot.got == [("device_lists", ["@alice:hs2"]), ("otk", 50)]
    assert ghost.got == [("otk", 3)]


async def test_a_bad_message_is_skipped_and_the_rest_handled():
    bot = FakeDevice(BOT, "BOTDEV", fail=ValueError("bad olm"))
    await started(bot).handle({"de.sorunome.msc2409.to_device": [
        "not an event", {"type": "m.room.encrypted"},            # malformed
        to_device(BOT, "BOTDEV", sender="@first:hs1", fail=True),  # fails to decrypt
        to_device(BOT, "BOTDEV", sender="@second:hs1"),
    ], "org.matrix.msc3202.device_lists": "not an object either"})
    assert bot.got == [("to_device", "@second:hs1")]


async def test_a_failure_worth_retrying_fails_the_transaction():
    bot = FakeDevice(BOT, "BOTDEV", fail=asyncpg.exceptions.AdminShutdownError())
    with pytest.raises(asyncpg.exceptions.AdminShutdownError):
        await started(bot).handle({"de.sorunome.msc2409.to_device": [
            to_device(BOT, "BOTDEV", fail=True)]})


async def test_device_events_wait_for_encryption_to_start():
    events = DeviceEvents()
    bot = FakeDevice(BOT, "BOTDEV")
    # A transaction without device events does not wait.
    await asyncio.wait_for(events.handle({"events": []}), 5)
    waiting = asyncio.create_task(events.handle({"to_device": [to_device(BOT, "BOTDEV")]}))
    for _ in range(5):  # let it run up to its wait
        await asyncio.sleep(0)
    assert not waiting.done() and bot.got == []
    events.start(bot, FakeGhosts())
    await asyncio.wait_for(waiting, 5)
    assert bot.got == [("to_device", "@alice:hs2")]


class LoopbackClient:
    """Sends the bot's to-device messages straight back as a transaction would (or drops
    them, as a homeserver without appservice to-device delivery does)."""

    def __init__(self, mxid: str, deliver: bool, key_counts: bool = True) -> None:
        self.mxid, self.deliver, self.key_counts = mxid, deliver, key_counts
        self.events: DeviceEvents | None = None

    async def send_to_device(self, event_type, messages) -> None:
        if self.deliver:
            raw = [{"type": str(event_type), "sender": self.mxid, "to_user_id": user,
                    "to_device_id": device, "content": content}
                   for user, devices in messages.items() for device, content in devices.items()]
            body = {"de.sorunome.msc2409.to_device": raw}
            if self.key_counts:  # (MSC3202: counts for the devices the transaction names)
                body["org.matrix.msc3202.device_one_time_keys_count"] = {
                    user: {device: {"signed_curve25519": 50} for device in devices}
                    for user, devices in messages.items()}
            asyncio.get_running_loop().create_task(self.events.handle(body))


@pytest.mark.parametrize("delivered, key_counts, confirmed, fix", [
    (True, True, True, None),
    (False, True, False, "io.element.msc4190"),
    # Only the ephemeral flags (which every mode's registration has): to-device arrives.
    (True, False, False, "org.matrix.msc3202"),
])
async def test_delivery_check_sees_whether_to_device_messages_arrive(
        delivered, key_counts, confirmed, fix, caplog):
    bot = FakeDevice(BOT, "BOTDEV")
    bot.client = LoopbackClient(BOT, deliver=delivered, key_counts=key_counts)
    events = started(bot)
    bot.client.events = events
    # Delivered: it returns as soon as the message is back (the timeout is only an upper
    # bound); not delivered: it gives up after the (short) timeout and says what to fix.
    assert await events.check_delivery(timeout=5 if delivered else 0.2) is confirmed
    assert bot.got in ([], [("otk", 50)])  # the check message itself is not handed over
    assert (fix is not None and fix in caplog.text) is (not confirmed)
