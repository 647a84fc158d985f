"""Which language a recipient is written to, and what the bridge knows of a language (its
own name, its direction), from Babel's CLDR data. Pure."""
from __future__ import annotations

import functools
from collections.abc import Collection

from babel import Locale, UnknownLocaleError


def choose(preferred: str | None, default: str, available: Collection[str]) -> str:
    """The user's own language (`!lang`) when the bridge has a catalog for it, otherwise the
    operator's default (bridge.default_language)."""
    return preferred if preferred in available else default


@functools.cache
def _locale(language: str) -> Locale | None:
    try:
        return Locale.parse(language)
    except (UnknownLocaleError, ValueError):
        return None


def is_rtl(language: str) -> bool:
    """Written right to left (Arabic, Hebrew, Persian, Urdu...)."""
    locale = _locale(language)
    return locale is not None and locale.character_order == "right-to-left"


def native_name(language: str) -> str:
    """'français (fr)', 'العربية (ar)': each language by its own name, as a picker shows it."""
    locale = _locale(language)
    name = locale.display_name if locale is not None and locale.display_name else language
    return f"{name} ({language})"
