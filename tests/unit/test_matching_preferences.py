"""Interests, language, fallback, cooldowns and fairness: the pure matching policy."""
from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bridge.i18n import messages
from bridge.matching.policy import (LOOK_AGAIN, PreferenceError, Waiter, accept_in_order, accepts,
                             avoid_nobody, avoid_pairs, choose_partner, compatible,
                             fallback_delay, in_cooldown, is_flexible, normalise_lang,
                             normalise_tag, pair_up, parse_tags, probe_matches, probes,
                             shared_tags, unmet)

TAGS = ["cinema", "jazz", "chess", "cats", "rock music"]
LANGS = [None, "en", "fr"]


def w(user: str, seq: int, tags=(), lang=None, flexible=None) -> Waiter:
    tags = frozenset(tags)
    if flexible is None:
        flexible = not tags and lang is None
    return Waiter(f"@{user}:x", seq, tags, lang, flexible)


waiters = st.builds(
    lambda user, seq, tags, lang, flexible: w(user, seq, tags, lang, flexible),
    st.sampled_from("abcdefgh"), st.integers(0, 10_000),
    st.frozensets(st.sampled_from(TAGS), max_size=3), st.sampled_from(LANGS), st.booleans())


def distinct_queue(entries):
    """Waiters with distinct users and distinct arrival numbers."""
    return [Waiter(f"@u{i}:x", seq, x.tags, x.lang, x.flexible)
            for i, (seq, x) in enumerate(entries)]


queues = st.lists(st.tuples(st.integers(0, 100_000), waiters), max_size=25,
                  unique_by=lambda e: e[0]).map(distinct_queue)


# -- normalisation ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("Cinema", "cinema"),
    ("  Café   NOIR  ", "cafe noir"),
    ("CINÉMA", "cinema"),
    ("#jazz", "jazz"),
    ("# #jazz", "jazz"),
    ("Straße", "strasse"),
    ("ﬁlm", "film"),
    ("rock\tmusic", "rock music"),
    ("zero\u200bwidth", "zerowidth"),
    ("Ελληνικά", "ελληνικα"),
    ("हिन्दी", "हिन्दी"),  # marks are spelling here, not accents: kept
    ("🎬", "🎬"),
    ("   ", ""),
    ("nul\x00byte", "nulbyte"),  # PostgreSQL text cannot hold NUL
    ("lone\ud800surrogate", "lonesurrogate"),  # nor can UTF-8 hold a lone surrogate
    ("\x00\u200b", ""),
])
def test_normalise_tag(raw, expected):
    assert normalise_tag(raw) == expected


@given(st.text(max_size=40))
def test_normalisation_is_idempotent(raw):
    once = normalise_tag(raw)
    assert normalise_tag(once) == once
    assert once == once.strip() and "  " not in once and "\n" not in once


@given(st.text(alphabet=st.characters(categories=["L"]), min_size=1, max_size=15))
def test_case_never_matters(word):
    # (Where Unicode's upper and lower case do not map back, as Turkish dotless ı, there is
    # no one right answer.)
    assume(word.upper().casefold() == word.casefold() == word.lower().casefold())
    assert normalise_tag(word.upper()) == normalise_tag(word.lower()) == normalise_tag(word)


def test_parse_tags_splits_on_commas_and_drops_duplicates_and_empties():
    assert parse_tags("Cinema, jazz,, cinéma ;  rock  music\nchess", 5, 30) == (
        "cinema", "jazz", "rock music", "chess")
    assert parse_tags(" , ,", 5, 30) == ()


def test_parse_tags_limits_name_the_limit():
    with pytest.raises(PreferenceError) as caught:
        parse_tags("a, b, c, d", 3, 30)
    assert caught.value.key == "tags_too_many" and caught.value.values["max_tags"] == "3"
    with pytest.raises(PreferenceError) as caught:
        parse_tags("ok, " + "x" * 31, 5, 30)
    assert caught.value.key == "tag_too_long" and caught.value.values["max_length"] == "30"
    # Duplicates do not count against the limit; the length counts after folding.
    assert parse_tags("a, A, á, b", 2, 30) == ("a", "b")
    assert parse_tags("  " + "É" * 5 + "  ", 5, 5) == ("e" * 5,)


def test_parse_tags_survives_a_huge_hostile_input():
    with pytest.raises(PreferenceError):
        parse_tags(",".join(str(i) for i in range(20000)), 5, 30)
    with pytest.raises(PreferenceError):
        parse_tags("x" * 60000, 5, 30)


