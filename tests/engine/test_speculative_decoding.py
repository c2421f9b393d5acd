"""Speculative decoding changes how many steps an answer takes, never the answer.

Every test runs the same requests through an engine without speculation and
one with it, on one tiny random Llama, and compares tokens (and logprobs).
A random model does not repeat itself, so prompt lookup would rarely draft
anything; the engine's proposer is replaced by an oracle that drafts the
true continuation with one token in every few corrupted, so every step
verifies drafts that are all right, partly right, or wrong from the first.
Each test also checks that drafts were accepted, so none can pass by never
speculating. The real n-gram proposer is tested on its own and, against the
bundled model, on a prompt it can copy from.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.config import EngineConfig
from engine.llm import LLM, greedy
from engine.sampling_params import SamplingParams
from engine.speculative_config import SpeculativeConfig, SpeculativeConfigError

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}


@pytest.fixture(scope="module")
def model_dir(make_random_model: Callable[[str], Path]) -> Path:
    return make_random_model("llama")


@pytest.fixture(scope="module")
def plain(model_dir: Path) -> LLM:
    return LLM(str(model_dir), max_model_len=256)


@pytest.fixture(scope="module")
def speculative(model_dir: Path) -> LLM:
    return LLM(str(model_dir), max_model_len=256, speculative_config=NGRAM)


def prompts() -> list[list[int]]:
    """Token prompts with repeats in them (what prompt lookup feeds on) and without."""
    motif = [1500, 2300, 3100, 4700, 5200]
    return [
        motif * 4 + [600, 700],
        [9000 + i for i in range(12)],
        [42, 43] * 10,
        [*motif, 8000, 8001, 8002, *motif[:3]],
        [17],
    ]


class OracleProposer:
    """Drafts the continuation the plain engine produced, corrupting one draft in
    `period` (by position), so acceptance stops early at varying places."""

    def __init__(self, answers: list[list[int]], period: int = 5) -> None:
        self.answers = answers
        self.period = period

    def propose(self, token_ids: list[int], num_tokens: int, owner: object = None) -> list[int]:
        for answer in self.answers:
            if answer[: len(token_ids)] == token_ids:
                drafts = answer[len(token_ids) : len(token_ids) + num_tokens]
                return [
                    (t + 1) % 49152 if (len(token_ids) + i) % self.period == 0 else t
                    for i, t in enumerate(drafts)
                ]
        return []


def run(llm: LLM, params: SamplingParams | list[SamplingParams]) -> list[Any]:
    return [c for r in llm.generate(prompts(), params) for c in r.choices]


def run_both(
    plain: LLM, speculative: LLM, params: SamplingParams | list[SamplingParams]
) -> tuple[list[Any], list[Any]]:
    """(plain, speculative) choices, the speculative engine drafting by the oracle."""
    expected = run(plain, params)
    speculative.engine.proposer = OracleProposer(
        [[*p, *c.token_ids] for p, c in zip(prompts(), expected, strict=True)]
    )
    return expected, run(speculative, params)


def accepted(llm: LLM) -> int:
    return llm.engine.stats().spec_accepted_tokens


def test_greedy_output_is_the_same_and_drafts_are_accepted(plain: LLM, speculative: LLM) -> None:
    before = speculative.engine.stats()
    expected, got = run_both(plain, speculative, greedy(48))
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    assert [c.text for c in got] == [c.text for c in expected]
    stats = speculative.engine.stats()
    drafted = stats.spec_draft_tokens - before.spec_draft_tokens
    taken = stats.spec_accepted_tokens - before.spec_accepted_tokens
    assert 0 < taken < drafted  # some drafts accepted, the corrupted ones not


def test_penalties_logprobs_and_stops_see_the_same_history(plain: LLM, speculative: LLM) -> None:
    """Each draft position is scored with the drafts before it as output: penalties,
    min_tokens and logprobs come out as if the tokens had been decoded one by one."""
    reference = run(plain, greedy(40))
    stop_token = reference[0].token_ids[20]
    params = greedy(
        40,
        repetition_penalty=1.2,
        frequency_penalty=0.3,
        presence_penalty=0.2,
        logprobs=2,
        min_tokens=5,
        stop_token_ids=[stop_token],
        logit_bias={reference[2].token_ids[3]: -2.0},
    )
    before = accepted(speculative)
    expected, got = run_both(plain, speculative, params)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    assert [c.finish_reason for c in got] == [c.finish_reason for c in expected]
    for ours, theirs in zip(got, expected, strict=True):
        assert [lp.token_id for lp in ours.logprobs] == [lp.token_id for lp in theirs.logprobs]
        for a, b in zip(ours.logprobs, theirs.logprobs, strict=True):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
            assert [t for t, _ in a.top] == [t for t, _ in b.top]
    assert accepted(speculative) > before


def test_a_stop_string_inside_accepted_drafts_ends_there(plain: LLM, speculative: LLM) -> None:
    first = run(plain, greedy(40))[2]
    stop = first.text[len(first.text) // 2 : len(first.text) // 2 + 3]
    before = accepted(speculative)
    # The oracle drafts past the stop: the tokens after it must not come out.
    speculative.engine.proposer = OracleProposer([[*prompts()[2], *first.token_ids]], 1000)
    expected = plain.generate([prompts()[2]], greedy(40, stop=[stop]))[0].choices[0]
    got = speculative.generate([prompts()[2]], greedy(40, stop=[stop]))[0].choices[0]
    assert (got.text, got.token_ids, got.finish_reason, got.stop_reason) == (
        expected.text,
        expected.token_ids,
        "stop",
        stop,
    )
    assert accepted(speculative) > before


def test_sampled_rows_are_not_drafted_and_keep_their_seeded_output(
    plain: LLM, speculative: LLM
) -> None:
    mixed = [
        greedy(32) if i % 2 else SamplingParams(temperature=0.9, seed=7 + i, max_tokens=32)
        for i in range(len(prompts()))
    ]
    before = accepted(speculative)
    expected, got = run_both(plain, speculative, mixed)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    assert accepted(speculative) > before  # the greedy rows still speculated


def test_chunked_prefill_preemption_and_prefix_caching_keep_the_output(
    plain: LLM, model_dir: Path
) -> None:
    squeezed = LLM(
        str(model_dir),
        max_model_len=128,
        num_kv_blocks=40,  # 160 tokens: the 5 answers need about 310
        block_size=4,
        max_num_batched_tokens=16,
        speculative_config=NGRAM,
    )
    reference, got = run_both(plain, squeezed, greedy(48))
    expected = [c.token_ids for c in reference]
    assert [c.token_ids for c in got] == expected
    # Again: the prompts' blocks now come from the prefix cache.
    assert [c.token_ids for c in run(squeezed, greedy(48))] == expected
    stats = squeezed.engine.stats()
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    assert stats.spec_accepted_tokens > 0


def test_max_tokens_and_the_context_bound_the_drafts(plain: LLM, speculative: LLM) -> None:
    before = speculative.engine.stats().spec_draft_tokens
    for limit in (1, 2, 3, 7):
        expected, got = run_both(plain, speculative, greedy(limit))
        assert [c.token_ids for c in got] == [c.token_ids for c in expected]
        assert all(len(c.token_ids) <= limit for c in got)
    # max_tokens 1 leaves no room for a draft; 2 at most one, and so on.
    assert speculative.engine.stats().spec_draft_tokens > before
    long_prompt = [1500, 2300, 3100] * 83  # 249 tokens of a 256-token context
    want = plain.generate([long_prompt], greedy(None))[0].choices[0]
    speculative.engine.proposer = OracleProposer([[*long_prompt, *want.token_ids]], 1000)
    got_long = speculative.generate([long_prompt], greedy(None))[0].choices[0]
    assert got_long.token_ids == want.token_ids and got_long.finish_reason == "length"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"method": "eagle"}', "not supported"),
        ('{"num_speculative_tokens": 0}', "at least 1"),
        ('{"prompt_lookup_min": 5, "prompt_lookup_max": 2}', "prompt_lookup_min"),
        ('{"draft_model": "x"}', "unknown"),
        ('{"num_speculative_tokens": "4"}', "integer"),
        ("not json", "not JSON"),
    ],
)
def test_a_bad_config_says_what_is_wrong(value: str, message: str) -> None:
    with pytest.raises(SpeculativeConfigError, match=message):
        SpeculativeConfig.parse(value)


def test_the_config_takes_vllm_json_and_fills_the_other_bound() -> None:
    config = EngineConfig(speculative_config='{"method": "ngram", "prompt_lookup_max": 3}')
    assert config.speculative_config == SpeculativeConfig(prompt_lookup_max=3, prompt_lookup_min=2)
    assert SpeculativeConfig.parse({"prompt_lookup_min": 6}).prompt_lookup_max == 6


SENTENCE = (
    "The quick brown fox jumps over the lazy dog near the river bank, "
    "and the old cat sleeps on the warm red mat by the door."
)
COPY_TASK = [{"role": "user", "content": f"Repeat after me, word for word: {SENTENCE}"}]


def test_prompt_lookup_drafts_from_the_prompt_on_the_bundled_model(
    bundled_llm: LLM, bundled_model_dir: Path
) -> None:
    """The real proposer, on a real model copying from its prompt: the same greedy text,
    in fewer steps (most of the copied tokens arrive as accepted drafts)."""
    speculative = LLM(
        str(bundled_model_dir),
        max_model_len=512,
        speculative_config={"method": "ngram", "num_speculative_tokens": 5},
    )
    expected = bundled_llm.chat(COPY_TASK, greedy(60))[0].choices[0]
    got = speculative.chat(COPY_TASK, greedy(60))[0].choices[0]
    assert got.token_ids == expected.token_ids
    assert "lazy dog" in got.text
    stats = speculative.engine.stats()
    assert stats.spec_accepted_tokens >= len(got.token_ids) // 3, stats


class WrongProposer:
    """Drafts that are never right: the cost case the engine backs off from."""

    def __init__(self) -> None:
        self.calls = 0

    def propose(self, token_ids: list[int], num_tokens: int, owner: object = None) -> list[int]:
        self.calls += 1
        return [0] * num_tokens  # token 0 never comes out of this model's greedy runs


def test_drafting_backs_off_where_every_draft_is_rejected(plain: LLM, speculative: LLM) -> None:
    wrong = WrongProposer()
    speculative.engine.proposer = wrong
    before = speculative.engine.stats()
    expected = run(plain, greedy(64))
    got = run(speculative, greedy(64))
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    stats = speculative.engine.stats()
    assert stats.spec_accepted_tokens == before.spec_accepted_tokens
    # Pauses of 2, 4, 8, 16, 16... tokens: about 7 proposals per 64-token answer, not 63.
    assert wrong.calls <= 9 * len(prompts())


def test_blocks_filled_by_accepted_drafts_serve_a_later_prompt(plain: LLM, model_dir: Path) -> None:
    """A follow-up whose prompt is the first answer reads the blocks accepted drafts
    filled from the prefix cache: they must hold exactly those tokens' KV."""
    engine = LLM(str(model_dir), max_model_len=256, block_size=4, speculative_config=NGRAM)
    first_expected, first = run_both(plain, engine, greedy(40))
    assert [c.token_ids for c in first] == [c.token_ids for c in first_expected]
    follow_ups = [[*p, *c.token_ids, 77] for p, c in zip(prompts(), first, strict=True)]
    hits_before = engine.engine.stats().prefix_cache_hits
    engine.engine.proposer = OracleProposer([])  # no drafts: only the cache is under test
    expected = [r.choices[0].token_ids for r in plain.generate(follow_ups, greedy(16))]
    got = [r.choices[0].token_ids for r in engine.generate(follow_ups, greedy(16))]
    assert got == expected
    # Most of each answer's blocks were hits (whole 4-token blocks of prompt + answer).
    assert engine.engine.stats().prefix_cache_hits - hits_before >= 150


