"""Languages: the catalogs are complete and sound, the template follows bridge/i18n/messages.py,
the checker finds every kind of fault, the language choice rule, right-to-left bodies, and
!help complete in every language."""
from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog

from bridge.i18n import messages
from bridge.commands import Commands
from bridge.i18n import catalogs
from bridge.i18n.checks import problems
from bridge.i18n.direction import RLM
from bridge.i18n.language import choose, is_rtl, native_name
from bridge.i18n.notices import languages_spoken, notice_content
from bridge.i18n.tool import _entries, template

REPO = Path(__file__).resolve().parents[2]
SHIPPED = catalogs.shipped()
# The commands a user can send (Commands.table, with !report and !block).
USER_COMMANDS = ("agree", "start", "next", "stop", "interests", "lang", "status", "report",
                 "block", "reveal", "forget", "ask", "discuss", "questions", "help")
MODERATOR_COMMANDS = ("reports", "dismiss", "ban", "suspend", "unban", "banserver",
                      "unbanserver", "counts")


def test_the_four_languages_are_shipped():
    assert SHIPPED[0] == "en"
    assert set(SHIPPED) >= {"en", "fr", "id", "ar"}


@pytest.mark.parametrize("language", SHIPPED)
def test_every_catalog_is_complete_and_sound(language):
    """No message missing, empty, fuzzy or out of date; placeholders, commands and edge
    spaces as in the English. (After adding English keys: ./dev catalogs, translate.)"""
    assert problems(catalogs.read(language), messages.ENGLISH) == []


def test_the_template_follows_messages_py():
    """bridge/locales/bridge.pot holds exactly messages.ENGLISH (else: ./dev catalogs)."""
    with catalogs.locales_dir().joinpath("bridge.pot").open("rb") as f:
        from babel.messages.pofile import read_po
        on_disk = read_po(f)
    assert _entries(on_disk) == _entries(template())


def catalog(**entries: str | tuple[str, str, bool]) -> Catalog:
    """A catalog of key=translation (or key=(english, translation, fuzzy))."""
    made = Catalog(locale="fr")
    for key, entry in entries.items():
        english, translated, fuzzy = entry if isinstance(entry, tuple) else (
            ENGLISH[key], entry, False)
        made.add(english, translated, context=key, flags=["fuzzy"] if fuzzy else [])
    return made


ENGLISH = {"agreed": "Thanks! Send {prefix}start when you are ready.",
           "until_forever": " permanently", "wanted_tags": "likes {tags}"}
GOOD = {"agreed": "Merci ! Envoyez {prefix}start quand vous êtes prêt.",
        "until_forever": " définitivement", "wanted_tags": "aime {tags}"}


def test_the_checker_accepts_a_good_catalog():
    assert problems(catalog(**GOOD), ENGLISH) == []


@pytest.mark.parametrize("change, expected", [
    ({"agreed": None}, "agreed: missing"),
    ({"agreed": ""}, "agreed: not translated"),
    ({"agreed": (ENGLISH["agreed"], GOOD["agreed"], True)}, "agreed: fuzzy"),
    ({"agreed": ("Thanks!", GOOD["agreed"], False)}, "agreed: translates older English"),
    ({"wanted_tags": "aime {tag}"}, "wanted_tags: placeholders ['tag']"),
    ({"wanted_tags": "aime"}, "wanted_tags: placeholders []"),
    ({"wanted_tags": "aime {tags} {extra}"}, "wanted_tags: placeholders ['extra', 'tags']"),
    ({"wanted_tags": "aime {tags"}, "wanted_tags: not a valid format string"),
    ({"agreed": "Merci ! Envoyez {prefix}commencer."}, "agreed: commands ['commencer']"),
    ({"until_forever": "définitivement"}, "until_forever: leading/trailing spaces"),
    ({"stray": ("Old", "Vieux", False)}, "stray: no such message"),
])
def test_the_checker_finds_each_kind_of_fault(change, expected):
    entries = {**GOOD, **change}
    entries = {key: value for key, value in entries.items() if value is not None}
    found = problems(catalog(**entries), ENGLISH)
    assert len(found) == 1 and found[0].startswith(expected), found


# -- which language a user gets ------------------------------------------------------------------

@pytest.mark.parametrize("preferred, default, expected", [
    ("fr", "en", "fr"),      # the user's own, when there is a catalog for it
    ("ar", "fr", "ar"),
    (None, "en", "en"),      # none chosen: the operator's default
    (None, "id", "id"),
    ("de", "en", "en"),      # no catalog for it: the default
    ("de", "fr", "fr"),
])
def test_the_users_language_wins_when_the_bridge_speaks_it(preferred, default, expected):
    assert choose(preferred, default, ("en", "fr", "id", "ar")) == expected


def test_languages_by_their_own_names_and_directions():
    assert native_name("fr") == "français (fr)"
    assert native_name("ar") == "العربية (ar)"
    assert is_rtl("ar") and is_rtl("he") and is_rtl("fa")
    assert not any(is_rtl(code) for code in ("en", "fr", "id", "xx"))


