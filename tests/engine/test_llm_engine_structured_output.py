"""Structured output through the engine: every constraint holds, and constraining some rows
changes nothing else (batch neighbours, chunked prefill, preemption, n > 1)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.llm import LLM, greedy
from engine.sampling_params import SamplingParamError, SamplingParams
from engine.structured_output import StructuredOutput

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", "none"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
    },
    "required": ["name", "age", "pet", "tags"],
    "additionalProperties": False,
}
DATE = r"\d{4}-\d{2}-\d{2}"
ANSWERS = ["yes", "no", "maybe later"]
# GBNF, as llama.cpp and vLLM's guided_grammar take it.
ARITHMETIC = 'root ::= num (op num){0,3}\nnum ::= [1-9] [0-9]?\nop ::= " + " | " * "'


def _valid_person(text: str) -> bool:
    value = json.loads(text)
    return (
        list(value) == ["name", "age", "pet", "tags"]  # the schema's order
        and isinstance(value["name"], str)
        and len(value["name"]) <= 12
        and isinstance(value["age"], int)
        and 0 <= value["age"] <= 120
        and value["pet"] in ("cat", "dog", "none")
        and isinstance(value["tags"], list)
        and len(value["tags"]) <= 3
        and all(isinstance(t, str) and len(t) <= 5 for t in value["tags"])
    )


CASES: list[tuple[StructuredOutput, Callable[[str], bool]]] = [
    (StructuredOutput.json_schema(PERSON), _valid_person),
    (StructuredOutput("regex", DATE), lambda t: re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", t)),
    (StructuredOutput.choice(ANSWERS), lambda t: t in ANSWERS),
    (
        StructuredOutput("grammar", ARITHMETIC),
        lambda t: re.fullmatch(r"[1-9][0-9]?( [+*] [1-9][0-9]?){0,3}", t),
    ),
    (
        StructuredOutput.json_schema(PERSON, compact_json=True),
        lambda t: _valid_person(t) and not re.search(r"[\n\r\t]", t),
    ),
]
IDS = ["json_schema", "regex", "choice", "gbnf_grammar", "compact_json"]


@pytest.fixture(scope="module")
def llm(make_random_model: Callable[[str], Path]) -> LLM:
    return LLM(str(make_random_model("llama")), kv_cache_memory=64 << 20, max_model_len=256)


def _prompts(llm: LLM, count: int) -> list[list[int]]:
    words = ["Describe", "a person", "as JSON", "today", "please", "quickly", "now", "ok"]
    return [llm.tokenizer.encode(" ".join(words[: 2 + i % 6]) + f" #{i}") for i in range(count)]


def _constrained(constraint: StructuredOutput, **kwargs: Any) -> SamplingParams:
    return greedy(400, structured_output=constraint, **kwargs)


@pytest.mark.parametrize(("constraint", "valid"), CASES, ids=IDS)
def test_greedy_output_satisfies_the_constraint(
    llm: LLM, constraint: StructuredOutput, valid: Callable[[str], bool]
) -> None:
    results = llm.generate(_prompts(llm, 3), _constrained(constraint))
    for result in results:
        choice = result.choices[0]
        assert choice.finish_reason == "stop", choice.text
        assert valid(choice.text), choice.text


def test_random_model_unconstrained_would_not_comply(llm: LLM) -> None:
    """The constraint, not luck, makes the outputs above valid."""
    for result in llm.generate(_prompts(llm, 3), greedy(40)):
        with pytest.raises(ValueError):
            json.loads(result.text)


@pytest.mark.parametrize(("constraint", "valid"), CASES[:3], ids=IDS[:3])
def test_seeded_sampling_with_n_choices_satisfies_the_constraint(
    llm: LLM, constraint: StructuredOutput, valid: Callable[[str], bool]
) -> None:
    params = SamplingParams(
        temperature=1.0, top_p=0.95, n=3, seed=7, max_tokens=400, structured_output=constraint
    )
    (result,) = llm.generate(_prompts(llm, 1), params)
    assert [c.index for c in result.choices] == [0, 1, 2]
    for choice in result.choices:
        assert choice.finish_reason == "stop", choice.text
        assert valid(choice.text), choice.text


def test_constrained_and_free_rows_batched_match_each_alone(llm: LLM) -> None:
    prompts = _prompts(llm, 8)
    params = [
        _constrained(CASES[i % len(CASES)][0]) if i % 2 else greedy(24, min_tokens=24)
        for i in range(len(prompts))
    ]
    alone = [llm.generate([p], q)[0].token_ids for p, q in zip(prompts, params, strict=True)]
    batched = [r.token_ids for r in llm.generate(prompts, params)]
    assert batched == alone


def test_chunked_prefill_and_preemption_keep_constrained_output(
    llm: LLM, make_random_model: Callable[[str], Path]
) -> None:
    prompts = _prompts(llm, 8)
    params = [_constrained(CASES[i % len(CASES)][0]) for i in range(len(prompts))]
    expected = [llm.generate([p], q)[0].token_ids for p, q in zip(prompts, params, strict=True)]
    squeezed = LLM(
        str(make_random_model("llama")),
        num_kv_blocks=8,
        max_model_len=128,
        max_num_batched_tokens=8,
    )
    got = [r.token_ids for r in squeezed.generate(prompts, params)]
    assert squeezed.engine.stats().num_preemptions > 0
    assert got == expected


def test_min_tokens_does_not_hold_a_finished_constraint_open(llm: LLM) -> None:
    """min_tokens masks EOS; under a choice that is complete, EOS is all that is left."""
    (result,) = llm.generate(
        _prompts(llm, 1), _constrained(StructuredOutput.choice(ANSWERS), min_tokens=50)
    )
    assert result.choices[0].finish_reason == "stop"
    assert result.text in ANSWERS


def test_max_tokens_cuts_a_constrained_answer_with_length(llm: LLM) -> None:
    (result,) = llm.generate(
        _prompts(llm, 1), greedy(5, structured_output=StructuredOutput.json_schema(PERSON))
    )
    assert result.choices[0].finish_reason == "length"
    assert len(result.token_ids) == 5
    assert result.text.startswith('{"name"') or result.text.startswith("{")


@pytest.mark.parametrize(
    "constraint",
    [
        StructuredOutput("regex", "[0-9"),
        StructuredOutput("json", '{"type": "objekt"}'),
        StructuredOutput("grammar", "root ::= missing_rule"),
    ],
    ids=["regex", "json_schema", "grammar"],
)
def test_a_constraint_that_cannot_compile_is_refused_up_front(
    llm: LLM, constraint: StructuredOutput
) -> None:
    with pytest.raises(SamplingParamError) as caught:
        llm.engine.add_request("bad", [1, 2, 3], _constrained(constraint))
    assert caught.value.param == "structured_output"
    assert not llm.engine.has_unfinished()


def test_a_complete_constraint_ends_on_eos_without_its_text(llm: LLM) -> None:
    """With ignore_eos (EOS an ordinary token) and special tokens shown, the EOS a finished
    constraint allows still ends the choice, and its text stays out of the answer."""
    eos = llm.engine.model_config.eos_token_ids[0]
    params = _constrained(
        StructuredOutput("regex", "[a-c]{1,40}"),
        ignore_eos=True,
        skip_special_tokens=False,
        logit_bias={eos: 100.0},  # EOS as soon as the constraint allows it: after one token
    )
    (result,) = llm.generate(_prompts(llm, 1), params)
    assert result.choices[0].finish_reason == "stop"
    assert result.token_ids[-1] == eos and len(result.token_ids) == 2
    assert re.fullmatch("[a-c]{1,40}", result.text), result.text


def test_a_matcher_that_fails_ends_the_choice_with_an_error(
    llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llguidance can fail mid-answer (a grammar over its per-step limits): the choice ends
    with finish_reason "error" and the reason, never as a quiet "stop" with bad text."""
    engine = llm.engine
    real = engine.grammars.matcher
    made = []

    def tracked(constraint: StructuredOutput) -> Any:
        matcher = real(constraint)
        made.append(matcher)
        return matcher

    monkeypatch.setattr(engine.grammars, "matcher", tracked)
    engine.add_request("fails", _prompts(llm, 1)[0], _constrained(CASES[0][0]))
    outputs = engine.step()  # prefill: the first token, consumed by the matcher
    assert not outputs[0].finished
    made[0].consume_token(llm.tokenizer.vocab_size - 1)  # a token the grammar refuses
    assert made[0].is_error()
    finished = None
    while engine.has_unfinished():
        for out in engine.step():
            finished = out
    assert finished is not None
    choice = finished.outputs[-1]
    assert choice.finish_reason == "error"
    assert isinstance(choice.stop_reason, str)
    assert choice.stop_reason.startswith("structured output failed:")