def test_n_siblings_prompt_logprobs_and_eos_inside_the_drafts(plain: LLM, speculative: LLM) -> None:
    prompt = prompts()[0]
    reference = plain.generate([prompt], greedy(30))[0].choices[0].token_ids
    eos = plain.engine.eos_token_ids
    params = greedy(30, n=2, prompt_logprobs=1, logit_bias={min(eos): 8.0}, min_tokens=6)
    expected = plain.generate([prompt], params)[0]
    speculative.engine.proposer = OracleProposer(
        [[*prompt, *c.token_ids, *reference] for c in expected.choices], 1000
    )
    before = speculative.engine.stats()
    got = speculative.generate([prompt], params)[0]
    assert [c.token_ids for c in got.choices] == [c.token_ids for c in expected.choices]
    assert [c.finish_reason for c in got.choices] == [c.finish_reason for c in expected.choices]
    assert got.prompt_logprobs is not None and expected.prompt_logprobs is not None
    assert len(got.prompt_logprobs) == len(expected.prompt_logprobs)
    after = speculative.engine.stats()
    # Drafts past an EOS are neither emitted nor counted as accepted.
    accepted = after.spec_accepted_tokens - before.spec_accepted_tokens
    assert 0 < accepted <= sum(len(c.token_ids) for c in got.choices)


def test_unseeded_sampled_rows_are_drafted_and_sample_as_without_drafts(
    plain: LLM, speculative: LLM
) -> None:
    """Speculative sampling keeps a random row's distribution; at a temperature low enough
    that the tiny model's choice is certain, that means its greedy answer exactly, with
    drafts kept (the oracle's right ones) and rejected (its corrupted ones)."""
    cold = SamplingParams(temperature=0.001, max_tokens=32)
    before = speculative.engine.stats()
    expected, got = run_both(plain, speculative, greedy(32))
    speculative.engine.proposer = OracleProposer(
        [[*p, *c.token_ids] for p, c in zip(prompts(), expected, strict=True)]
    )
    got = run(speculative, cold)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    stats = speculative.engine.stats()
    drafted = stats.spec_draft_tokens - before.spec_draft_tokens
    kept = stats.spec_accepted_tokens - before.spec_accepted_tokens
    assert 0 < kept < drafted