# -- rendering ------------------------------------------------------------------------------------

def test_messages_and_the_words_inside_them_are_in_the_recipients_language():
    assert messages.text("partner_left", "fr", prefix="!") == (
        "L'inconnu s'est déconnecté. Envoyez !start au bot pour rencontrer quelqu'un d'autre.")
    assert messages.text("chat_opened_shared", "ar", tags=messages.Listing(("a", "b"))) == (
        "أنت الآن تدردش مع غريب عشوائي. كلاكما يحب: a، b.")
    assert messages.text("too_fast", "id", wait=messages.duration(65)).endswith(
        "dalam 1 menit 5 detik.")
    wanted = messages.phrase("wanted_tags", tags=messages.Listing(("chess", "go"),
                                                                  "list_separator_or"))
    assert messages.text("queued_with_preferences", "fr", wanted=wanted,
                         fallback="10").startswith("Je cherche un inconnu qui aime chess ou go…")
    # A phrase inside a message sees the message's own values (the command prefix).
    assert messages.text("interests_cleared", "en", prefix="/",
                         when=messages.phrase("preferences_apply_next")) == (
        "Your interests are cleared. They apply from your next /start.")


def test_a_broken_or_stale_translation_falls_back_to_english(monkeypatch):
    real = catalogs.translations

    def planted(language):
        if language != "fr":
            return real(language)
        return {"agreed": (messages.ENGLISH["agreed"], "Merci ! {oops}"),
                "queued": ("Some older English", "Ancienne traduction")}

    monkeypatch.setattr(catalogs, "translations", planted)
    assert messages.text("agreed", "fr", prefix="!") == messages.text("agreed", "en", prefix="!")
    assert messages.text("queued", "fr") == messages.ENGLISH["queued"]


def test_an_rtl_notice_reads_right_to_left_in_html_and_plain_text():
    content = notice_content("ar", "restricted", prefix="!", what="x", until="",
                             reason="<b>spam</b> & co", source="y").serialize()
    lines = content["body"].split("\n")
    assert len(lines) == 4 and all(line.startswith(RLM) for line in lines)
    assert content["format"] == "org.matrix.custom.html"
    html = content["formatted_body"]
    assert html.startswith('<div dir="rtl">') and html.endswith("</div>")
    assert html.count("<br>") == 3 and html.count(RLM) == 4
    assert "&lt;b&gt;spam&lt;/b&gt; &amp; co" in html and "<b>" not in html
    assert content["msgtype"] == "m.notice"


@pytest.mark.parametrize("language", ["en", "fr", "id"])
def test_a_left_to_right_notice_is_plain(language):
    content = notice_content(language, "partner_left", prefix="!").serialize()
    assert set(content) == {"msgtype", "body"} and RLM not in content["body"]


# -- !help ----------------------------------------------------------------------------------------

async def help_values() -> dict:
    reply = await Commands.help(None, "@u:x")  # (needs nothing of the instance)
    return reply.values


@pytest.mark.parametrize("language", SHIPPED)
async def test_help_is_complete_in_every_language(language):
    body = messages.text("help", language, prefix="!", **await help_values())
    for command in USER_COMMANDS:
        assert re.search(rf"!{command}(?!\w)", body), (language, command)
    for code in SHIPPED:  # it says which languages the bot speaks
        assert native_name(code) in body
    mod_help = messages.text("mod_help", language, prefix="!")
    for command in MODERATOR_COMMANDS:
        assert re.search(rf"!{command}(?!\w)", mod_help), (language, command)
    assert body != messages.text("help", "en", prefix="!", **await help_values()) \
        or language == "en"


@pytest.mark.parametrize("language", SHIPPED)
def test_the_greeting_says_how_to_agree_and_which_languages_the_bot_speaks(language):
    body = messages.text("greeting", language, prefix="!", languages=languages_spoken())
    assert "!agree" in body and "!help" in body and "!lang fr" in body
    assert all(native_name(code) in body for code in SHIPPED)


def test_every_user_command_is_in_the_help():
    assert set(USER_COMMANDS) >= set(Commands.IN_CHAT_ROOM) | {"agree", "start", "interests",
                                                               "lang"}


# -- shipping --------------------------------------------------------------------------------------

def test_every_catalog_file_is_package_data():
    """A wheel carries what the bridge reads at run time (pyproject's package-data globs)."""
    with open(REPO / "pyproject.toml", "rb") as f:
        globs = tomllib.load(f)["tool"]["setuptools"]["package-data"]["bridge"]
    files = [p.relative_to(REPO / "bridge").as_posix()
             for p in (REPO / "bridge" / "locales").rglob("*") if p.is_file()]
    assert files and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), files


def test_translator_notes_are_about_real_messages():
    assert set(messages.NOTES) <= set(messages.ENGLISH)
