"""bad_words: every spelling of a word is found, and only a completed word is banned."""

from __future__ import annotations

from engine.bad_words import bad_words_token_ids, banned_tokens

SPELLINGS = {
    "cat": [10],
    " cat": [11],
    "Paris": [20, 21],
    " Paris": [22],
    "ok": [30],
    " ok": [30],  # a tokenizer whose spelling does not change: no duplicate
}


class SpellingTokenizer:
    """Spells a few words the way BPE tokenizers do: differently after a space."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert not add_special_tokens
        return SPELLINGS[text]


def test_each_word_is_banned_as_written_and_after_a_space() -> None:
    ids = bad_words_token_ids(SpellingTokenizer(), ["cat", "  Paris", "ok", "   "])
    assert ids == ((10,), (11,), (20, 21), (22,), (30,))


def test_a_token_is_banned_only_where_it_would_complete_a_word() -> None:
    words = ((20, 21), (11,))
    assert banned_tokens(words, []) == {11}
    assert banned_tokens(words, [5, 20]) == {11, 21}
    assert banned_tokens(words, [20, 5]) == {11}
    longer = ((1, 2, 3),)
    assert banned_tokens(longer, [2]) == set()
    assert banned_tokens(longer, [9, 1, 2]) == {3}