@pytest.mark.parametrize("raw, expected", [
    ("fr", "fr"), ("FR", "fr"), (" fr-CA ", "fr"), ("pt_BR", "pt"), ("zh-Hant-TW", "zh")])
def test_normalise_lang(raw, expected):
    assert normalise_lang(raw) == expected


@pytest.mark.parametrize("raw", ["french", "xx", "f", "", "12", "e n", "eng"])
def test_normalise_lang_refuses(raw):
    with pytest.raises(PreferenceError) as caught:
        normalise_lang(raw)
    assert caught.value.key == "lang_invalid"


# -- compatibility ------------------------------------------------------------------------------

def test_choosy_waiters_need_a_shared_tag():
    a, b, c = w("a", 1, {"cinema"}), w("b", 2, {"jazz"}), w("c", 3, {"jazz", "cinema"})
    assert not compatible(a, b)
    assert compatible(a, c) and compatible(b, c)


def test_an_open_waiter_only_meets_a_choosy_one_after_the_fallback():
    choosy, open_ = w("a", 1, {"cinema"}), w("b", 2)
    assert open_.flexible and not compatible(choosy, open_)
    assert compatible(Waiter(choosy.user_id, 1, choosy.tags, None, True), open_)


def test_language_is_a_preference_like_tags():
    fr, fr2, en = w("a", 1, lang="fr"), w("b", 2, lang="fr"), w("c", 3, lang="en")
    assert compatible(fr, fr2) and not compatible(fr, en)
    # Tags and language together: both must hold while choosy.
    assert not compatible(w("d", 4, {"jazz"}, "fr"), w("e", 5, {"jazz"}, "en"))
    assert not compatible(w("d", 4, {"jazz"}, "fr"), w("e", 5, {"jazz"}))
    assert compatible(w("d", 4, {"jazz"}, "fr"), w("e", 5, {"jazz", "cats"}, "fr"))


def test_a_flexible_waiter_still_respects_a_choosy_partner():
    flexible = w("a", 1, {"cats"}, flexible=True)
    assert not compatible(flexible, w("b", 2, {"jazz"}))
    assert compatible(flexible, w("b", 2, {"cats", "jazz"}))
    assert compatible(flexible, w("b", 2, {"jazz"}, flexible=True))


@given(waiters, waiters)
def test_compatibility_is_symmetric(a, b):
    assert compatible(a, b) == compatible(b, a)


@given(waiters, waiters)
def test_flexible_waiters_are_compatible_with_each_other(a, b):
    a = Waiter(a.user_id, a.seq, a.tags, a.lang, True)
    b = Waiter(b.user_id, b.seq, b.tags, b.lang, True)
    assert compatible(a, b) == (a.user_id != b.user_id)


@given(waiters, waiters)
def test_probes_find_exactly_the_compatible_waiters(me, other):
    """The SQL claim's index look-ups are complete and sound for the policy."""
    if other.user_id == me.user_id:
        return
    assert probe_matches(other, probes(me)) == compatible(me, other)


def test_blocked_and_recent_pairs_never_meet():
    a, b, c = w("a", 1), w("b", 2), w("c", 3)
    avoid = avoid_pairs([(b.user_id, a.user_id)])
    assert not compatible(a, b, avoid) and not compatible(b, a, avoid)
    assert compatible(a, c, avoid)
    assert [(x.user_id, y.user_id) for x, y in pair_up([a, b, c], avoid)] == [("@a:x", "@c:x")]
    assert pair_up([a, b], avoid) == []


# -- fairness -----------------------------------------------------------------------------------

def test_the_longest_waiting_compatible_partner_goes_first():
    me = w("me", 10, {"jazz"})
    queue = [w("late", 7, {"jazz"}), w("early", 3, {"jazz", "cats"}), w("other", 1, {"cats"})]
    assert choose_partner(me, queue).user_id == "@early:x"


def test_shared_tags_first_then_anyone_after_the_fallback():
    a, b = w("a", 1, {"cinema"}), w("b", 2, {"jazz"})
    c = w("c", 3, {"cinema"})
    assert [(x.user_id, y.user_id) for x, y in pair_up([a, b, c])] == [("@a:x", "@c:x")]
    b_late = Waiter(b.user_id, 2, b.tags, None, True)
    d = w("d", 4)
    assert pair_up([b, d]) == []
    assert len(pair_up([b_late, d])) == 1


