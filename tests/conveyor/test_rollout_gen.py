"""Gens of operator calls: a later call's gen covers an earlier one's, another epoch none."""

from __future__ import annotations

from conveyor.rollout_gen import covers, next_gen


def test_gens_count_up_within_an_epoch_and_cover_the_ones_before() -> None:
    first = next_gen(None)
    second = next_gen(first)
    assert first.split(":")[0] == second.split(":")[0]
    assert (first.endswith(":1"), second.endswith(":2")) == (True, True)
    assert covers(second, first) and covers(first, first)
    assert not covers(first, second)


def test_another_epoch_or_no_gen_covers_nothing() -> None:
    ours = next_gen(None)
    other = next_gen(next_gen(None))  # a Redis that lost the key starts a new epoch
    assert not covers(other, ours)
    assert not covers(None, ours) and not covers("garbage", ours)
    assert next_gen("garbage").endswith(":1")
