"""vLLM's `bad_words`: words the output must never contain, as token sequences.

A word can start a new word (after a space) or sit mid-text, and tokenizers spell the
two differently, so each word is tokenized as it is written (leading spaces removed)
and, where that spells it differently, with one leading space, as vLLM does. The
sampler then bans a sequence's last token wherever the output so far ends with the
tokens before it (`banned_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence
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
    sequences: Sequence[tuple[int, ...]], output_token_ids: Sequence[int]
) -> set[int]:
    """The tokens that would complete one of `sequences` right after `output_token_ids`."""
    banned: set[int] = set()
    end = len(output_token_ids)
    for ids in sequences:
        prefix = ids[:-1]
        if end >= len(prefix) and tuple(output_token_ids[end - len(prefix) :]) == prefix:
            banned.add(ids[-1])
    return banned
