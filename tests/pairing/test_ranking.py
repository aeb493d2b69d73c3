"""The fairness order of the blast, as a pure function."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

from halobestie.pairing.ranking import Contender, rank

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def ago(minutes: int) -> datetime:
    return T0 - timedelta(minutes=minutes)


def test_least_loaded_come_first_whatever_their_idle_time() -> None:
    contenders = [
        Contender("busy-but-idle", 1, ago(600)),
        Contender("free-just-active", 0, ago(1)),
        Contender("busier", 2, None),
    ]

    assert rank(contenders, 3, random.Random(1)) == ["free-just-active", "busy-but-idle", "busier"]


def test_among_equal_load_the_longest_idle_comes_first_and_never_active_before_all() -> None:
    contenders = [
        Contender("recent", 0, ago(1)),
        Contender("never", 0, None),
        Contender("oldest", 0, ago(300)),
        Contender("middle", 0, ago(60)),
    ]

    for seed in range(20):
        assert rank(contenders, 4, random.Random(seed)) == ["never", "oldest", "middle", "recent"]


def test_limit_keeps_the_fairest_and_tolerates_fewer_contenders() -> None:
    contenders = [Contender(f"m{i}", 0, ago(i)) for i in range(6)]

    assert rank(contenders, 2, random.Random(0)) == ["m5", "m4"]
    assert rank(contenders[:1], 5) == ["m0"]
    assert rank([], 5) == []
    assert rank(contenders, 0) == []


def test_ties_are_broken_at_random_and_only_ties() -> None:
    tied = [Contender(f"tie{i}", 0, None) for i in range(3)]
    contenders = [*tied, Contender("loaded", 1, None), Contender("active", 0, ago(5))]
    firsts: Counter[str] = Counter()

    for seed in range(300):
        order = rank(contenders, 5, random.Random(seed))
        assert set(order[:3]) == {"tie0", "tie1", "tie2"}
        assert order[3:] == ["active", "loaded"]
        firsts[order[0]] += 1

    # Every tied mitra gets to be first, none is favoured by input order.
    assert set(firsts) == {"tie0", "tie1", "tie2"}
    assert min(firsts.values()) > 50


def test_the_default_randomness_still_respects_the_order() -> None:
    contenders = [Contender("b", 1, None), Contender("a", 0, None)]

    assert rank(contenders, 2) == ["a", "b"]
