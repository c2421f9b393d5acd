"""Beam search: HF `generate(num_beams=k)` is the oracle, hypothesis for hypothesis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers

from engine.beam_search import BeamSearch
from engine.llm import LLM
from engine.sampling_params import SamplingParamError, SamplingParams

PROMPT = [1, 400, 523, 611, 7070, 812, 9001, 1000, 1177, 12345, 1300, 42, 77, 8080]
EOS = 2  # tests/conftest.py TINY_CONFIG
PAD = 49151  # never among these outputs: HF pads shorter hypotheses with it


@pytest.fixture(scope="module")
def folder(make_random_model: Callable[[str], Path]) -> str:
    return str(make_random_model("llama"))


@pytest.fixture(scope="module")
def hf_model(folder: str) -> transformers.PreTrainedModel:
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def llm(folder: str) -> LLM:
    return LLM(folder, num_kv_blocks=256)


def hf_beams(
    model: transformers.PreTrainedModel,
    prompt: list[int],
    width: int,
    max_new: int,
    *,
    eos: list[int] | None = None,
    length_penalty: float = 1.0,
    min_new: int = 0,
) -> list[list[int]]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            num_beams=width,
            num_return_sequences=width,
            do_sample=False,
            max_new_tokens=max_new,
            min_new_tokens=min_new,
            length_penalty=length_penalty,
            eos_token_id=[EOS] if eos is None else eos,
            pad_token_id=PAD,
        )
    beams = [row[len(prompt) :].tolist() for row in out]
    return [[t for t in beam if t != PAD] for beam in beams]


def hf_greedy_token(model: transformers.PreTrainedModel, prompt: list[int], step: int) -> int:
    """The token greedy decoding picks at `step`: one that beams meet, to end them with."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=step + 1, do_sample=False)
    return int(out[0, len(prompt) + step])


def ours(llm: LLM, prompt: list[int], width: int, max_new: int, **kwargs: object) -> list:
    params = SamplingParams(n=width, use_beam_search=True, max_tokens=max_new, **kwargs)
    return llm.generate([prompt], params)[0].choices


@pytest.mark.parametrize(
    ("width", "max_new", "length_penalty"),
    [(1, 6, 1.0), (2, 8, 1.0), (4, 12, 1.0), (3, 10, 0.0), (4, 10, 2.0), (5, 9, -1.0)],
)
def test_hypotheses_match_hf(
    llm: LLM,
    hf_model: transformers.PreTrainedModel,
    width: int,
    max_new: int,
    length_penalty: float,
) -> None:
    expected = hf_beams(hf_model, PROMPT, width, max_new, length_penalty=length_penalty)
    choices = ours(llm, PROMPT, width, max_new, length_penalty=length_penalty)
    assert [c.token_ids for c in choices] == expected
    assert [c.index for c in choices] == list(range(width))
    for choice in choices:
        assert choice.finish_reason == "length"
        assert choice.text == llm.tokenizer.decode(choice.token_ids)


@pytest.mark.parametrize(("width", "top_n"), [(3, 2), (2, 9)])
def test_each_hypothesis_reports_the_models_logprobs_for_its_tokens(
    llm: LLM, hf_model: transformers.PreTrainedModel, width: int, top_n: int
) -> None:
    """Each token's log-probability, rank and top alternatives are the model's at that
    position of prompt + hypothesis (HF's forward pass the oracle), as a sampled token's
    are; 9 alternatives are more than a width-2 search scores (4). Asking for them
    changes no hypothesis."""
    plain = ours(llm, PROMPT, width, 10)
    choices = ours(llm, PROMPT, width, 10, logprobs=top_n)
    assert [c.token_ids for c in choices] == [c.token_ids for c in plain]
    assert plain[0].logprobs is None
    for choice in choices:
        tokens = choice.token_ids
        with torch.inference_mode():
            logits = hf_model(torch.tensor([PROMPT + tokens])).logits[0, len(PROMPT) - 1 : -1]
        expected = torch.log_softmax(logits.float(), dim=-1)
        assert choice.logprobs is not None and len(choice.logprobs) == len(tokens)
        for token, reported, row in zip(tokens, choice.logprobs, expected, strict=True):
            top = torch.topk(row, top_n)
            assert reported.token_id == token
            # fp32 on both sides; the engine's attention and matmuls differ in order only.
            assert reported.logprob == pytest.approx(row[token].item(), abs=1e-4)
            assert reported.rank == int((row > row[token]).sum()) + 1
            assert [t for t, _ in reported.top] == top.indices.tolist()
            assert [v for _, v in reported.top] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_a_stop_token_ends_hypotheses_as_an_eos_does(
    llm: LLM, hf_model: transformers.PreTrainedModel
) -> None:
    """stop_token_ids join EOS as end tokens (HF's list of eos_token_id): K grows to
    3 * width candidates, and finished hypotheses compete with the live beams."""
    stop = hf_greedy_token(hf_model, PROMPT, 1)
    ended = []
    for length_penalty in (1.0, 2.0, -0.5):
        expected = hf_beams(hf_model, PROMPT, 4, 12, eos=[EOS, stop], length_penalty=length_penalty)
        choices = ours(
            llm, PROMPT, 4, 12, stop_token_ids=[stop], length_penalty=length_penalty, logprobs=1
        )
        assert [c.token_ids for c in choices] == expected
        ended += [c for c in choices if c.finish_reason == "stop"]
    assert ended, "the stop token should end some hypotheses"
    for choice in ended:
        assert choice.token_ids[-1] == choice.stop_reason == stop
        assert choice.text == llm.tokenizer.decode(choice.token_ids[:-1])
        # The end token is reported like the rest, as a sampled EOS is.
        assert [s.token_id for s in choice.logprobs or []] == choice.token_ids


