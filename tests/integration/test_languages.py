"""!lang sets the bot's language for the user too: the real Handler answers DM commands and
the real Portal says its notices in the language of the user whose room it is (their !lang
when there is a catalog for it, else bridge.default_language), over real PostgreSQL. Only
the homeserver is replaced, by a recorder of what would be sent."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from bridge.commands import Commands
from bridge.handler import Handler
from bridge.i18n.direction import RLM
from bridge.portal import Portal
from bridge.store import conversations, users
from tests.integration.test_pairing import FakePortal, config, setup  # noqa: F401 (fixtures)

ANN, DM = "@ann:example.org", "!dm_ann:example.org"


class Recorder:
    """The bot's intent, as far as sending goes."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    async def send_message_event(self, room_id, event_type, content, txn_id=None) -> str:
        self.sent.append((room_id, content.serialize()))
        return f"$sent{len(self.sent)}"


class RecordingPortal(Portal):
    """The real Portal (its notice: language, words, direction) without a homeserver."""

    def __init__(self, pool, config) -> None:
        super().__init__(SimpleNamespace(intent=Recorder()), pool, config)
        self.sent: list[tuple[str, dict]] = []

    def ghost(self, ghost_id: str):
        return SimpleNamespace(mxid=ghost_id)

    async def send(self, ghost_id, room_id, event_type, content, txn) -> str:
        self.sent.append((room_id, content))
        return f"$ghost{len(self.sent)}"


@pytest.fixture
async def handler(pool, config, setup):
    pairing = setup[0]
    portal = RecordingPortal(pool, config)
    appservice = SimpleNamespace(intent=Recorder())
    await users.ensure(pool, ANN)
    await users.agree(pool, ANN)
    await users.set_dm_room(pool, ANN, DM)
    return Handler(appservice, pool, config, portal, pairing, Commands(pool, pairing), None)


async def command(handler: Handler, text: str) -> dict:
    """ann sends `text` in her DM; the bot's answer (its content as sent)."""
    sent = handler.appservice.intent.sent
    before = len(sent)
    await handler.on_dm_event({"type": "m.room.message", "room_id": DM, "sender": ANN,
                               "event_id": f"$e{before}", "content": {"msgtype": "m.text",
                                                                      "body": text}})
    assert len(sent) == before + 1 and sent[-1][0] == DM
    return sent[-1][1]


async def test_lang_sets_the_language_the_bot_answers_in(handler, pool):
    assert (await command(handler, "!help"))["body"].startswith("Commands:\n!agree: ")
    reply = await command(handler, "!lang FR")
    assert reply["body"] == ("Votre langue\u00a0: fr. Je vous parle dans cette langue à partir "
                             "de maintenant. Ils s'appliquent à partir de votre prochain !start.")
    assert "formatted_body" not in reply
    assert (await command(handler, "!help"))["body"].startswith("Commandes\u00a0:\n!agree\u00a0: ")
    # One setting: the strangers preferred speak French too.
    assert await users.preferences(pool, ANN) == ((), "fr")
    reply = await command(handler, "!status")
    assert reply["body"].startswith("Vous ne discutez pas et n'attendez pas. Envoyez !start")
    assert "Votre langue\u00a0: fr." in reply["body"]


async def test_arabic_answers_read_right_to_left(handler):
    reply = await command(handler, "!lang ar")
    assert reply["body"].startswith(RLM + "لغتك: ar. سأكلّمك بها من الآن فصاعدًا.")
    reply = await command(handler, "!help")
    lines = reply["body"].split("\n")
    assert lines[0] == RLM + "الأوامر:" and all(line.startswith(RLM) for line in lines)
    assert reply["format"] == "org.matrix.custom.html"
    assert reply["formatted_body"].startswith('<div dir="rtl">' + RLM + "الأوامر:<br>")
    assert "!start" in reply["body"] and "français (fr)" in reply["body"]


async def test_a_language_without_a_catalog_keeps_the_default(handler, pool, config):
    reply = await command(handler, "!lang de")
    assert reply["body"] == ("Your language: de. They apply from your next !start. I don't "
                             "speak it yet, so I'll keep talking to you in English (en).")
    assert await users.preferences(pool, ANN) == ((), "de")  # still the matching language
    config["bridge.default_language"] = "fr"
    try:
        reply = await command(handler, "!lang de")
        assert reply["body"].endswith("Je ne la parle pas encore, alors je continue de vous "
                                      "parler en français (fr).")
        reply = await command(handler, "!lang clear")
        assert reply["body"].startswith("Votre préférence de langue est effacée.")
        await command(handler, "!lang ar")
        assert (await command(handler, "!lang"))["body"].startswith(RLM + "لغتك: ar.")
    finally:
        config["bridge.default_language"] = "en"


async def test_a_bad_language_code_changes_nothing_and_is_answered_in_the_users_language(
        handler, pool):
    await command(handler, "!lang id")
    reply = await command(handler, "!lang klingon")
    assert reply["body"].startswith("klingon bukan kode bahasa yang saya kenal.")
    assert await users.preferences(pool, ANN) == ((), "id")


async def test_a_ghosts_notices_are_in_the_language_of_its_rooms_user(handler, pool, setup,
                                                                    config):
    pairing = setup[0]
    config["bridge.matching.fallback_after"] = 0  # paired at once, though their languages differ
    bob = "@bob:other.example"
    await users.ensure(pool, bob)
    await users.set_lang(pool, ANN, "ar")
    await users.set_lang(pool, bob, "fr")
    await pairing.enqueue(ANN)
    await pairing.enqueue(bob)
    side = await conversations.live_side_of(pool, ANN)
    for s in (0, 1):
        await conversations.set_room(pool, side.conversation_id, s, f"!room{s}:example.org")
    conv = await conversations.get(pool, side.conversation_id)
    portal: RecordingPortal = handler.portal
    await portal.greet(conv)
    told = dict(portal.sent)
    ann_room = conv.side_of(ANN).room_id
    bob_room = conv.side_of(bob).room_id
    # Both asked for their own language; the match fell back (each got the other).
    assert told[ann_room]["body"] == (RLM + "لا أحد ممن يتحدثون لغتك ينتظر الآن، لذا فأنت "
                                      "تدردش مع غريب عشوائي.")
    assert 'dir="rtl"' in told[ann_room]["formatted_body"]
    assert told[bob_room] == {"msgtype": "m.notice", "body": (
        "Personne qui parle votre langue n'attend en ce moment, alors vous discutez avec un "
        "inconnu tiré au hasard.")}
    # A refusal notice, and the goodbye, in the same way.
    await portal.notice(portal.ghost("g"), bob_room, "refused_poll", cause="$poll")
    assert portal.sent[-1] == (bob_room, {"msgtype": "m.notice", "body": (
        "Les sondages ne peuvent pas être envoyés à l'inconnu\u202f; celui-ci n'a pas été "
        "transmis.")})
    await portal.notice(portal.ghost("g"), ann_room, "partner_left", cause="$left")
    assert portal.sent[-1][1]["body"] == (RLM + "انقطع اتصال الغريب. أرسل !start إلى الروبوت "
                                          "لمقابلة شخص جديد.")
