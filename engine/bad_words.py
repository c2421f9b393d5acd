"""vLLM's `bad_words`: words the output must never contain, as token sequences.

A word can start a new word (after a space) or sit mid-text, and tokenizers spell the
two differently, so each word is tokenized as it is written (leading spaces removed)
and, where that spells it differently, with one leading space. vLLM adds the spaced
spelling only when it has as many tokens as the plain one, so " Schwarzenegger"
(3 tokens, against 4) gets through there; here every spelling is banned, which is
what a list of bad words asks for. The sampler then bans a sequence's last token
wherever the output so far ends with the tokens before it (`banned_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol


class _Encoder(Protocol):
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...


def bad_words_token_ids(tokenizer: _Encoder, words: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Every token spelling of `words` to ban, without duplicates, in a stable order."""
    found: list[tuple[int, ...]] = []
    for word in words:
        bare = word.lstrip()
        if not bare:
            continue
        plain = tuple(tokenizer.encode(bare, add_special_tokens=False))
        spaced = tuple(tokenizer.encode(" " + bare, add_special_tokens=False))
        for ids in (plain, spaced):
            if ids and ids not in found:
                found.append(ids)
    return tuple(found)


def banned_tokens(
    sequences: tuple[tuple[int, ...], ...], output_token_ids: Sequence[int]
) -> set[int]:
    """The tokens that would complete one of `sequences` right after `output_token_ids`:
    a lookup per distinct prefix length, not a loop over every word, each step."""
    banned: set[int] = set()
    end = len(output_token_ids)
    for length, last_tokens in _by_prefix(sequences).items():
        if end >= length:
            banned |= last_tokens.get(tuple(output_token_ids[end - length :]), frozenset())
    return banned


@lru_cache(maxsize=1024)
def _by_prefix(
    sequences: tuple[tuple[int, ...], ...],
) -> dict[int, dict[tuple[int, ...], frozenset[int]]]:
    """prefix length -> prefix -> the last tokens that complete a word after it."""
    index: dict[int, dict[tuple[int, ...], set[int]]] = {}
    for ids in sequences:
        index.setdefault(len(ids) - 1, {}).setdefault(ids[:-1], set()).add(ids[-1])
    return {n: {p: frozenset(t) for p, t in by.items()} for n, by in index.items()}
