"""The developer command that keeps the catalogs in step with bridge/i18n/messages.py:

    python -m bridge.i18n            (./dev catalogs) rewrite the template, update every
                                     catalog, then list what is left to translate
    python -m bridge.i18n add de     (./dev catalogs add de) start a catalog for a language

Updating adds new messages (untranslated), marks those whose English changed as fuzzy (with
the old translation as a starting point) and drops removed ones. The English catalog is the
English itself. Exits 1 while any catalog is incomplete, so the tests would fail."""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po

from bridge.i18n import messages
from bridge.i18n import catalogs
from bridge.i18n.catalogs import DOMAIN, SOURCE_LANGUAGE
from bridge.i18n.checks import problems

PROJECT = "stranger-bridge"
VERSION = "0.1"
COPYRIGHT = "the Stranger Bridge contributors"
WIDTH = 100  # as the code: long messages wrap, short ones stay on one line


def locales_path() -> Path:
    # The source tree's own directory: this is a developer command, run from a checkout.
    return Path(str(catalogs.locales_dir()))


def template() -> Catalog:
    """Every message, English msgid, its key as msgctxt (two keys may share their English).
    Dated when the English last changed, so an update that changes nothing changes no file."""
    pot = Catalog(project=PROJECT, version=VERSION, domain=DOMAIN, fuzzy=False,
                  copyright_holder=COPYRIGHT)
    for key, english in messages.ENGLISH.items():
        note = messages.NOTES.get(key)
        pot.add(english, context=key, auto_comments=[note] if note else [])
    path = locales_path() / f"{DOMAIN}.pot"
    if path.exists():
        with open(path, "rb") as f:
            old = read_po(f)
        if _entries(old) == _entries(pot):
            pot.creation_date = old.creation_date
    return pot


def _entries(catalog: Catalog) -> list[tuple[str | None, str]]:
    return [(message.context, message.id) for message in catalog if message.id]


def _write(catalog: Catalog, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        write_po(f, catalog, width=WIDTH, omit_header=False, ignore_obsolete=True,
                 include_previous=False)


def update(pot: Catalog, language: str) -> Catalog:
    path = locales_path() / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    with open(path, "rb") as f:
        catalog = read_po(f, locale=language, domain=DOMAIN)
    # (A copy: Babel's update adopts the template's own entries, filled in just below for
    # English, which would leak into the next catalog.)
    catalog.update(copy.deepcopy(pot), update_header_comment=False)
    if language == SOURCE_LANGUAGE:
        for message in catalog:
            if message.id:
                message.string, message.flags = message.id, set()
    _write(catalog, path)
    return catalog


def add(pot: Catalog, language: str) -> None:
    try:
        locale = Locale.parse(language)
    except (UnknownLocaleError, ValueError):
        sys.exit(f"{language!r} is not a language Babel knows (use a code such as de or pt_BR)")
    path = locales_path() / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    if path.exists():
        sys.exit(f"{path} exists already")
    catalog = Catalog(locale=locale, domain=DOMAIN, project=PROJECT, version=VERSION,
                      copyright_holder=COPYRIGHT, fuzzy=False)
    catalog.update(copy.deepcopy(pot))
    _write(catalog, path)
    print(f"Started {path}: translate every msgstr, then run ./dev catalogs again.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.i18n", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=["update", "add"], default="update")
    parser.add_argument("language", nargs="?", help="for add: the new language's code")
    args = parser.parse_args(argv)
    pot = template()
    _write(pot, locales_path() / f"{DOMAIN}.pot")
    if args.command == "add":
        if not args.language:
            parser.error("add needs a language code, e.g. add de")
        add(pot, args.language)
    catalogs.shipped.cache_clear()
    incomplete = 0
    for language in catalogs.shipped():
        found = problems(update(pot, language), messages.ENGLISH)
        incomplete += bool(found)
        print(f"{language}: " + (f"{len(found)} to fix" if found else "complete"))
        for problem in found:
            print(f"  {problem}")
    return 1 if incomplete else 0
