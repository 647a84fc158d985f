"""End to end: the bot and the ghosts speak each user's own language (!lang), over two
federated homeservers. Arabic reads right to left: each line of the plain body starts with a
RIGHT-TO-LEFT MARK and the HTML body says dir="rtl", in plain and encrypted rooms alike.

A French-speaking user on hs1 and an Arabic-speaking one on hs2 chat (plain, encrypted,
mixed): each gets the opening notice and the goodbye in their own language, never the
other's."""
from __future__ import annotations

import pytest

from bridge.i18n.direction import RLM
from bridge.lab.bridged import BridgedLab
from bridge.lab.client import LabClient, Seen
from tests.e2e.anonymity import assert_anonymous

pytestmark = pytest.mark.e2e

WAIT = 120  # seconds: generous, the lab shares a small machine
HTML = "org.matrix.custom.html"


async def ask(bridged: BridgedLab, client: LabClient, dm: str, text: str, expect: str) -> Seen:
    """Send a command in the DM; the bot's answer, which starts with `expect`."""
    mark = client.mark()
    await client.send_text(dm, text)
    return await client.wait_for_event(
        lambda s: s.room_id == dm and s.sender == bridged.bot_id
        and (s.body or "").startswith(expect), since=mark, timeout=WAIT,
        description=f"answer to {text!r} starting with {expect!r}")


async def notice(client: LabClient, room_id: str, expect: str, since: int) -> Seen:
    return await client.wait_for_event(
        lambda s: s.room_id == room_id and (s.body or "").startswith(expect), since=since,
        timeout=WAIT, description=f"notice starting with {expect!r}")


def assert_right_to_left(seen: Seen) -> None:
    content = seen.content
    assert all(line.startswith(RLM) for line in content["body"].split("\n")), content["body"]
    assert content["format"] == HTML
    assert content["formatted_body"].startswith(f'<div dir="rtl">{RLM}')


def assert_left_to_right(seen: Seen) -> None:
    assert RLM not in seen.content["body"] and "formatted_body" not in seen.content


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain_dm", "encrypted_dm"])
async def test_lang_ar_then_help_answers_in_arabic_right_to_left(bridged: BridgedLab,
                                                                 encrypted: bool):
    amina, dm = await bridged.ready_user(1, "Amina", encrypted=encrypted)
    assert_right_to_left(await ask(bridged, amina, dm, "!lang ar",
                                   f"{RLM}لغتك: ar. سأكلّمك بها من الآن فصاعدًا."))
    help_ = await ask(bridged, amina, dm, "!help", f"{RLM}الأوامر:\n{RLM}!agree: ")
    assert_right_to_left(help_)
    body = help_.content["body"]
    for command in ("agree", "start", "interests", "lang", "status", "next", "stop", "report",
                    "block", "help"):
        assert f"!{command}" in body
    assert "العربية (ar)" in body and "français (fr)" in body and "English (en)" in body
    # It came as the room was: encrypted in an encrypted DM.
    assert help_.raw_type == ("m.room.encrypted" if encrypted else "m.room.message")


# (the French user's, the Arabic user's) rooms encrypted, and who ends the chat with !stop.
CHATS = pytest.mark.parametrize("fr_encrypted, ar_encrypted, stopper", [
    (False, False, "fr"), (True, True, "ar"), (False, True, "fr")],
    ids=["plain", "encrypted", "mixed"])

OPENED = {"fr": "Personne qui parle votre langue n'attend en ce moment, alors vous discutez "
                "avec un inconnu tiré au hasard.",
          "ar": f"{RLM}لا أحد ممن يتحدثون لغتك ينتظر الآن، لذا فأنت تدردش مع غريب عشوائي."}
PARTNER_LEFT = {"fr": "L'inconnu s'est déconnecté. Envoyez !start au bot",
                "ar": f"{RLM}انقطع اتصال الغريب. أرسل !start إلى الروبوت"}
YOU_LEFT = {"fr": "Vous vous êtes déconnecté.", "ar": f"{RLM}لقد قطعت الاتصال."}
STOPPED = {"fr": "Vous avez terminé la discussion.", "ar": f"{RLM}أنهيت الدردشة."}


@CHATS
async def test_each_side_hears_the_ghost_in_its_own_language(
        bridged: BridgedLab, fr_encrypted: bool, ar_encrypted: bool, stopper: str):
    francoise, fr_dm = await bridged.ready_user(0, "Francoise", encrypted=fr_encrypted)
    amina, ar_dm = await bridged.ready_user(1, "Amina", encrypted=ar_encrypted)
    await ask(bridged, francoise, fr_dm, "!lang fr", "Votre langue\u00a0: fr.")
    await ask(bridged, amina, ar_dm, "!lang ar", f"{RLM}لغتك: ar.")
    fr_mark, ar_mark = francoise.mark(), amina.mark()
    await ask(bridged, francoise, fr_dm, "!start", "Je cherche un inconnu qui parle fr…")
    await ask(bridged, amina, ar_dm, "!start", f"{RLM}أبحث عن غريب يتحدث ar…")
    # No one of their language turns up: after bridge.matching.fallback_after they meet.
    fr_room = await bridged.accept_chat(francoise, fr_mark, opened=False)
    ar_room = await bridged.accept_chat(amina, ar_mark, opened=False)
    assert_left_to_right(await notice(francoise, fr_room, OPENED["fr"], fr_mark))
    assert_right_to_left(await notice(amina, ar_room, OPENED["ar"], ar_mark))

    clients = {"fr": (francoise, fr_dm, fr_room), "ar": (amina, ar_dm, ar_room)}
    other = "ar" if stopper == "fr" else "fr"
    marks = {side: clients[side][0].mark() for side in clients}
    client, dm, room = clients[stopper]
    await client.send_text(room, "!stop")
    said = [await notice(client, room, YOU_LEFT[stopper], marks[stopper]),
            await notice(client, dm, STOPPED[stopper], marks[stopper]),
            await notice(clients[other][0], clients[other][2], PARTNER_LEFT[other],
                         marks[other])]
    for seen, side in zip(said, (stopper, stopper, other)):
        (assert_right_to_left if side == "ar" else assert_left_to_right)(seen)
    # Nothing either got was in the other's language.
    assert not any("Personne" in (s.body or "") for s in amina.log)
    assert not any(RLM in (s.body or "") for s in francoise.log)

    await bridged.cleaned_up([fr_room, ar_room])
    await ask(bridged, francoise, fr_dm, "!status", "Vous ne discutez pas")
    await ask(bridged, amina, ar_dm, "!status", f"{RLM}أنت لست في دردشة")
    assert_anonymous(bridged.bridge_domain, (francoise, amina), (amina, francoise))