def test_a_reasoning_model_thinks_freely_before_a_constrained_answer(llm: LLM) -> None:
    """With `after_thinking` the text before </think> is free: the greedy tokens are the
    unconstrained ones, which a JSON constraint alone would forbid, up to the first
    special token (the grammar spells text, so it cannot allow one, EOS included)."""
    prompts = _prompts(llm, 6)
    free = llm.generate(prompts, greedy(12, ignore_eos=True))
    assert all("</think>" not in r.text for r in free)
    schema = StructuredOutput.json_schema({"type": "object"})
    thinking = dataclasses.replace(schema, after_thinking="inside")
    first = llm.generate(prompts, greedy(12, ignore_eos=True, structured_output=thinking))
    added = llm.tokenizer.hf_tokenizer.added_tokens_decoder
    special = {i for i, token in added.items() if token.special}
    whole = 0
    for ours, unconstrained in zip(first, free, strict=True):
        ids = unconstrained.token_ids
        free_run = next((i for i, t in enumerate(ids) if t in special), len(ids))
        assert ours.token_ids[:free_run] == ids[:free_run]
        assert not special & set(ours.token_ids)
        whole += free_run == len(ids)
    assert whole >= 3  # most outputs ran free from end to end
    bound = llm.generate(prompts, greedy(12, ignore_eos=True, structured_output=schema))
    assert all(r.token_ids[:3] != f.token_ids[:3] for r, f in zip(bound, free, strict=True))