def test_min_tokens_bars_end_tokens_as_hf_min_new_tokens_does(
    llm: LLM, hf_model: transformers.PreTrainedModel
) -> None:
    stop = hf_greedy_token(hf_model, PROMPT, 1)
    expected = hf_beams(hf_model, PROMPT, 3, 10, eos=[EOS, stop], min_new=6)
    choices = ours(llm, PROMPT, 3, 10, stop_token_ids=[stop], min_tokens=6)
    assert [c.token_ids for c in choices] == expected
    assert all(len(c.token_ids) > 6 or c.finish_reason == "length" for c in choices)


def test_beam_search_beside_other_requests_frees_every_block(llm: LLM) -> None:
    """Sub-requests batch with other requests without changing either's output, the
    engine counts a search once, and an abort mid-search frees all its blocks."""
    engine = llm.engine
    alone = ours(llm, PROMPT, 3, 8)
    greedy_alone = llm.generate([PROMPT[:9]], SamplingParams(temperature=0.0, max_tokens=8))[0]
    engine.add_request("beams", PROMPT, SamplingParams(n=3, use_beam_search=True, max_tokens=8))
    engine.add_request("plain", PROMPT[:9], SamplingParams(temperature=0.0, max_tokens=8))
    assert engine.num_requests == 2
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("beams", PROMPT, SamplingParams(max_tokens=2))
    results: dict[str, list] = {"beams": [], "plain": []}
    while engine.has_unfinished():
        for out in engine.step():
            results[out.request_id].append(out)
    assert [o.finished for o in results["beams"]] == [True]  # one output, at the end
    assert [c.token_ids for c in results["beams"][0].outputs] == [c.token_ids for c in alone]
    assert results["beams"][0].num_prompt_tokens == len(PROMPT)
    plain = [t for o in results["plain"] for c in o.outputs for t in c.token_ids]
    assert plain == greedy_alone.token_ids
    engine.add_request("cut", PROMPT, SamplingParams(n=4, use_beam_search=True, max_tokens=30))
    for _ in range(3):
        engine.step()
    assert engine.abort("cut")
    assert not engine.has_unfinished() and engine.num_requests == 0
    assert engine.block_manager.usage == 0.0


def test_neither_the_prefix_cache_nor_max_num_seqs_changes_the_hypotheses(
    folder: str, llm: LLM
) -> None:
    """Without the cache each round recomputes its prompts; with fewer sequences at once
    than beams, a round's sub-requests take turns."""
    expected = [c.token_ids for c in ours(llm, PROMPT, 4, 7)]
    uncached = LLM(folder, num_kv_blocks=256, enable_prefix_caching=False)
    assert [c.token_ids for c in ours(uncached, PROMPT, 4, 7)] == expected
    narrow = LLM(folder, num_kv_blocks=256, max_num_seqs=3)
    assert [c.token_ids for c in ours(narrow, PROMPT, 4, 7)] == expected


