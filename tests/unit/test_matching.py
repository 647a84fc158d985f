"""Who is paired with whom: oldest first, nobody twice, nobody with themselves."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.matching.policy import Waiter, compatible, pair_up


def waiters(*user_ids: str) -> list[Waiter]:
    return [Waiter(user_id, seq) for seq, user_id in enumerate(user_ids, start=1)]


def ids(pairs) -> list[tuple[str, str]]:
    return [(a.user_id, b.user_id) for a, b in pairs]


def test_empty_and_single_queues_make_no_pairs():
    assert pair_up([]) == []
    assert pair_up(waiters("@a:x")) == []


def test_pairs_in_arrival_order():
    assert ids(pair_up(waiters("@a:x", "@b:x", "@c:x", "@d:x"))) == [("@a:x", "@b:x"),
                                                                     ("@c:x", "@d:x")]


def test_arrival_order_is_seq_not_list_order():
    queue = [Waiter("@late:x", 30), Waiter("@first:x", 10), Waiter("@late2:x", 40),
             Waiter("@second:x", 20)]
    assert ids(pair_up(queue)) == [("@first:x", "@second:x"), ("@late:x", "@late2:x")]


def test_the_newest_is_the_odd_one_out():
    pairs = pair_up(waiters("@a:x", "@b:x", "@c:x"))
    assert ids(pairs) == [("@a:x", "@b:x")]


def test_never_pairs_a_user_with_themselves():
    assert not compatible(Waiter("@a:x", 1), Waiter("@a:x", 2))
    assert pair_up(waiters("@a:x", "@a:x")) == []
    assert ids(pair_up(waiters("@a:x", "@a:x", "@b:x"))) == [("@a:x", "@b:x")]


def test_a_user_listed_twice_is_paired_once():
    pairs = pair_up(waiters("@a:x", "@b:x", "@a:x", "@c:x"))
    assert ids(pairs) == [("@a:x", "@b:x")]


def check_pairs(queue: list[Waiter], pairs) -> None:
    in_queue = {id(w) for w in queue}
    paired = [w for pair in pairs for w in pair]
    # Pairs come from the queue, are disjoint, and no user appears twice or meets themselves.
    assert all(id(w) in in_queue for w in paired)
    assert len({id(w) for w in paired}) == len(paired)
    assert len({w.user_id for w in paired}) == len(paired)
    assert all(a.user_id != b.user_id for a, b in pairs)
    # The older of each pair comes first.
    assert all(a.seq < b.seq for a, b in pairs)


@given(st.lists(st.integers(min_value=0, max_value=10_000), unique=True, max_size=60),
       st.randoms(use_true_random=False))
def test_property_distinct_users(seqs, rnd):
    queue = [Waiter(f"@u{seq}:x", seq) for seq in seqs]
    rnd.shuffle(queue)
    pairs = pair_up(queue)
    check_pairs(queue, pairs)
    paired_users = {w.user_id for pair in pairs for w in pair}
    unpaired = [w for w in queue if w.user_id not in paired_users]
    assert len(unpaired) <= 1
    assert len(unpaired) == len(queue) % 2
    if len(queue) >= 2:
        oldest = min(queue, key=lambda w: w.seq)
        assert oldest.user_id in paired_users


@given(st.lists(st.tuples(st.sampled_from(["@a:x", "@b:x", "@c:x", "@d:x", "@e:x"]),
                          st.integers(min_value=0, max_value=1000)),
                unique_by=lambda t: t[1], max_size=30))
def test_property_users_may_appear_more_than_once(entries):
    queue = [Waiter(user_id, seq) for user_id, seq in entries]
    pairs = pair_up(queue)
    check_pairs(queue, pairs)
    distinct = {w.user_id for w in queue}
    paired_users = {w.user_id for pair in pairs for w in pair}
    # Pairing is maximal: at most one distinct user is left without a partner.
    assert len(distinct - paired_users) <= 1
    if len(distinct) >= 2:
        oldest = min(queue, key=lambda w: w.seq)
        assert oldest.user_id in paired_users
