"""An FP8 KV cache (--kv-cache-dtype): more tokens in the same memory, and attention
reads every key back from its code, however the step was cut. On a tiny random model
(no near-ties) batching, chunked prefill, prefix caching and preemption then leave
greedy output unchanged; on a real model a key computed a few ulps apart in another
batch shape can round to the neighbouring code (docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.llm import LLM, greedy

OUT = 12


@pytest.fixture(scope="module")
def folder(make_random_model: Callable[[str], Path]) -> Path:
    return make_random_model("llama")


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(3, 49152, (n,), generator=gen).tolist() for n in (5, 20, 37, 50, 30, 44)]


def test_fp8_cache_holds_four_times_an_fp32_caches_tokens(folder: Path) -> None:
    full = LLM(str(folder), kv_cache_memory=8 << 20, max_model_len=256)
    fp8 = LLM(str(folder), kv_cache_memory=8 << 20, max_model_len=256, kv_cache_dtype="fp8")
    assert fp8.engine.num_kv_blocks == 4 * full.engine.num_kv_blocks
    assert all(k.dtype == v.dtype == torch.float8_e4m3fn for k, v in fp8.engine.runner.kv_caches)
    # Attention really reads the codes: the same tokens, with other logprobs.
    prompt = _prompts()[3]
    results = [
        llm.generate([prompt], greedy(4, min_tokens=4, logprobs=1))[0] for llm in (full, fp8)
    ]
    first = [r.choices[0].logprobs[0] for r in results]
    assert first[0] != first[1]


@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "fp8_e5m2"])
def test_greedy_output_is_the_same_however_the_engine_schedules_it(
    folder: Path, kv_cache_dtype: str
) -> None:
    prompts = _prompts()
    params = greedy(OUT, min_tokens=OUT)
    alone = LLM(
        str(folder),
        kv_cache_dtype=kv_cache_dtype,
        block_size=8,
        num_kv_blocks=64,
        max_model_len=96,
        enable_prefix_caching=False,
    )
    reference = [alone.generate([p], params)[0].token_ids for p in prompts]
    # Batched, in chunks of 7 tokens, and 12 blocks of 8 cannot hold all six at once.
    squeezed = LLM(
        str(folder),
        kv_cache_dtype=kv_cache_dtype,
        block_size=8,
        num_kv_blocks=12,
        max_num_batched_tokens=7,
        max_model_len=96,
    )
    assert [r.token_ids for r in squeezed.generate(prompts, params)] == reference
    assert squeezed.engine.stats().num_preemptions > 0
    squeezed.generate([prompts[3]], params)
    again = squeezed.generate([prompts[3]], params)[0]  # its prompt's blocks, cached
    assert again.num_cached_tokens == 48
    assert again.token_ids == reference[3]
