"""cache_salt: cached prompt blocks are shared only between requests with the same salt."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engine.llm import LLM, greedy

PROMPT = list(range(200, 240))  # 40 tokens: 2 full blocks of 16 can be cached


@pytest.fixture(scope="module")
def llm(make_random_model: Callable[[str], Path]) -> LLM:
    return LLM(str(make_random_model("llama")), num_kv_blocks=64, max_model_len=128)


def run(llm: LLM, salt: str | None, request_id: str) -> tuple[list[int], int]:
    """The greedy tokens and the prompt tokens found cached, for PROMPT under `salt`."""
    engine = llm.engine
    engine.add_request(request_id, PROMPT, greedy(6, min_tokens=6), cache_salt=salt)
    tokens: list[int] = []
    cached = -1
    while engine.has_unfinished():
        for out in engine.step():
            tokens += out.outputs[0].token_ids
            cached = out.num_cached_tokens
    return tokens, cached


def test_equal_prompts_share_blocks_only_under_the_same_salt(llm: LLM) -> None:
    first, cached = run(llm, "tenant-a", "a-1")
    assert cached == 0
    # Another salt, and no salt: the blocks are there, but not theirs to read.
    assert run(llm, "tenant-b", "b-1") == (first, 0)
    assert run(llm, None, "none-1") == (first, 0)
    # The same salt again, and no salt again: each finds its own blocks.
    assert run(llm, "tenant-a", "a-2") == (first, 32)
    assert run(llm, None, "none-2") == (first, 32)
