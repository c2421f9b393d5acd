"""Sampler semantics: masks, penalties, seeding and logprobs, checked against hand computations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine import sampler as sampler_module
from engine.sampler import (
    Sampler,
    SamplingBatch,
    TokenLogprobs,
    _inverse_cdf,
    process_logits,
    prompt_logprobs,
    sampling_probs,
)
from engine.sampling_params import SamplingParamError, SamplingParams
from engine.structured_output import StructuredOutput

NEG_INF = float("-inf")


def make_batch(
    params: Sequence[SamplingParams],
    *,
    prompts: Sequence[Sequence[int]] | None = None,
    outputs: Sequence[Sequence[int]] | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    eos: frozenset[int] = frozenset(),
) -> SamplingBatch:
    n = len(params)
    return SamplingBatch(
        params=list(params),
        prompt_token_ids=list(prompts) if prompts is not None else [[] for _ in range(n)],
        output_token_ids=list(outputs) if outputs is not None else [[] for _ in range(n)],
        generators=list(generators) if generators is not None else [None] * n,
        eos_token_ids=eos,
    )


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- top-k / top-p / min-p masks ---------------------------------------------------------------

# Known probabilities, deliberately not sorted by token id so the un-sort is exercised.
KNOWN = torch.tensor([0.10, 0.50, 0.15, 0.25])
KNOWN_LOGITS = KNOWN.log()


@pytest.mark.parametrize(
    ("params", "kept"),
    [
        (SamplingParams(), {0, 1, 2, 3}),
        (SamplingParams(top_k=2), {1, 3}),
        (SamplingParams(top_k=4), {0, 1, 2, 3}),  # k == vocab: disabled
        (SamplingParams(top_k=-1), {0, 1, 2, 3}),
        (SamplingParams(top_p=0.45), {1}),  # the top token is always kept
        (SamplingParams(top_p=0.7), {1, 3}),  # 0.5 < 0.7, 0.5 + 0.25 >= 0.7
        (SamplingParams(top_p=0.8), {1, 2, 3}),
        # top-p runs on the top-k renormalised distribution: 0.5/0.9 + 0.25/0.9 >= 0.8.
        (SamplingParams(top_k=3, top_p=0.8), {1, 3}),
        (SamplingParams(min_p=0.4), {1, 3}),  # threshold 0.2
        (SamplingParams(min_p=0.25), {1, 2, 3}),  # threshold 0.125
        # min_p sees the tempered distribution (p^2): 0.0625 < 0.4 * 0.25.
        (SamplingParams(temperature=0.5, min_p=0.4), {1}),
    ],
)
def test_masks_exact(params: SamplingParams, kept: set[int]) -> None:
    probs = sampling_probs(KNOWN_LOGITS[None, :], [params])[0]
    assert {i for i in range(4) if probs[i] > 0} == kept
    tempered = KNOWN ** (1.0 / params.temperature)
    expected = torch.zeros(4)
    idx = torch.tensor(sorted(kept))
    expected[idx] = tempered[idx] / tempered[idx].sum()
    torch.testing.assert_close(probs, expected)


def test_masks_per_row_in_one_batch() -> None:
    """Per-row parameters must not leak across rows of the batched ops."""
    rows = [
        (SamplingParams(top_k=2), {1, 3}),
        (SamplingParams(), {0, 1, 2, 3}),
        (SamplingParams(top_p=0.45), {1}),
        (SamplingParams(min_p=0.25), {1, 2, 3}),
        (SamplingParams(top_k=3, top_p=0.8), {1, 3}),
    ]
    probs = sampling_probs(KNOWN_LOGITS.repeat(len(rows), 1), [p for p, _ in rows])
    for row, (_, kept) in zip(probs, rows, strict=True):
        assert {i for i in range(4) if row[i] > 0} == kept
        torch.testing.assert_close(row.sum(), torch.tensor(1.0))


def test_top_k_keeps_ties_on_both_paths() -> None:
    """Ties at the k-th value are kept whether or not the batch took the sorting (top-p) path."""
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.0]])
    alone = sampling_probs(logits, [SamplingParams(top_k=2)])
    with_top_p = sampling_probs(
        logits.repeat(2, 1), [SamplingParams(top_k=2), SamplingParams(top_p=0.5)]
    )
    for probs in (alone[0], with_top_p[0]):
        assert {i for i in range(5) if probs[i] > 0} == {1, 2, 3}


def reference_probs(row: torch.Tensor, p: SamplingParams) -> tuple[torch.Tensor, float]:
    """Per-row float64 reference; also returns how close any keep/drop decision came to its cut."""
    x = row.double() / p.temperature
    keep = torch.ones_like(x, dtype=torch.bool)
    margin = math.inf
    if 0 < p.top_k < x.numel():
        keep &= x >= torch.sort(x, descending=True).values[p.top_k - 1]
    if p.top_p < 1.0:
        probs = torch.softmax(x.masked_fill(~keep, NEG_INF), -1)
        order = torch.argsort(probs, descending=True)
        before = 0.0
        for t in order.tolist():
            if not keep[t]:
                continue
            margin = min(margin, abs(before - p.top_p))
            if before >= p.top_p:
                keep[t] = False
            before += probs[t].item()
    if p.min_p > 0.0:
        probs = torch.softmax(x.masked_fill(~keep, NEG_INF), -1)
        cut = p.min_p * probs.max()
        margin = min(margin, (probs[keep] - cut).abs().min().item() / cut.item())
        keep &= probs >= cut
    return torch.softmax(x.masked_fill(~keep, NEG_INF), -1).float(), margin


row_params = st.builds(
    SamplingParams,
    temperature=st.floats(0.2, 2.0),
    top_k=st.integers(-1, 24),
    top_p=st.one_of(st.just(1.0), st.floats(0.05, 0.99)),
    min_p=st.one_of(st.just(0.0), st.floats(0.01, 0.9)),
)


@settings(max_examples=60, deadline=None)
@given(params=st.lists(row_params, min_size=1, max_size=6), seed=st.integers(0, 2**31))
def test_sampling_probs_match_per_row_reference(params: list[SamplingParams], seed: int) -> None:
    logits = torch.randn(len(params), 20, generator=seeded(seed)) * 2.0
    refs = [reference_probs(logits[i], p) for i, p in enumerate(params)]
    assume(all(margin > 1e-4 for _, margin in refs))
    probs = sampling_probs(logits, params)
    for i, (ref, _) in enumerate(refs):
        assert torch.equal(probs[i] > 0, ref > 0), f"row {i}: {params[i]}"
        torch.testing.assert_close(probs[i], ref, atol=1e-5, rtol=1e-4)


# --- greedy ------------------------------------------------------------------------------------


def test_greedy_is_argmax_with_lowest_id_on_ties() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 9.0]])
    out = Sampler()(logits, make_batch([SamplingParams(temperature=0.0)] * 3))
    assert out.token_ids == [1, 0, 3]
    assert out.logprobs == [None, None, None]


def test_greedy_batch_matches_argmax_and_leaves_input_alone() -> None:
    logits = torch.randn(32, 500, generator=seeded(0))
    before = logits.clone()
    params = [SamplingParams(temperature=0.0)] * 32
    assert process_logits(logits, make_batch(params)) is logits  # nothing to do: no copy
    out = Sampler()(logits, make_batch(params))
    assert out.token_ids == logits.argmax(-1).tolist()
    assert torch.equal(logits, before)


def test_extreme_but_valid_values_neither_fail_the_step_nor_garble_output() -> None:
    """temperature 1e-300 (0 in float32) and repetition_penalty 1e-300 made inf/NaN
    logits: top-p then raised (the whole step, every client's request, got a 500) and
    without top-p a random token came out. Such a temperature is greedy (as in vLLM);
    such a penalty lets the seen positive tokens share the row."""
    logits = torch.randn(4, 300, generator=seeded(1))
    logits[:, 7] = 6.0  # the argmax
    logits[:, 11] = 0.5  # seen in the prompt: the huge penalty's winner
    logits[:, 5] = -1.0  # seen too, but negative: multiplied towards 0
    rows = [
        SamplingParams(temperature=1e-300, top_p=0.5),
        SamplingParams(temperature=1e-38, seed=3),
        SamplingParams(temperature=1.0, top_p=0.9, repetition_penalty=1e-300),
        SamplingParams(temperature=0.0, repetition_penalty=1e-300),
    ]
    prompts = [[], [], [11, 5], [5, 11]]
    for _ in range(5):
        out = Sampler()(logits, make_batch(rows, prompts=prompts, generators=[seeded(2)] * 4))
        assert out.token_ids == [7, 7, 11, 11]
    assert all(p.greedy for p in rows[:2]) and not SamplingParams(temperature=1e-5).greedy


def test_vllms_unbounded_temperature_and_penalty_never_sample_a_masked_token() -> None:
    """Past float32's range (temperature 1e39 is inf there) -inf / inf made masked rows
    NaN, and a penalty of 1e37 sank allowed logits of -40 to -inf: both sampled tokens
    that allowed_token_ids, min_tokens or a grammar had masked."""
    logits = torch.randn(6, 50, generator=seeded(3)) * 3
    logits[4:, 1], logits[4:, 2] = -40.0, -41.0
    rows = [
        SamplingParams(temperature=1e39, allowed_token_ids=[7, 8], seed=1),
        SamplingParams(temperature=1e300, allowed_token_ids=[7, 8], seed=2),
        SamplingParams(temperature=1e300, min_tokens=10, seed=3),
        SamplingParams(temperature=3e38, allowed_token_ids=[7, 8], seed=4),
        SamplingParams(temperature=0.0, repetition_penalty=1e37, allowed_token_ids=[1, 2]),
        SamplingParams(temperature=0.5, repetition_penalty=1e300, allowed_token_ids=[1, 2]),
    ]
    prompts = [[], [], [], [], [1, 2], [1, 2]]
    for step in range(20):
        generators = [seeded(step) for _ in rows]
        batch = make_batch(rows, prompts=prompts, generators=generators, eos=frozenset({0}))
        out = Sampler()(logits, batch)
        assert set(out.token_ids[:2]) <= {7, 8} and out.token_ids[3] in (7, 8)
        assert out.token_ids[2] != 0  # EOS, masked by min_tokens
        assert out.token_ids[4] in (1, 2)  # greedy, both sunk to the float limit
        assert out.token_ids[5] in (1, 2)


# --- penalties, logit_bias, min_tokens ---------------------------------------------------------


def test_penalties_and_bias_match_hand_computation() -> None:
    logits = torch.tensor([[1.0, -1.0, 2.0, 0.5, -0.5, 3.0]]).repeat(3, 1)
    before = logits.clone()
    params = [
        SamplingParams(
            repetition_penalty=2.0,
            frequency_penalty=0.5,
            presence_penalty=0.25,
            logit_bias={3: -1.0, 0: 0.5},
        ),
        SamplingParams(),
        SamplingParams(presence_penalty=1.0),
    ]
    batch = make_batch(params, prompts=[[1, 4], [1, 4], [0]], outputs=[[2, 3, 3], [2], [5, 5]])
    processed = process_logits(logits, batch)
    # Row 0, token by token: bias first, then repetition on prompt+output, then
    # frequency/presence on output counts only.
    #   0: 1.0 + 0.5                           = 1.5
    #   1: -1.0 in prompt -> * 2               = -2.0
    #   2: 2.0 in output -> / 2, 1x            = 1.0 - 0.5 - 0.25 = 0.25
    #   3: 0.5 - 1.0 = -0.5 -> * 2, 2x         = -1.0 - 1.0 - 0.25 = -2.25
    #   4: -0.5 in prompt -> * 2 (no freq)     = -1.0
    #   5: untouched                           = 3.0
    expected0 = torch.tensor([1.5, -2.0, 0.25, -2.25, -1.0, 3.0])
    expected2 = torch.tensor([1.0, -1.0, 2.0, 0.5, -0.5, 2.0])  # presence counts once, prompt not
    torch.testing.assert_close(processed[0], expected0)
    torch.testing.assert_close(processed[1], before[1])
    torch.testing.assert_close(processed[2], expected2)
    assert torch.equal(logits, before)


def test_logit_bias_plus_100_forces_token() -> None:
    logits = torch.randn(64, 50, generator=seeded(1)) * 3.0
    params = [SamplingParams(temperature=1.0, logit_bias={17: 100.0})] * 63
    params.append(SamplingParams(temperature=0.0, logit_bias={17: 100.0}))
    gens = [seeded(i) if i % 2 else None for i in range(64)]
    out = Sampler()(logits, make_batch(params, generators=gens))
    assert out.token_ids == [17] * 64


def test_min_tokens_masks_eos_and_stop_ids_until_reached() -> None:
    eos = frozenset({0, 1})
    logits = torch.tensor([[10.0, 9.0, 1.0, 2.0, 3.0, 8.0, 7.0, 0.0]]).repeat(3, 1)
    params = [
        SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=(5,)),
        SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=(5,)),
        SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=(5,), ignore_eos=True),
    ]
    batch = make_batch(params, outputs=[[2, 2], [2, 2, 2], [2]], eos=eos)
    processed = process_logits(logits, batch)
    assert {i for i in range(8) if processed[0, i] == NEG_INF} == {0, 1, 5}
    assert torch.equal(processed[1], logits[1])  # min_tokens reached
    assert {i for i in range(8) if processed[2, i] == NEG_INF} == {5}  # EOS is a plain token
    assert Sampler()(logits, batch).token_ids == [6, 0, 0]


def test_allowed_token_ids_leave_only_those_tokens() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(3, 1)
    params = [
        SamplingParams(temperature=0.0, allowed_token_ids=(2, 4)),
        SamplingParams(temperature=1.0, allowed_token_ids=(5,)),
        SamplingParams(temperature=0.0),
    ]
    batch = make_batch(params, generators=[None, seeded(1), None])
    processed = process_logits(logits, batch)
    assert {i for i in range(6) if processed[0, i] != NEG_INF} == {2, 4}
    assert {i for i in range(6) if processed[1, i] != NEG_INF} == {5}
    assert torch.equal(processed[2], logits[2])
    assert Sampler()(logits, batch).token_ids == [2, 5, 0]


def test_bad_words_ban_the_token_that_would_complete_a_word() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(3, 1)
    words = ((0,), (3, 1))  # a one-token word, and a word of two tokens
    params = [SamplingParams(temperature=0.0, bad_words_token_ids=words)] * 3
    batch = make_batch(params, outputs=[[], [2, 3], [3, 2]])
    processed = process_logits(logits, batch)
    assert {i for i in range(6) if processed[0, i] == NEG_INF} == {0}
    assert {i for i in range(6) if processed[1, i] == NEG_INF} == {0, 1}
    assert {i for i in range(6) if processed[2, i] == NEG_INF} == {0}
    assert Sampler()(logits, batch).token_ids == [1, 2, 1]


def test_masks_that_would_leave_no_token_keep_allowed_token_ids_alone() -> None:
    """allowed_token_ids = {EOS} before min_tokens, or = {a bad word}: sampling from no
    token is impossible, so such a row keeps allowed_token_ids' mask (and its
    logit_bias) without the others; other rows of the batch are masked as usual."""
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).repeat(3, 1)
    params = [
        SamplingParams(temperature=1.0, allowed_token_ids=(0,), min_tokens=2, logit_bias={2: 1.0}),
        SamplingParams(temperature=0.0, allowed_token_ids=(1,), bad_words_token_ids=((1,),)),
        SamplingParams(temperature=0.0, allowed_token_ids=(1, 2)),
    ]
    batch = make_batch(params, generators=[seeded(2), None, None], eos=frozenset({0}))
    processed = process_logits(logits, batch)
    torch.testing.assert_close(processed[0], torch.tensor([1.0, NEG_INF, NEG_INF, NEG_INF]))
    torch.testing.assert_close(processed[1], torch.tensor([NEG_INF, 2.0, NEG_INF, NEG_INF]))
    assert {i for i in range(4) if processed[2, i] != NEG_INF} == {1, 2}
    assert Sampler()(logits, batch).token_ids == [0, 1, 2]


def test_a_bad_word_the_grammar_alone_allows_keeps_the_grammar() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    params = [SamplingParams(temperature=0.0, bad_words_token_ids=((1,),))]
    batch = make_batch(params)
    batch.grammar_rows = [0]
    batch.grammar_bitmask = torch.tensor([[0b0010]], dtype=torch.int32)  # token 1 only
    assert Sampler()(logits, batch).token_ids == [1]


def test_allowed_token_ids_and_a_structured_output_are_refused_together() -> None:
    with pytest.raises(SamplingParamError, match="allowed_token_ids: cannot be combined"):
        SamplingParams(
            allowed_token_ids=(1,), structured_output=StructuredOutput(kind="regex", spec="a")
        )


# --- seeding -----------------------------------------------------------------------------------

VOCAB = 1000
TARGET = SamplingParams(temperature=0.8, seed=123, top_p=0.95, frequency_penalty=0.5)
OTHERS = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7, top_k=50, seed=7),
    SamplingParams(temperature=1.2, min_p=0.05),
    SamplingParams(temperature=0.0, repetition_penalty=1.3),
    SamplingParams(temperature=0.9, top_p=0.8),
    SamplingParams(temperature=1.0, seed=99, logit_bias={3: 2.0}),
    SamplingParams(temperature=0.5, top_k=10, top_p=0.9),
]


def run_steps(rows: list[tuple[str, SamplingParams]], steps: int = 20) -> dict[str, list[int]]:
    """Drive the sampler like an engine would: per-row logits keyed by row name, not position."""
    sampler = Sampler()
    gens = [seeded(p.seed) if p.seed is not None else None for _, p in rows]
    outputs: list[list[int]] = [[] for _ in rows]
    for step in range(steps):
        logits = torch.stack(
            [
                torch.randn(VOCAB, generator=seeded(step * 7919 + sum(map(ord, name)))) * 2.0
                for name, _ in rows
            ]
        )
        batch = make_batch(
            [p for _, p in rows],
            prompts=[[1, 2, 3]] * len(rows),
            outputs=[list(o) for o in outputs],
            generators=gens,
        )
        for out, token in zip(outputs, sampler(logits, batch).token_ids, strict=True):
            out.append(token)
    return {name: out for (name, _), out in zip(rows, outputs, strict=True)}


def test_seeded_request_reproducible_across_batch_compositions() -> None:
    torch.manual_seed(0)
    alone = run_steps([("target", TARGET)])["target"]
    assert len(set(alone)) > 10  # really random, so equality below means something
    others = [(f"other{i}", p) for i, p in enumerate(OTHERS)]
    for position in (0, 4, 8):
        torch.manual_seed(position + 1)  # the default RNG state must not matter
        rows = [*others[:position], ("target", TARGET), *others[position:]]
        assert run_steps(rows)["target"] == alone, f"target at position {position}"
    torch.manual_seed(0)
    other_seed = SamplingParams(temperature=0.8, seed=124, top_p=0.95, frequency_penalty=0.5)
    assert run_steps([("target", other_seed)])["target"] != alone


# --- logprobs ----------------------------------------------------------------------------------


def assert_logprobs(lp: TokenLogprobs, raw_row: torch.Tensor, token: int, k: int) -> None:
    expected = torch.log_softmax(raw_row, -1)
    assert lp.token_id == token
    assert lp.logprob == pytest.approx(expected[token].item(), abs=1e-5)
    order = torch.argsort(expected, descending=True).tolist()  # distinct values: rank = position
    assert lp.rank == order.index(token) + 1
    assert [t for t, _ in lp.top] == order[:k]
    assert [v for _, v in lp.top] == pytest.approx(expected[order[:k]].tolist(), abs=1e-5)


def test_sample_logprobs_are_raw_with_rank_and_top() -> None:
    logits = torch.randn(4, 30, generator=seeded(3)) * 2.0
    worst = int(logits[2].argmin())
    params = [
        SamplingParams(temperature=0.0, logprobs=3),
        SamplingParams(temperature=1.0),
        # Forced to the least likely token: the report must still use the raw distribution.
        SamplingParams(temperature=0.0, logprobs=0, logit_bias={worst: 100.0}),
        SamplingParams(temperature=1.0, logprobs=5, repetition_penalty=1.5, seed=5),
    ]
    batch = make_batch(
        params, outputs=[[], [], [], [1, 2]], generators=[None, None, None, seeded(5)]
    )
    out = Sampler()(logits, batch)
    assert out.logprobs[1] is None
    assert out.token_ids[2] == worst
    for row in (0, 2, 3):
        lp = out.logprobs[row]
        assert lp is not None
        assert_logprobs(lp, logits[row], out.token_ids[row], params[row].logprobs or 0)
    assert out.logprobs[0] is not None and out.logprobs[0].rank == 1
    assert out.logprobs[2] is not None and out.logprobs[2].rank == 30
    assert out.logprobs[2].top == ()


def test_raw_logits_mode_reports_the_logits() -> None:
    logits = torch.randn(2, 30, generator=seeded(6)) * 2.0
    params = [
        SamplingParams(temperature=0.0, logprobs=4, logit_bias={7: 50.0}),
        SamplingParams(temperature=0.8, logprobs=2, seed=3),
    ]
    out = Sampler("raw_logits")(logits, make_batch(params, generators=[None, seeded(3)]))
    for row, lp in enumerate(out.logprobs):
        assert lp is not None
        token = out.token_ids[row]
        assert lp.logprob == pytest.approx(logits[row, token].item())
        order = torch.argsort(logits[row], descending=True).tolist()
        assert [t for t, _ in lp.top] == order[: params[row].logprobs or 0]
        assert lp.rank == order.index(token) + 1
    assert out.token_ids[0] == 7


def test_processed_modes_report_what_was_sampled_from() -> None:
    """Greedy rows: after bias, penalties and masks. Sampled rows: then divided by the
    temperature, with what top-k, top-p and min-p removed at -inf; a mixed batch and an
    all-sampled one (where the weights are computed in place) agree."""
    logits = torch.randn(3, 40, generator=seeded(7)) * 2.0
    greedy_row = SamplingParams(temperature=0.0, logprobs=3, logit_bias={5: 3.0})
    top_k = SamplingParams(temperature=0.5, top_k=4, logprobs=6, seed=1, frequency_penalty=1.0)
    top_p = SamplingParams(temperature=1.3, top_p=0.6, logprobs=2, seed=2)
    outputs = [[], [9, 9], []]
    expected = [logits[0].clone(), logits[1].clone(), logits[2].clone() / 1.3]
    expected[0][5] += 3.0
    expected[1][9] -= 2.0
    expected[1] /= 0.5
    expected[1][expected[1] < expected[1].topk(4).values[-1]] = NEG_INF
    probs = torch.softmax(expected[2], -1)
    order = torch.argsort(probs, descending=True)
    before = torch.cumsum(probs[order], 0) - probs[order]
    expected[2][order[before >= 0.6]] = NEG_INF

    def check(out_lps: list, tokens: list[int], rows: list[int], logits_mode: bool) -> None:
        for lp, token, row in zip(out_lps, tokens, rows, strict=True):
            want = expected[row] if logits_mode else torch.log_softmax(expected[row], -1)
            assert lp.logprob == pytest.approx(want[token].item(), abs=1e-5)
            k = len(lp.top)
            assert [v for _, v in lp.top] == pytest.approx(want.topk(k).values.tolist(), abs=1e-5)

    for mode in ("processed_logprobs", "processed_logits"):
        logits_mode = mode.endswith("logits")
        mixed = Sampler(mode)(
            logits,
            make_batch(
                [greedy_row, top_k, top_p], outputs=outputs, generators=[None, seeded(1), seeded(2)]
            ),
        )
        check(mixed.logprobs, mixed.token_ids, [0, 1, 2], logits_mode)
        assert mixed.logprobs[1] is not None
        assert sum(v == NEG_INF for _, v in mixed.logprobs[1].top) == 2  # 6 asked, 4 kept
        sampled = Sampler(mode)(
            logits[1:],
            make_batch([top_k, top_p], outputs=outputs[1:], generators=[seeded(1), seeded(2)]),
        )
        check(sampled.logprobs, sampled.token_ids, [1, 2], logits_mode)
        assert sampled.token_ids == mixed.token_ids[1:]


def test_processed_modes_keep_a_cold_rows_tail_finite() -> None:
    """At temperature 0.1 most of a vocabulary's weights underflow float32's exp, yet
    nothing removed them: they are reported as the tiny logprobs they are, not -inf."""
    logits = torch.randn(1, 200, generator=seeded(9)) * 4.0
    params = [SamplingParams(temperature=0.1, logprobs=200, seed=1)]
    out = Sampler("processed_logprobs")(logits, make_batch(params, generators=[seeded(1)]))
    lp = out.logprobs[0]
    assert lp is not None
    expected = torch.log_softmax(logits[0].double() / 0.1, -1)
    assert expected.min() < -150  # far past float32's exp underflow
    assert [v for _, v in lp.top] == pytest.approx(
        expected.sort(descending=True).values.tolist(), rel=1e-4
    )


def test_processed_logprobs_stay_numbers_under_vllms_unbounded_penalty() -> None:
    """A penalized logit at float32's edge, over a temperature below 1, was inf: NaN
    logprobs (inf logits) reported for every token."""
    logits = torch.tensor([[5.0, 1.0, 0.0, -1.0], [-5.0, -1.0, -2.0, -3.0]])
    params = [
        SamplingParams(temperature=0.5, repetition_penalty=1e-39, logprobs=2, seed=1),
        SamplingParams(temperature=0.5, repetition_penalty=1e39, logprobs=2, seed=2),
    ]
    batch = make_batch(params, prompts=[[0, 1], [0, 1, 2, 3]], generators=[seeded(1)] * 2)
    for mode in ("processed_logprobs", "processed_logits"):
        out = Sampler(mode)(logits, batch)
        for entry in out.logprobs:
            assert entry is not None
            values = [entry.logprob, *(v for _, v in entry.top)]
            assert not any(math.isnan(v) or math.isinf(v) for v in values), (mode, entry)


def test_masks_in_an_all_sampled_batch_leave_no_row_empty() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).repeat(2, 1)
    params = [
        SamplingParams(temperature=1.0, allowed_token_ids=(1,), bad_words_token_ids=((1,),)),
        SamplingParams(temperature=1.0, allowed_token_ids=(0, 1)),
    ]
    out = Sampler()(logits, make_batch(params, generators=[seeded(1), seeded(2)]))
    assert out.token_ids[1] in (0, 1)
    assert out.token_ids[0] == 1  # the one allowed token, though a bad word


def test_prompt_logprobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampler_module, "_PROMPT_LOGPROBS_CHUNK", 3)  # cross chunk boundaries
    logits = torch.randn(7, 20, generator=seeded(4))
    tokens = torch.randint(0, 20, (7,), generator=seeded(5)).tolist()
    result = prompt_logprobs(logits, tokens, k=2)
    assert len(result) == 7
    for row, (lp, token) in enumerate(zip(result, tokens, strict=True)):
        assert_logprobs(lp, logits[row], token, 2)
    assert prompt_logprobs(logits[:0], [], k=2) == []


# --- temperature sampling distribution ---------------------------------------------------------


def test_temperature_sampling_matches_softmax() -> None:
    """4000 draws (half seeded rows, half default RNG) follow softmax(logits / T), not softmax."""
    n, temperature = 4000, 0.7
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    params = [SamplingParams(temperature=temperature)] * n
    gens = [seeded(i) if i % 2 else None for i in range(n)]
    torch.manual_seed(0)
    out = Sampler()(logits.repeat(n, 1), make_batch(params, generators=gens))
    observed = torch.bincount(torch.tensor(out.token_ids), minlength=5).double()

    def chi2(probs: torch.Tensor) -> float:
        expected = n * probs.double()
        return float(((observed - expected) ** 2 / expected).sum())

    assert chi2(torch.softmax(logits / temperature, -1)) < 25.0  # df=4, p ~ 5e-5
    assert chi2(torch.softmax(logits, -1)) > 100.0  # a sampler ignoring T would pass only this


def test_masked_tokens_never_drawn_and_kept_ones_follow_their_probs() -> None:
    """Top-k / top-p / min-p masks hold under sampling, with kept tokens at block edges."""
    n, vocab = 6000, 600  # inverse CDF blocks of 256: [0, 256), [256, 512), [512, 600)
    logits = torch.full((vocab,), -6.0)
    logits[torch.tensor([599, 256, 255, 0, 300, 511])] = torch.tensor(
        [2.0, 1.5, 1.0, 0.5, 0.0, -0.5]
    )
    rows = [
        (SamplingParams(temperature=0.9, top_k=6), {599, 256, 255, 0, 300, 511}),
        (SamplingParams(temperature=1.0, top_p=0.7), {599, 256, 255}),
        (SamplingParams(temperature=1.0, min_p=0.2), {599, 256, 255, 0}),
    ]
    torch.manual_seed(0)
    for params, kept in rows:
        probs = sampling_probs(logits[None, :], [params])[0]
        assert {i for i in range(vocab) if probs[i] > 0} == kept
        gens = [seeded(i) if i % 2 else None for i in range(n)]
        out = Sampler()(logits.repeat(n, 1), make_batch([params] * n, generators=gens))
        observed = torch.bincount(torch.tensor(out.token_ids), minlength=vocab).double()
        assert set(observed.nonzero().squeeze(1).tolist()) <= kept
        idx = torch.tensor(sorted(kept))
        expected = n * probs[idx].double()
        chi2 = float(((observed[idx] - expected) ** 2 / expected).sum())
        assert chi2 < 30.0, params  # df <= 5, p ~ 1e-5


# --- inverse CDF -------------------------------------------------------------------------------

BELOW_ONE = math.nextafter(1.0, 0.0)


@pytest.mark.parametrize("block", [2, 3, 256])
def test_inverse_cdf_never_picks_masked_tokens_at_either_end(
    monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(sampler_module, "_CDF_BLOCK", block)
    weights = torch.tensor([0.0, 0.0, 0.25, 0.0, 0.75, 0.0, 0.0])
    # u = 1.0 is outside [0, 1): it overshoots every cumulative sum, is clamped
    # to the last token, which has zero weight, and moves back to token 4.
    cases = [(0.0, 2), (0.2499, 2), (0.25, 4), (0.5, 4), (BELOW_ONE, 4), (1.0, 4)]
    u = torch.tensor([c for c, _ in cases], dtype=torch.float64)
    tokens = sampler_module._inverse_cdf(weights.repeat(len(cases), 1), u)
    assert tokens.tolist() == [t for _, t in cases]


@pytest.mark.parametrize("block", [2, 5, 256])
def test_inverse_cdf_matches_float64_reference(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """Random weights spanning many magnitudes, with zeros anywhere, including both ends."""
    monkeypatch.setattr(sampler_module, "_CDF_BLOCK", block)
    gen = seeded(21)
    rows, vocab = 400, 37
    weights = torch.exp(torch.randn(rows, vocab, generator=gen) * 6.0)
    weights[torch.rand(rows, vocab, generator=gen) < 0.5] = 0.0
    weights[::2, :3] = 0.0
    weights[::3, -3:] = 0.0
    weights[torch.arange(rows), torch.randint(3, vocab - 3, (rows,), generator=gen)] = 1.0
    u = torch.rand(rows, dtype=torch.float64, generator=gen)
    u[:50], u[50:100] = 0.0, BELOW_ONE

    tokens = sampler_module._inverse_cdf(weights, u)
    # Every draw, u = 0 and u just below 1 included, lands on a nonzero weight.
    assert bool((weights.gather(1, tokens[:, None]) > 0).all())
    first_nonzero = [row.nonzero()[0].item() for row in weights[:50]]
    assert tokens[:50].tolist() == first_nonzero

    cdf = weights[100:].double().cumsum(dim=-1)
    target = u[100:] * cdf[:, -1]
    reference = torch.searchsorted(cdf, target[:, None], right=True).squeeze(1)
    # Block sums are float32: skip draws within rounding distance of a boundary.
    clear = ((cdf - target[:, None]).abs() > 1e-6 * cdf[:, -1:]).all(dim=-1)
    assert int(clear.sum()) > 250
    assert torch.equal(tokens[100:][clear], reference[clear])


def test_nonzero_fallback_moves_to_nearest_earlier_nonzero_else_next() -> None:
    weights = torch.tensor([[0.0, 0.0, 1.0, 0.0, 2.0, 0.0]]).repeat(5, 1)
    tokens = torch.tensor([0, 1, 3, 5, 4])
    assert sampler_module._nonzero_fallback(weights, tokens).tolist() == [2, 2, 2, 4, 4]


# --- top-p candidates ----------------------------------------------------------------------------


@pytest.mark.parametrize("candidates", [(1,), (2,), (3,), (4,), ()])
@pytest.mark.parametrize(
    ("row", "kept"), [([0.0, 1.0, 1.0, 1.0, 0.0], {1, 2}), ([1.0, 0.0, 1.0, 0.0, 1.0], {0, 2})]
)
def test_top_p_splits_ties_at_the_cut_by_token_id(
    monkeypatch: pytest.MonkeyPatch, candidates: tuple[int, ...], row: list[float], kept: set[int]
) -> None:
    """Three tied tokens of mass ~0.29 each, top_p=0.5: the two lowest ids are kept."""
    monkeypatch.setattr(sampler_module, "_TOP_P_CANDIDATES", candidates)
    probs = sampling_probs(torch.tensor([row]), [SamplingParams(top_p=0.5)])[0]
    assert {i for i in range(5) if probs[i] > 0} == kept


@pytest.mark.parametrize("candidates", [(1,), (2, 5), (7,), (3, 20)])
def test_top_p_candidates_match_the_full_sort(
    monkeypatch: pytest.MonkeyPatch, candidates: tuple[int, ...]
) -> None:
    """Sorting only the largest weights, with retries, gives exactly the full sort's masks."""
    gen = seeded(31)
    vocab = 40
    continuous = torch.randn(60, vocab, generator=gen) * 2.0
    tied = torch.randint(-2, 3, (60, vocab), generator=gen).float()  # ties straddle the cuts
    logits = torch.cat([continuous, tied])
    top_ps = torch.rand(len(logits), generator=gen).mul(0.98).add(0.01).tolist()
    params = [
        SamplingParams(temperature=0.5 + (i % 3) * 0.5, top_p=p, top_k=(0, 5, 25)[i % 3])
        for i, p in enumerate(top_ps)
    ]
    monkeypatch.setattr(sampler_module, "_TOP_P_CANDIDATES", ())
    full = sampling_probs(logits, params)
    monkeypatch.setattr(sampler_module, "_TOP_P_CANDIDATES", candidates)
    assert torch.equal(sampling_probs(logits, params), full)
    # And row by row, so no row's result depends on the others' retries.
    for i in range(0, len(logits), 7):
        assert torch.equal(sampling_probs(logits[i : i + 1], params[i : i + 1])[0], full[i])