def test_each_round_after_the_first_computes_one_token_per_beam(llm: LLM) -> None:
    """A beam's sub-request starts from the KV of the beam it extends (its blocks taken
    over, or shared with the partial block copied): a round is a decode, not a prefill."""
    engine = llm.engine
    engine.add_request("count", PROMPT, SamplingParams(n=4, use_beam_search=True, max_tokens=9))
    computed = []
    while engine.has_unfinished():
        engine.step()
        computed.append(engine.last_step_tokens)
    assert computed == [len(PROMPT)] + [4] * 8
    assert engine.block_manager.usage == 0.0


def test_a_cache_too_small_for_kept_blocks_still_finishes_the_search(
    folder: str, llm: LLM, caplog: pytest.LogCaptureFixture
) -> None:
    """Four blocks for three beams: a round's last sub-requests can only run once the
    finished ones give back the blocks they keep; the hypotheses stay the same."""
    expected = [c.token_ids for c in ours(llm, PROMPT, 3, 10)]
    small = LLM(folder, num_kv_blocks=4, max_model_len=64)
    with caplog.at_level("INFO", logger="engine.llm_engine"):
        assert [c.token_ids for c in ours(small, PROMPT, 3, 10)] == expected
    assert "give back the blocks they kept" in caplog.text
    assert small.engine.block_manager.usage == 0.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stop", ["x"]),
        ("prompt_logprobs", 0),
        ("presence_penalty", 0.5),
        ("repetition_penalty", 1.2),
        ("logit_bias", {5: 1.0}),
        ("allowed_token_ids", [5]),
        ("bad_words", ["x"]),
    ],
)
def test_knobs_beam_search_cannot_honour_are_refused(field: str, value: object) -> None:
    with pytest.raises(SamplingParamError, match="cannot be combined with use_beam_search"):
        SamplingParams(use_beam_search=True, **{field: value})
    SamplingParams(use_beam_search=True, temperature=0.7, top_p=0.9, top_k=5, seed=1)


def _searched(second_step_best: float) -> BeamSearch:
    """Width 2, end token 9: step 1 finishes (9,) at -0.1 and keeps (1,) -0.5, (2,) -0.6;
    step 2 offers (1, 3) at -0.5 + `second_step_best` and ends both beams with 9."""
    search = BeamSearch(width=2, max_new_tokens=50, end_token_ids=frozenset({9}))
    search.advance([[(9, -0.1), (1, -0.5), (2, -0.6), (3, -3.0), (4, -3.1)]])
    assert [h.token_ids for h in search.finished] == [(9,)]
    assert [b.token_ids for b in search.beams] == [(1,), (2,)]
    search.advance(
        [
            [(3, second_step_best), (9, -0.2), (4, -5.0), (5, -6.0), (6, -7.0)],
            [(9, -0.2), (3, -3.0), (4, -5.0), (5, -6.0), (6, -7.0)],
        ]
    )
    return search


def test_the_search_stops_once_no_live_beam_can_beat_the_finished() -> None:
    """HF's default heuristic: with k finished, stop when the best live beam scored at
    its current length is no better than the worst finished hypothesis."""
    search = _searched(-0.4)  # (1, 3) at -0.9, i.e. -0.45 at length 2
    # Candidates: (1, 9) -0.7 and (2, 9) -0.8 are the best two, both end: -0.35, -0.4.
    assert [(h.token_ids, h.score) for h in search.finished] == [((9,), -0.1), ((1, 9), -0.35)]
    assert search.done
    assert [h.end_token for h in search.results()] == [9, 9]


def test_only_the_best_k_candidates_may_finish_and_a_better_beam_goes_on() -> None:
    search = _searched(-0.1)  # (1, 3) at -0.6, -0.3 at length 2: it may still win
    # (1, 3) -0.6, (1, 9) -0.7, (2, 9) -0.8: (2, 9) ranks third of width 2, so it does
    # not finish although its score (-0.4) would have a place among the finished.
    assert [h.token_ids for h in search.finished] == [(9,), (1, 9)]
    assert not search.done
    assert [b.token_ids for b in search.beams] == [(1, 3), (2, 3)]


def test_the_length_limit_finishes_the_best_k() -> None:
    search = BeamSearch(width=2, max_new_tokens=1, end_token_ids=frozenset({9}))
    search.advance([[(4, -0.2), (9, -0.3), (5, -0.4), (6, -0.5)]])
    assert search.done
    assert [(h.token_ids, h.end_token) for h in search.results()] == [((4,), None), ((9,), 9)]