def test_gpt_oss_answers_a_constraint_in_its_final_message(
    make_random_model: Callable[[str], Path],
) -> None:
    """A random gpt-oss model under the harmony frame: the final channel's message (after
    an analysis one, which <|end|>, biased up, cuts short if the model opens it) matches
    the schema, and the harmony reasoning split reads it as the answer."""
    from api.reasoning_parser import ThinkStart, split_reasoning

    llm = LLM(str(make_random_model("gpt_oss")), kv_cache_memory=64 << 20)
    tokenizer = llm.tokenizer
    end = tokenizer.hf_tokenizer.convert_tokens_to_ids("<|end|>")
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["n"],
        "additionalProperties": False,
    }
    compact = StructuredOutput.json_schema(schema, compact_json=True)
    harmony = dataclasses.replace(compact, after_thinking="harmony")
    messages = [{"role": "user", "content": "A number?"}]
    prompt = tokenizer.encode(tokenizer.render_chat(messages, add_generation_prompt=True))
    params = greedy(
        40, structured_output=harmony, logit_bias={end: 100.0}, skip_special_tokens=False
    )
    text = llm.generate([prompt], params)[0].text
    assert text.startswith("<|channel|>")
    _, answer = split_reasoning(text, ThinkStart.HARMONY)
    assert isinstance(json.loads(answer)["n"], int), text
