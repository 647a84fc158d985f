"""What is wrong with a catalog, against the English in bridge/i18n/messages.py: an entry missing,
empty, fuzzy or translating older English, a placeholder or a command changed, leading or
trailing spaces lost (pieces such as " permanently" are glued into other messages). Used by
the tests and by `python -m bridge.i18n`. Pure."""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping

from babel.messages.catalog import Catalog

# A command as written in a message: "{prefix}start". Its name is the same in every language.
COMMAND = re.compile(r"\{prefix\}(\w+)")


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def _edges(text: str) -> tuple[str, str]:
    return text[:len(text) - len(text.lstrip())], text[len(text.rstrip()):]


def entry_problems(key: str, english: str, translated: str) -> list[str]:
    """What is wrong with one translation (none for a good one)."""
    try:
        names = placeholders(translated)
    except ValueError as e:
        return [f"{key}: not a valid format string ({e})"]
    found = []
    if names != placeholders(english):
        found.append(f"{key}: placeholders {sorted(names)}, the English has "
                     f"{sorted(placeholders(english))}")
    if Counter(COMMAND.findall(translated)) != Counter(COMMAND.findall(english)):
        found.append(f"{key}: commands {COMMAND.findall(translated)}, the English has "
                     f"{COMMAND.findall(english)} (commands keep their names)")
    if _edges(translated) != _edges(english):
        found.append(f"{key}: leading/trailing spaces differ from the English")
    return found


def problems(catalog: Catalog, english: Mapping[str, str]) -> list[str]:
    """Everything to fix before the catalog is complete; [] when it is."""
    by_key = {message.context: message for message in catalog if message.id}
    found = []
    for key, source in english.items():
        message = by_key.get(key)
        if message is None:
            found.append(f"{key}: missing")
        elif message.id != source:
            found.append(f"{key}: translates older English (run the update)")
        elif not isinstance(message.string, str) or not message.string:
            found.append(f"{key}: not translated")
        elif message.fuzzy:
            found.append(f"{key}: fuzzy (the English changed: check the translation, then "
                         "remove the fuzzy flag)")
        else:
            found.extend(entry_problems(key, source, message.string))
    found.extend(f"{key}: no such message" for key in by_key if key not in english)
    return found
