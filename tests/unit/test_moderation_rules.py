"""Moderation's pure rules: report weights, the auto-suspension threshold, escalation,
durations, names, the evidence text and the statement of reasons."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bridge.i18n import messages
from bridge.moderation import rules
from bridge.moderation.restriction import Restriction, strictest
from bridge.moderation.rules import ModerationInputError, ReporterStanding
from bridge.moderation.statement import statement_values

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


def honest(name: str, chats: int = 10, filed: int = 1, reported_by: int = 0) -> ReporterStanding:
    return ReporterStanding(name, reported_by, filed, chats)


def test_an_ordinary_reporter_counts_fully():
    assert rules.report_weight(honest("a")) == 1.0
    # One report against them (a mistake, or retaliation) costs nothing.
    assert rules.report_weight(honest("a", reported_by=1)) == 1.0


def test_a_reporter_reported_by_several_counts_one_over_n():
    assert rules.report_weight(honest("a", reported_by=2)) == 0.5
    assert rules.report_weight(honest("a", reported_by=4)) == 0.25


def test_a_reporter_who_reports_nearly_everyone_counts_less():
    assert rules.report_weight(honest("a", chats=10, filed=5)) == 1.0  # half: still fine
    assert rules.report_weight(honest("a", chats=10, filed=10)) == 0.5
    assert rules.report_weight(honest("a", chats=10, filed=8)) == pytest.approx(0.625)
    # Too few chats to judge: three reports in three chats is not "everyone".
    assert rules.report_weight(honest("a", chats=3, filed=3)) == 1.0


def test_a_suspended_or_banned_reporter_counts_nothing():
    assert rules.report_weight(ReporterStanding("a", 0, 1, 10, restricted=True)) == 0.0


def test_both_reductions_multiply():
    both = honest("a", chats=10, filed=10, reported_by=3)
    assert rules.report_weight(both) == pytest.approx(1 / 6)


def test_threshold_counts_distinct_reporters():
    two = [honest("a"), honest("b")]
    assert not rules.should_auto_suspend(two, 3, chats=3, min_share=0.33)
    assert not rules.should_auto_suspend(two + [honest("a")], 3, 3, 0.33)  # "a" again: two
    assert rules.should_auto_suspend(two + [honest("c")], 3, 3, 0.33)


def test_reports_must_be_a_share_of_the_users_chats():
    three = [honest("a"), honest("b"), honest("c")]
    assert rules.should_auto_suspend(three, 3, chats=9, min_share=0.33)
    # Three mistaken reports among many chats are not enough on their own.
    assert not rules.should_auto_suspend(three, 3, chats=10, min_share=0.33)
    assert rules.should_auto_suspend(three, 3, chats=100, min_share=0)


def test_threshold_with_weighed_reporters():
    spammers = [honest(f"s{i}", chats=10, filed=10, reported_by=3) for i in range(6)]
    assert rules.reports_weight(spammers) == pytest.approx(1.0)
    assert not rules.should_auto_suspend(spammers, 3, 7, 0.33)
    assert not rules.should_auto_suspend(spammers + [honest("a")], 3, 7, 0.33)
    # Exact sums reach the threshold despite rounding.
    thirds = [honest(f"t{i}", reported_by=3) for i in range(9)]
    assert rules.should_auto_suspend(thirds, 3, 9, 0.33)


def test_automatic_suspensions_escalate_and_are_capped():
    base = 86400
    assert [rules.auto_suspension_seconds(base, n) for n in range(4)] == [
        base, 2 * base, 4 * base, 8 * base]
    assert rules.auto_suspension_seconds(base, 10) == rules.MAX_AUTO_SUSPENSION
    assert rules.auto_suspension_seconds(base, 10 ** 6) == rules.MAX_AUTO_SUSPENSION


@pytest.mark.parametrize("text, seconds", [
    ("30m", 1800), ("30min", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600),
    ("1h30m", 5400), ("90s", 90), ("1D", 86400),
])
def test_durations(text, seconds):
    assert rules.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["forever", "Permanent", "never"])
def test_forever(text):
    assert rules.parse_duration(text) is None


@pytest.mark.parametrize("text", ["", "0d", "soon", "7", "d7", "7d x", "-3h", "7y"])
def test_bad_durations_are_named(text):
    with pytest.raises(ModerationInputError) as caught:
        rules.parse_duration(text)
    assert caught.value.key == "mod_bad_duration"
    assert not rules.looks_like_duration(text)


def test_user_ids_and_servers():
    assert rules.user_id("@ann:hs.example") == "@ann:hs.example"
    assert rules.user_id("@ann:[::1]:8448") == "@ann:[::1]:8448"
    for bad in ("ann", "@ann", "ann:hs", "@a b:hs"):
        with pytest.raises(ModerationInputError):
            rules.user_id(bad)
    assert rules.server_name("HS.Example:8448") == "hs.example:8448"
    with pytest.raises(ModerationInputError):
        rules.server_name("not a server")
    assert rules.server_of("@ann:HS.example:8448") == "hs.example:8448"


def test_evidence_text_numbers_cuts_and_bounds():
    assert rules.evidence_text([]) == "(no messages)"
    assert rules.evidence_text(["hi", "a\nb"]) == "1. hi\n2. a b"
    long = rules.evidence_text(["x" * 5000], line_chars=100)
    assert long == "1. " + "x" * 100 + "…"
    many = rules.evidence_text(["y" * 100] * 50, total_chars=1000)
    assert len(many) < 1100 and many.endswith("more not shown)")


def test_strictest_prefers_permanent_then_longest():
    short = Restriction("suspended", "a", NOW + timedelta(hours=1), "automatic")
    long = Restriction("suspended", "b", NOW + timedelta(days=1), "moderator")
    ever = Restriction("banned", "c", None, "moderator")
    expired = Restriction("banned", "d", NOW - timedelta(seconds=1), "moderator")
    assert strictest([short, long], NOW) == long
    assert strictest([short, None, ever, long], NOW) == ever
    assert strictest([expired, None], NOW) is None


def test_statement_of_reasons_says_what_why_until_and_how():
    timed = Restriction("suspended", "spam links", datetime(2026, 12, 5, 9, 30,
                                                           tzinfo=timezone.utc), "automatic")
    text = messages.text("restricted", prefix="!", **statement_values(timed))
    assert "your account is suspended until 2026-12-05 09:30 UTC" in text
    assert "Reason: spam links" in text
    assert "decided automatically" in text and "review" in text
    ever = Restriction("server_banned", "", None, "moderator")
    text = messages.text("restricted", prefix="!", **statement_values(ever))
    assert "your homeserver is banned from this bridge permanently" in text
    assert "(no reason given)" in text and "decided by a moderator" in text
    # Every kind and source the shared Restriction allows has its words.
    for kind in ("suspended", "banned", "server_banned", "server_not_allowed"):
        for source in ("moderator", "automatic", "policy_list", "config"):
            statement_values(Restriction(kind, "r", None, source))