# --- sampler state and inputs --------------------------------------------------------------------


def test_random_rows_leave_logits_alone_and_scratch_does_not_leak() -> None:
    """Random sampling works in a reused scratch buffer or a private copy, never the input."""
    logits = torch.randn(12, 300, generator=seeded(41)) * 2.0
    before = logits.clone()
    batches = [
        [SamplingParams(temperature=0.8, seed=i, top_p=0.9) for i in range(12)],  # scratch
        [SamplingParams(temperature=0.8, seed=i, repetition_penalty=1.2) for i in range(12)],
        [SamplingParams(temperature=0.0 if i % 3 else 0.8, seed=i) for i in range(12)],  # mixed
    ]
    reused = Sampler()
    for params in [*batches, *batches]:
        fresh = Sampler()(logits, make_batch(params, generators=[seeded(i) for i in range(12)]))
        again = reused(logits, make_batch(params, generators=[seeded(i) for i in range(12)]))
        assert again.token_ids == fresh.token_ids
        assert torch.equal(logits, before)
    # A smaller batch after a larger one reuses the front of the scratch buffer.
    small = reused(logits[:3], make_batch(batches[0][:3], generators=[seeded(i) for i in range(3)]))
    assert (
        small.token_ids
        == Sampler()(
            logits[:3], make_batch(batches[0][:3], generators=[seeded(i) for i in range(3)])
        ).token_ids
    )


