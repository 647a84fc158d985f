"""The start-up check that typing notifications reach the bridge (bridge.relay.ephemeral),
against a recording fake homeserver intent."""
from __future__ import annotations

import asyncio
import logging

from mautrix.errors import MNotFound

from bridge.background import Background
from bridge.relay.ephemeral import SELF_CHECK_ACCOUNT_DATA, EphemeralRelay

BOT = "@bot:bridge.example"


class FakeBot:
    """The bot's intent: typing is echoed back as a transaction would (or not)."""

    mxid = BOT

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.relay: EphemeralRelay | None = None
        self.account_data: dict = {}
        self.joined: list[str] = []
        self.typing: list[tuple[str, int]] = []

    async def get_account_data(self, kind):
        if kind not in self.account_data:
            raise MNotFound("M_NOT_FOUND", "none")
        return self.account_data[kind]

    async def set_account_data(self, kind, content):
        self.account_data[kind] = content

    async def get_joined_rooms(self):
        return self.joined

    async def create_room(self, **_):
        self.joined.append("!check:bridge.example")
        return "!check:bridge.example"

    async def set_typing(self, room_id, timeout=0):
        self.typing.append((room_id, timeout))
        if self.echo:
            self.relay.handle([{"type": "m.typing", "room_id": room_id,
                                "content": {"user_ids": [BOT] if timeout else []}}])


class FakePortal:
    def __init__(self, bot: FakeBot) -> None:
        self.appservice = type("AS", (), {"intent": bot})()


def relay_with(echo: bool) -> tuple[EphemeralRelay, FakeBot]:
    bot = FakeBot(echo)
    relay = EphemeralRelay(pool=None, portal=FakePortal(bot), background=Background())
    bot.relay = relay
    return relay, bot


async def test_typing_that_comes_back_confirms_delivery_and_keeps_the_room():
    relay, bot = relay_with(echo=True)
    assert await asyncio.wait_for(relay.check_delivery(timeout=5), 10) is True
    assert bot.account_data[SELF_CHECK_ACCOUNT_DATA] == {"room_id": "!check:bridge.example"}
    assert bot.typing[-1] == ("!check:bridge.example", 0)  # stopped again
    # Next start: the same room, no new one.
    assert await asyncio.wait_for(relay.check_delivery(timeout=5), 10) is True
    assert bot.joined == ["!check:bridge.example"]


async def test_no_typing_back_is_reported_with_what_to_fix(caplog):
    relay, bot = relay_with(echo=False)
    with caplog.at_level(logging.ERROR, logger="bridge.relay.ephemeral"):
        assert await asyncio.wait_for(relay.check_delivery(timeout=0.3), 10) is False
    [record] = caplog.records
    assert "receive_ephemeral: true" in record.getMessage()
    assert "-g" in record.getMessage()


async def test_typing_again_when_the_first_is_dropped(monkeypatch):
    """A homeserver that believes us down right after a restart drops what it would send."""
    from bridge.relay import ephemeral
    monkeypatch.setattr(ephemeral, "RESEND_EVERY", 0.05)
    relay, bot = relay_with(echo=True)
    real_set_typing = bot.set_typing
    dropped = []

    async def drop_the_first(room_id, timeout=0):
        if timeout and not dropped:
            dropped.append(room_id)
            bot.typing.append((room_id, timeout))
            return
        await real_set_typing(room_id, timeout)

    bot.set_typing = drop_the_first
    assert await asyncio.wait_for(relay.check_delivery(timeout=5), 10) is True
    assert [t for _, t in bot.typing if t] == [5000, 5000]


async def test_several_processes_the_typing_may_come_back_to_another(caplog):
    """Cluster mode: HAProxy gives the transaction with the bot's typing to any process. The
    one that gets it tells the others (in the bridge: a NOTIFY, bridge/cluster/notices.py),
    and the checking process hears it. Unwired, the check fails as it did at first."""
    checking, bot = relay_with(echo=True)
    other, _ = relay_with(echo=False)
    bot.relay = other  # the transaction goes to the other process
    other.elsewhere = checking.heard
    assert await asyncio.wait_for(checking.check_delivery(timeout=5), 10) is True

    other.elsewhere = None
    with caplog.at_level(logging.ERROR, logger="bridge.relay.ephemeral"):
        assert await asyncio.wait_for(checking.check_delivery(timeout=0.3), 10) is False
