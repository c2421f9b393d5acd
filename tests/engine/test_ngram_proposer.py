"""Prompt-lookup drafts."""

from __future__ import annotations

from engine.ngram_proposer import NgramProposer


def test_the_tokens_after_the_latest_earlier_match_are_proposed() -> None:
    proposer = NgramProposer(lookup_min=1, lookup_max=3)
    # "1 2 3" occurred twice before the final "1 2 3"; the later one (followed by 7 8) wins.
    tokens = [1, 2, 3, 4, 5, 1, 2, 3, 7, 8, 9, 1, 2, 3]
    assert proposer.propose(tokens, 2) == [7, 8]
    assert proposer.propose(tokens, 10) == [7, 8, 9, 1, 2, 3]  # up to the end, not past


def test_longer_suffixes_are_tried_first() -> None:
    proposer = NgramProposer(lookup_min=1, lookup_max=2)
    # The 2-gram "5 6" matched at 0 (-> 7), the 1-gram "6" more recently at 4 (-> 9).
    assert proposer.propose([5, 6, 7, 0, 6, 9, 5, 6], 1) == [7]


def test_no_match_shorter_than_the_minimum_or_no_room_proposes_nothing() -> None:
    proposer = NgramProposer(lookup_min=2, lookup_max=3)
    assert proposer.propose([1, 2, 3, 4, 5], 3) == []  # no repeated bigram
    assert proposer.propose([4, 9, 4], 3) == []  # only a unigram repeats
    assert proposer.propose([1, 2, 1, 2], 0) == []
    assert proposer.propose([1, 2], 3) == []
    assert proposer.propose([1, 2, 1, 2], 3) == [1, 2]


def test_a_sequence_s_cached_array_follows_it_as_it_grows() -> None:
    proposer = NgramProposer(lookup_min=1, lookup_max=3)

    class Owner:
        pass

    owner, tokens = Owner(), [5, 6, 7, 8]
    for step in range(40):
        tokens.append((step * 7) % 11)
        assert proposer.propose(tokens, 3, owner=owner) == proposer.propose(tokens, 3)
    other = Owner()  # a new sequence gets its own array
    assert proposer.propose([1, 2, 1], 2, owner=other) == [2, 1]