# --- speculative sampling ----------------------------------------------------------------------


@pytest.mark.parametrize("draft", [0, 2, 4])  # the likeliest token, a middling one, a masked one
def test_a_random_rows_draft_leaves_its_distribution_exact(draft: int) -> None:
    """Kept with its probability, else a token drawn from the rest: every token still comes
    out with its own probability (chi-square against the tempered, top-k'd softmax), the
    draft is kept exactly when it is chosen, and a masked draft is never chosen."""
    n = 6000
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    params = SamplingParams(temperature=0.8, top_k=4)  # token 4 is masked
    probs = sampling_probs(logits[None, :], [params])[0].double()
    gens = [seeded(i) if i % 3 == 0 else None for i in range(n)]
    batch = make_batch([params] * n, generators=gens)
    batch.draft_tokens = [draft if i % 2 == 0 else None for i in range(n)]  # half drafted
    torch.manual_seed(1)
    out = Sampler()(logits.repeat(n, 1), batch)
    tokens = torch.tensor(out.token_ids)
    for rows in (tokens[0::2], tokens[1::2]):  # drafted rows, and rows without a draft
        observed = torch.bincount(rows, minlength=5).double()
        assert observed[4] == 0
        expected = len(rows) * probs[:4]
        assert float(((observed[:4] - expected) ** 2 / expected).sum()) < 25.0  # df=3
    kept = float((tokens[0::2] == draft).double().mean())
    assert kept == pytest.approx(float(probs[draft]), abs=0.03)


