"""The developer command (python -m bridge.i18n, ./dev catalogs) on a scratch locales
directory: a new language starts empty, a new message arrives untranslated in every catalog
(English excepted, which is its own translation), changed English turns fuzzy, a removed
message goes, and the command fails until every catalog is complete."""
from __future__ import annotations

import pytest
from babel.messages.pofile import read_po

from bridge.i18n import messages
from bridge.i18n import catalogs, tool
from bridge.i18n.checks import problems


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    monkeypatch.setattr(tool, "locales_path", lambda: tmp_path)
    monkeypatch.setattr(catalogs, "locales_dir", lambda: tmp_path)
    monkeypatch.setattr(messages, "ENGLISH", {"hi": "Hi, send {prefix}start.", "bye": "Bye."})
    catalogs.shipped.cache_clear()
    yield tmp_path
    catalogs.shipped.cache_clear()


def read(path, language):
    with open(path / language / "LC_MESSAGES" / "bridge.po", "rb") as f:
        return read_po(f, locale=language)


def translate(path, language, strings):
    catalog = read(path, language)
    for message in catalog:
        if message.context in strings:
            message.string = strings[message.context]
            message.flags.discard("fuzzy")
    tool._write(catalog, path / language / "LC_MESSAGES" / "bridge.po")


def test_add_update_translate(scratch, capsys):
    assert tool.main(["add", "en"]) == 0  # English: complete at once
    assert tool.main(["add", "fr"]) == 1  # French: everything to translate
    assert "fr: 2 to fix" in capsys.readouterr().out
    assert {m.context: m.string for m in read(scratch, "fr") if m.id} == {"hi": "", "bye": ""}
    translate(scratch, "fr", {"hi": "Salut, envoyez {prefix}start.", "bye": "Au revoir."})
    assert tool.main([]) == 0
    assert catalogs.shipped() == ("en", "fr")

    # A new message, a changed one, a removed one.
    messages.ENGLISH = {"hi": "Hello, send {prefix}start.", "new": "New {thing}."}
    assert tool.main([]) == 1
    out = capsys.readouterr().out
    assert "fr: 2 to fix" in out and "new: not translated" in out and "hi: fuzzy" in out
    fr = {m.context: m for m in read(scratch, "fr") if m.id}
    assert set(fr) == {"hi", "new"}
    assert fr["hi"].fuzzy and fr["hi"].string == "Salut, envoyez {prefix}start."  # a start
    assert fr["new"].string == ""  # never another catalog's words
    en = {m.context: m.string for m in read(scratch, "en") if m.id}
    assert en == messages.ENGLISH
    translate(scratch, "fr", {"hi": "Bonjour, envoyez {prefix}start.", "new": "Nouveau {thing}."})
    assert tool.main([]) == 0
    assert problems(read(scratch, "fr"), messages.ENGLISH) == []
    # The template holds the English, keyed by msgctxt.
    with open(scratch / "bridge.pot", "rb") as f:
        assert {m.context: m.id for m in read_po(f) if m.id} == messages.ENGLISH


def test_an_update_that_changes_nothing_rewrites_nothing(scratch):
    tool.main(["add", "en"])
    before = {p: p.read_bytes() for p in scratch.rglob("*.po*")}
    tool.main([])
    assert {p: p.read_bytes() for p in scratch.rglob("*.po*")} == before


def test_an_unknown_language_is_refused(scratch):
    with pytest.raises(SystemExit) as caught:
        tool.main(["add", "xx-nonsense"])
    assert "not a language" in str(caught.value)
