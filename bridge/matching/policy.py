"""Who is paired with whom: pure policy, no I/O, so it is tested in microseconds.

A waiter may have preferences: interest tags and a language. While inside their preference
window they are only paired with someone who shares a tag (when they gave tags) and speaks
their language (when they gave one), and who will have them in return. Once the window
closes (fallback, `bridge.matching.fallback_after`) they are *flexible*: paired with anyone
who will have them. A user without preferences is flexible from the start.

The queue is served in arrival order: among compatible partners, the one waiting longest
goes first. Nobody starves: a user only moves towards the front of the queue, and once
flexible is compatible with everyone flexible.

bridge/matching/claim.py implements the same rule in SQL, through `probes` below; the tests
check that both agree.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Iterable

# Whether two users must not be paired (a recent conversation, a block). Symmetric.
Avoid = Callable[[str, str], bool]


def avoid_nobody(a: str, b: str) -> bool:
    return False


def avoid_pairs(pairs: Iterable[tuple[str, str]]) -> Avoid:
    """An Avoid for a set of pairs, in either order (recent partners, blocks)."""
    avoided = {frozenset(pair) for pair in pairs}
    return lambda a, b: frozenset((a, b)) in avoided


@dataclass(frozen=True)
class Waiter:
    user_id: str
    seq: int  # arrival order in the queue
    tags: frozenset[str] = frozenset()
    lang: str | None = None
    flexible: bool = True  # outside the preference window: will have anyone

    @property
    def has_preferences(self) -> bool:
        return bool(self.tags) or self.lang is not None


# -- compatibility --------------------------------------------------------------------------

def wish_met(a: Waiter, b: Waiter) -> bool:
    """b is what a asked for: shares one of a's tags (if any), speaks a's language (if any)."""
    return ((not a.tags or bool(a.tags & b.tags))
            and (a.lang is None or a.lang == b.lang))


def accepts(a: Waiter, b: Waiter) -> bool:
    return a.flexible or wish_met(a, b)


def compatible(a: Waiter, b: Waiter, avoid: Avoid = avoid_nobody) -> bool:
    """May a and b be paired now? Symmetric."""
    return (a.user_id != b.user_id and not avoid(a.user_id, b.user_id)
            and accepts(a, b) and accepts(b, a))


def choose_partner(me: Waiter, waiting: Iterable[Waiter],
                   avoid: Avoid = avoid_nobody) -> Waiter | None:
    """The partner a claim for `me` takes: the longest-waiting compatible waiter."""
    return min((w for w in waiting if compatible(me, w, avoid)),
               key=lambda w: w.seq, default=None)


def pair_up(waiting: Iterable[Waiter], avoid: Avoid = avoid_nobody) -> list[tuple[Waiter, Waiter]]:
    """Pair as many waiting users as possible, oldest first, each with the longest-waiting
    compatible partner; the unpaired keep waiting. (A claim for each waiter in arrival
    order does the same; so does one claim per newcomer into a queue where nobody left can
    be paired.)"""
    queue = sorted(waiting, key=lambda w: w.seq)
    taken: set[str] = set()
    pairs: list[tuple[Waiter, Waiter]] = []
    for i, first in enumerate(queue):
        if first.user_id in taken:
            continue
        rest = (w for w in queue[i + 1:] if w.user_id not in taken)
        second = choose_partner(first, rest, avoid)
        if second is not None:
            pairs.append((first, second))
            taken.update((first.user_id, second.user_id))
    return pairs


# Newcomers whose find was taken, looked up again at once at most: newcomers who all want
# the same partners would otherwise all be looked up again for each one taken.
LOOK_AGAIN = 4


def accept_in_order(pending: list[tuple[Waiter, Waiter | None]], taken: set[str]
                    ) -> tuple[list[tuple[Waiter, Waiter | None]],
                               list[tuple[Waiter, Waiter | None]], list[int]]:
    """Several newcomers looked for their partners at once, each as if alone (without the
    partners in `taken` then), so two may have found the same one. Accepts their finds in
    order until one names a partner taken since. A find not taken is still what looking
    now would give (looking without more partners only changes the answer by taking it),
    so only taken ones need looking up again: the first LOOK_AGAIN of those left. The
    outcome is exactly that of looking one after the other. A find no longer compatible
    (its row changed before it was locked) gives None.

    Returns the (newcomer, partner or None) decided, those left with their finds, and
    the positions among those left to look up again; adds accepted partners to `taken`."""
    decided: list[tuple[Waiter, Waiter | None]] = []
    for i, (me, partner) in enumerate(pending):
        if partner is not None and partner.user_id in taken:
            if i > 0:
                left = pending[i:]
                again = [j for j, (_, p) in enumerate(left)
                         if p is not None and p.user_id in taken][:LOOK_AGAIN]
                return decided, left, again
            partner = None  # (the look-up excluded them: never happens, but never loops)
        if partner is not None and not compatible(me, partner):
            partner = None
        if partner is not None:
            taken.add(partner.user_id)
        decided.append((me, partner))
    return decided, [], []


# -- what a match means for each side -------------------------------------------------------

def shared_tags(a: Waiter, b: Waiter) -> tuple[str, ...]:
    return tuple(sorted(a.tags & b.tags))


def unmet(me: Waiter, partner: Waiter) -> tuple[bool, bool]:
    """(interests unmet, language unmet): what `me` asked for that this match lacks, so
    their opening notice can say they were paired by fallback."""
    return (bool(me.tags) and not (me.tags & partner.tags),
            me.lang is not None and me.lang != partner.lang)


# -- time -----------------------------------------------------------------------------------

def fallback_delay(tags: Iterable[str], lang: str | None, fallback_after: float) -> float:
    """Seconds from joining the queue until a waiter becomes flexible."""
    return fallback_after if (any(True for _ in tags) or lang is not None) else 0.0


def is_flexible(enqueued_at: float, tags: Iterable[str], lang: str | None,
                fallback_after: float, now: float) -> bool:
    return now >= enqueued_at + fallback_delay(tags, lang, fallback_after)


def in_cooldown(ended_at: float, now: float, cooldown: float) -> bool:
    """Two users who talked until `ended_at` are not paired again before the cooldown."""
    return now < ended_at + cooldown


# -- the claim's index plan -----------------------------------------------------------------

@dataclass(frozen=True)
class Probes:
    """Index look-ups that find exactly the waiters compatible with one waiter (ignoring
    Avoid). The database keeps one key (lang or '', tag or '') per waiter and tag."""
    exact: tuple[tuple[str, str], ...]  # (lang, tag) keys, any waiter
    flexible_tags: tuple[str, ...]      # a flexible waiter with this tag
    flexible_langs: tuple[str, ...]     # a flexible waiter with this language
    any_flexible: bool                  # any flexible waiter


def keys(w: Waiter) -> set[tuple[str, str]]:
    return {(w.lang or "", tag) for tag in (w.tags or {""})}


def probes(me: Waiter) -> Probes:
    lang, tags = me.lang or "", tuple(sorted(me.tags))
    if me.flexible or not me.has_preferences:
        # Anyone flexible, and anyone still choosy whose wish `me` meets: no tags or one
        # of mine, no language or mine.
        langs = sorted({"", lang})
        return Probes(tuple((l, t) for l in langs for t in ("",) + tags), (), (), True)
    # Choosy: those whose key equals one of mine (same language, a shared tag, or both
    # without tags) will have me whatever their state; a flexible one qualifies on my wish.
    return Probes(tuple(sorted(keys(me))),
                  tags if me.lang is None else (),
                  (lang,) if me.lang is not None and not me.tags else (),
                  False)


def probe_matches(w: Waiter, p: Probes) -> bool:
    """Would the look-ups `p` find w? (What the SQL does, in Python, for the tests.)"""
    return (bool(keys(w) & set(p.exact))
            or (w.flexible and (bool(w.tags & set(p.flexible_tags))
                                or (w.lang or "") in p.flexible_langs or p.any_flexible)))


# -- what users type ------------------------------------------------------------------------

class PreferenceError(ValueError):
    """Tags or a language code that cannot be accepted; `key` names the reply."""

    def __init__(self, key: str, **values: str) -> None:
        super().__init__(key)
        self.key = key
        self.values = values


# Tags are separated by commas (or semicolons, or new lines); spaces belong to the tag.
_SEPARATORS = re.compile(r"[,;\n\u060c\u3001\uff0c]")
_LEADING_MARKS = re.compile(r"^[#\s]+")
# Accents are folded only on letters of the scripts where they are accents (Latin, Greek,
# Cyrillic: "café" = "cafe"); in other scripts combining marks are part of the spelling.
_FOLDABLE_BASE_END = "\u052f"
_ZERO_WIDTH_JOINER = "\u200d"  # holds emoji sequences together


def normalise_tag(raw: str) -> str:
    """Case, accents, surrounding and repeated spaces folded: '  Café  NOIR ' -> 'cafe noir'."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", raw).casefold())
    kept: list[str] = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch.isspace():
            kept.append(" ")
        elif category == "Mn" and (not kept or kept[-1] <= _FOLDABLE_BASE_END):
            continue
        elif category[0] == "C" and ch != _ZERO_WIDTH_JOINER:
            continue  # control and format characters, unassigned code points
        else:
            kept.append(ch)
    folded = unicodedata.normalize("NFC", "".join(kept))
    return " ".join(_LEADING_MARKS.sub("", folded).split())


def parse_tags(text: str, max_count: int, max_length: int) -> tuple[str, ...]:
    """'Cinema, jazz,  cinéma' -> ('cinema', 'jazz'); PreferenceError naming the limit."""
    tags: list[str] = []
    for part in _SEPARATORS.split(text):
        tag = normalise_tag(part)
        if tag and tag not in tags:
            tags.append(tag)
            if len(tags) > max_count:
                raise PreferenceError("tags_too_many", max_tags=str(max_count))
    for tag in tags:
        if len(tag) > max_length:
            raise PreferenceError("tag_too_long", max_length=str(max_length),
                                  tag=tag[:max_length] + "…")
    return tuple(tags)


# ISO 639-1: the two-letter language codes.
LANGUAGES = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy
da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu
hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb
lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om
or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw
ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
""".split())


def normalise_lang(raw: str) -> str:
    """'FR', 'fr-CA', 'pt_BR' -> 'fr', 'fr', 'pt'; PreferenceError for anything else. A
    region is dropped: people who share a language understand each other."""
    code = re.split(r"[-_]", raw.strip().casefold(), maxsplit=1)[0]
    if code not in LANGUAGES:
        raise PreferenceError("lang_invalid", lang=raw.strip()[:20])
    return code
