"""The shipped catalogs, read from their .po files when first needed (with Babel: no
compiled .mo file to keep in step with its .po, and the same files serve a checkout, an
editable install and a wheel, which carries them as package data). Imports nothing of ours."""
from __future__ import annotations

import functools
from importlib import resources
from importlib.resources.abc import Traversable

from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po

DOMAIN = "bridge"
# The language messages.py is written in: every catalog translates from it.
SOURCE_LANGUAGE = "en"


def locales_dir() -> Traversable:
    return resources.files("bridge") / "locales"


def po_file(language: str) -> Traversable:
    return locales_dir() / language / "LC_MESSAGES" / f"{DOMAIN}.po"


@functools.cache
def shipped() -> tuple[str, ...]:
    """The languages with a catalog, the source language first."""
    found = sorted(entry.name for entry in locales_dir().iterdir()
                   if entry.is_dir() and po_file(entry.name).is_file())
    return tuple(sorted(found, key=lambda code: code != SOURCE_LANGUAGE))


def read(language: str) -> Catalog:
    with po_file(language).open("rb") as f:
        return read_po(f, locale=language, domain=DOMAIN)


def translations(language: str) -> dict[str, tuple[str, str]]:
    """key -> (the English it translates, its translation), for every finished entry (not
    fuzzy, not empty); nothing for a language without a catalog."""
    return _finished(language) if language in shipped() else {}


@functools.cache  # one entry per shipped catalog, read once
def _finished(language: str) -> dict[str, tuple[str, str]]:
    return {message.context: (message.id, message.string) for message in read(language)
            if message.id and message.context and isinstance(message.string, str)
            and message.string and not message.fuzzy}
