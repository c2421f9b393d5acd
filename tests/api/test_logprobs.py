"""OpenAI's logprobs shapes built from token ids with the bundled tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.logprobs import CompletionLogprobBuilder
from conveyor.protocol import TokenLogprob
from engine.tokenizer import Tokenizer

TEXTS = ["plain words here", "snow ☃ and 😀 and 日本語 done", "😀😀😀"]


@pytest.fixture(scope="module")
def tokenizer(bundled_model_dir: Path) -> Tokenizer:
    return Tokenizer.load(bundled_model_dir)


def _offsets(tokenizer: Tokenizer, ids: list[int], cut: int) -> list[int]:
    """text_offset for `ids`, built in two pieces as a stream builds it."""
    builder = CompletionLogprobBuilder(tokenizer, top_n=0)
    lps = [TokenLogprob(token_id=i, logprob=-1.0, rank=1, top=[]) for i in ids]
    out = builder.build(ids[:cut], lps[:cut])
    return builder.build(ids[cut:], lps[cut:], into=out).text_offset


@pytest.mark.parametrize("text", TEXTS)
def test_text_offset_counts_characters_of_the_text(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    offsets = _offsets(tokenizer, ids, len(ids) // 2)
    for index, offset in enumerate(offsets):
        before = b"".join(tokenizer.token_bytes(i) for i in ids[:index])
        # A token inside a character points at that character's start.
        assert offset == len(before.decode("utf-8", errors="ignore"))
        assert text[:offset] == before.decode("utf-8", errors="ignore")


def test_tokens_that_split_a_character_share_its_offset(tokenizer: Tokenizer) -> None:
    text = "😀😀😀"
    ids = tokenizer.encode(text)
    partial = [tokenizer.token_bytes_repr(i).startswith("bytes:") for i in ids]
    assert any(partial), "the test needs a token that is part of a character"
    offsets = _offsets(tokenizer, ids, 1)
    assert offsets[-1] < len(text)  # 'bytes:\\xf0\\x9f' labels would have run past the end
    assert sorted(set(offsets)) == [0, 1, 2]