def test_drafted_seeded_rows_are_reproducible() -> None:
    logits = torch.randn(8, 50)
    params = [SamplingParams(temperature=1.0)] * 8

    def sample() -> list[int]:
        batch = make_batch(params, generators=[seeded(i) for i in range(8)])
        batch.draft_tokens = [int(logits[i].argmax()) if i % 2 else 7 for i in range(8)]
        return Sampler()(logits, batch).token_ids

    assert sample() == sample()


# --- seeded rows ---------------------------------------------------------------------------


def test_seeded_rows_sample_the_distribution() -> None:
    """Each seeded row (its own seed) races exponential noise: across rows, every token
    comes out with its probability (chi-square, df=3), a masked one never."""
    n = 6000
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    params = SamplingParams(temperature=0.8, top_k=4)  # token 4 is masked
    probs = sampling_probs(logits[None, :], [params])[0].double()
    batch = make_batch([params] * n, generators=[seeded(i) for i in range(n)])
    tokens = torch.tensor(Sampler()(logits.repeat(n, 1), batch).token_ids)
    observed = torch.bincount(tokens, minlength=5).double()
    assert observed[4] == 0
    expected = n * probs[:4]
    assert float(((observed[:4] - expected) ** 2 / expected).sum()) < 25.0


def test_a_seed_survives_the_rounding_of_another_batch_shape() -> None:
    """Batched matmuls round logits differently by ~1e-5 from one batch shape to the next.
    A seeded draw must not notice: over a real vocabulary's long tail at temperature 1,
    200 seeds pick the same tokens from logits and from the same logits off by that
    rounding. An inverse CDF over the same noise flips some (its boundaries between
    unlikely tokens are that close), which is what users saw before."""
    torch.manual_seed(0)
    vocab, n = 49_152, 200
    logits = torch.randn(vocab) * 2.5
    rounded = logits * (1 + 1e-6 * torch.randn(vocab))  # another batch shape's logits
    params = [SamplingParams(temperature=1.0)] * n

    def draw(row: torch.Tensor) -> list[int]:
        batch = make_batch(params, generators=[seeded(s) for s in range(n)])
        return Sampler()(row.repeat(n, 1), batch).token_ids

    assert draw(logits) == draw(rounded)
    weights = torch.softmax(torch.stack([logits, rounded]), dim=-1)
    u = torch.rand(n, dtype=torch.float64)
    flips = _inverse_cdf(weights[0].repeat(n, 1), u) != _inverse_cdf(weights[1].repeat(n, 1), u)
    assert int(flips.sum()) > 0  # the test would catch the old method