@settings(max_examples=300)
@given(queues)
def test_pair_up_pairs_disjointly_and_leaves_no_compatible_pair(queue):
    pairs = pair_up(queue)
    paired = [x.user_id for pair in pairs for x in pair]
    assert len(paired) == len(set(paired))
    assert all(compatible(a, b) and a.seq < b.seq for a, b in pairs)
    left = [x for x in queue if x.user_id not in paired]
    assert not any(compatible(a, b) for a in left for b in left)


@settings(max_examples=300)
@given(queues)
def test_the_oldest_waiter_is_served_first(queue):
    """Nobody is overtaken: the oldest waiter with any compatible partner gets the oldest
    of them."""
    if not queue:
        return
    oldest = min(queue, key=lambda x: x.seq)
    pairs = pair_up(queue)
    partner = choose_partner(oldest, queue)
    if partner is None:
        assert all(oldest not in pair for pair in pairs)
    else:
        assert pairs[0] == (oldest, partner)


@settings(max_examples=300)
@given(queues, waiters)
def test_one_claim_per_newcomer_is_the_same_as_pairing_everyone(queue, newcomer):
    """What the bridge does (a claim when someone arrives) equals pair_up over the whole
    queue, when the queue held nobody who could be paired."""
    settled = [x for x in queue if x.user_id not in
               {y.user_id for pair in pair_up(queue) for y in pair}]
    me = Waiter("@new:x", 100_001, newcomer.tags, newcomer.lang, newcomer.flexible)
    partner = choose_partner(me, settled)
    expected = [] if partner is None else [(partner, me)]
    assert pair_up(settled + [me]) == expected


def serve_batch(newcomers: list[Waiter], queue: list[Waiter], avoid=avoid_nobody
                ) -> tuple[list[tuple[Waiter, Waiter | None]], int]:
    """The bridge's batched short cut (Matchmaker._find_partners) over a queue, with the
    database's look-up played by choose_partner (each newcomer as if alone, without the
    partners taken). Returns the pairs and how many look-ups it took."""
    def look_up(newcomer):
        return choose_partner(newcomer, [x for x in queue if x.user_id not in taken], avoid)
    decided, taken = [], set()
    pending = [(me, look_up(me)) for me in newcomers]
    lookups = len(newcomers)
    while pending:
        done, pending, again = accept_in_order(pending, taken)
        decided += done
        for i in again:
            pending[i] = (pending[i][0], look_up(pending[i][0]))
        lookups += len(again)
    return decided, lookups


def one_after_the_other(newcomers, queue, avoid=avoid_nobody):
    decided, left = [], list(queue)
    for me in newcomers:
        partner = choose_partner(me, left, avoid)
        left = [x for x in left if partner is None or x.user_id != partner.user_id]
        decided.append((me, partner))
    return decided


@settings(max_examples=300)
@given(queues, st.lists(waiters, max_size=8), st.sets(st.tuples(st.integers(0, 30),
                                                                st.integers(0, 30))))
def test_a_batch_of_newcomers_is_served_exactly_as_one_after_the_other(queue, batch, avoided):
    newcomers = [Waiter(f"@new{i}:x", 100_001 + i, x.tags, x.lang, x.flexible)
                 for i, x in enumerate(batch)]
    everyone = [x.user_id for x in queue + newcomers]
    avoid = avoid_pairs((everyone[a % len(everyone)], everyone[b % len(everyone)])
                        for a, b in avoided) if everyone else avoid_nobody
    decided, lookups = serve_batch(newcomers, queue, avoid)
    assert decided == one_after_the_other(newcomers, queue, avoid)
    assert lookups <= len(newcomers) * (1 + LOOK_AGAIN)


def test_newcomers_all_wanting_the_same_partners_are_looked_up_again_a_bounded_number_of_times():
    queue = [w(f"w{i}", i) for i in range(100)]
    newcomers = [Waiter(f"@new{i}:x", 1000 + i) for i in range(64)]
    decided, lookups = serve_batch(newcomers, queue)
    assert [p.user_id for _, p in decided] == [x.user_id for x in queue[:64]]
    assert lookups <= 64 * (1 + LOOK_AGAIN)  # not 64 * 65 / 2


def test_newcomers_after_a_clash_look_again_and_earlier_ones_keep_their_find():
    old, older_jazz = w("old", 1), w("oj", 2, ["jazz"], flexible=False)
    jazz = w("j", 3, ["jazz"], flexible=True)
    a, b, c, d = w("a", 10), w("b", 11, ["jazz"], flexible=False), w("c", 12), w("d", 13)
    taken: set[str] = set()
    # a and c both found `old`; b found older_jazz: a and b keep theirs, c looks again; d's
    # find (jazz) is kept until someone takes it.
    decided, left, again = accept_in_order([(a, old), (b, older_jazz), (c, old), (d, jazz)],
                                           taken)
    assert decided == [(a, old), (b, older_jazz)]
    assert left == [(c, old), (d, jazz)] and again == [0]
    assert taken == {old.user_id, older_jazz.user_id}
    # c's new find is d's: d looks again in turn.
    decided, left, again = accept_in_order([(c, jazz), (d, jazz)], taken)
    assert decided == [(c, jazz)] and left == [(d, jazz)] and again == [0]


def test_a_find_whose_row_changed_before_it_was_locked_is_nobody():
    choosy = w("choosy", 1, ["chess"], flexible=False)
    me = w("me", 10, ["jazz"], flexible=False)
    taken: set[str] = set()
    assert accept_in_order([(me, choosy)], taken) == ([(me, None)], [], [])
    assert taken == set()


@given(queues)
def test_once_everyone_is_flexible_nobody_starves(queue):
    flexible = [Waiter(x.user_id, x.seq, x.tags, x.lang, True) for x in queue]
    pairs = pair_up(flexible)
    assert len(flexible) - 2 * len(pairs) == len(flexible) % 2


# -- time ---------------------------------------------------------------------------------------

def test_fallback_timing():
    assert fallback_delay((), None, 10) == 0  # no preferences: anyone at once
    assert fallback_delay(("jazz",), None, 10) == 10
    assert fallback_delay((), "fr", 10) == 10
    assert not is_flexible(100.0, ("jazz",), None, 10, now=109.9)
    assert is_flexible(100.0, ("jazz",), None, 10, now=110.0)
    assert is_flexible(100.0, (), None, 10, now=100.0)
    assert is_flexible(100.0, ("jazz",), "fr", 0, now=100.0)


@given(st.floats(0, 1e6), st.floats(0, 3600), st.floats(0, 1e4))
def test_flexibility_only_grows_with_time(enqueued_at, fallback_after, later):
    now = enqueued_at + fallback_after
    assert is_flexible(enqueued_at, ("x",), None, fallback_after, now + later)


def test_cooldown():
    assert in_cooldown(ended_at=100.0, now=399.0, cooldown=300)
    assert not in_cooldown(ended_at=100.0, now=400.0, cooldown=300)
    assert not in_cooldown(ended_at=100.0, now=100.0, cooldown=0)


# -- what each side is told ---------------------------------------------------------------------

def test_shared_tags_and_unmet_preferences():
    a, b = w("a", 1, {"cinema", "jazz"}, "fr", True), w("b", 2, {"jazz", "cats"}, "en", True)
    assert shared_tags(a, b) == ("jazz",)
    assert unmet(a, b) == (False, True)
    assert unmet(a, w("c", 3, {"chess"}, "fr")) == (True, False)
    assert unmet(w("d", 4), b) == (False, False)


@pytest.mark.parametrize("shared, interests, language, expected", [
    ((), False, False, "You're now chatting with a random stranger. Say hi!"),
    (("cinema",), False, False,
     "You're now chatting with a random stranger. You both like: cinema."),
    ((), True, False,
     "No one shares your interests right now, so you're chatting with a random stranger."),
    (("jazz",), False, True, "No one who speaks your language is waiting right now, so you're "
                             "chatting with a random stranger. You both like: jazz."),
    ((), True, True, "No one shares your interests or your language right now, so you're "
                     "chatting with a random stranger."),
])
def test_opening_notice(shared, interests, language, expected):
    key, values = messages.chat_opened(shared, interests, language)
    assert messages.text(key, prefix="!", **values) == expected


@pytest.mark.parametrize("seconds, expected", [
    (0, "0 s"), (59.9, "59 s"), (60, "1 min"), (65, "1 min 5 s"), (3725, "1 h 2 min"),
    (7200, "2 h"), (3 * 86400, "3 days"), (-5, "0 s")])
def test_duration(seconds, expected):
    assert messages.render(messages.duration(seconds)) == expected


def test_accepts_is_what_each_side_asked_for():
    assert accepts(w("a", 1), w("b", 2, {"x"}))
    assert not accepts(w("a", 1, {"x"}), w("b", 2))
