"""vLLM's SamplingParams read into the engine's for /inference/v1/generate: every field
that changes the output is honoured or refused by name, never dropped."""

from __future__ import annotations

import pytest

from api.errors import ApiError
from api.reasoning_parser import ThinkStart
from api.tokens_sampling import stated_think_start, tokens_sampling

VOCAB = 1000


def test_vllms_fields_map_one_to_one_and_its_defaults_apply() -> None:
    params = tokens_sampling(
        {
            "n": 2,
            "temperature": 0.7,
            "top_k": 5,
            "stop": "end",
            "stop_token_ids": [3],
            "logit_bias": {"7": -100},
            "repetition_penalty": 1.1,
            "allowed_token_ids": [1, 2, 3],
            "bad_words": ["no"],
        },
        VOCAB,
    )
    assert (params.n, params.temperature, params.top_k) == (2, 0.7, 5)
    assert params.stop == ("end",) and params.stop_token_ids == (3,)
    assert params.logit_bias == {7: -100.0} and params.repetition_penalty == 1.1
    assert params.allowed_token_ids == (1, 2, 3) and params.bad_words == ("no",)
    default = tokens_sampling({}, VOCAB)
    assert (default.temperature, default.top_p, default.max_tokens) == (1.0, 1.0, None)


def test_fields_that_change_nothing_or_are_null_are_accepted() -> None:
    tokens_sampling(
        {
            "detokenize": False,
            "output_kind": 1,
            "spaces_between_special_tokens": True,
            "structured_outputs": None,
            "logits_processors": None,
            "truncate_prompt_tokens": None,
        },
        VOCAB,
    )


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ({"truncate_prompt_tokens": 10}, "sampling_params.truncate_prompt_tokens"),
        ({"logits_processors": ["x"]}, "sampling_params.logits_processors"),
        ({"structured_outputs": {"json": 5}}, "sampling_params.structured_outputs"),
        (
            {"structured_outputs": {"structural_tag": {}}},
            "sampling_params.structured_outputs.structural_tag",
        ),
        ({"n": "two"}, "sampling_params.n"),
        ({"logit_bias": {"x": 1}}, "sampling_params.logit_bias.x"),
        ({"stop_token_ids": [VOCAB]}, "sampling_params.stop_token_ids"),
        ({"prompt_logprobs": -1}, "sampling_params.prompt_logprobs"),
    ],
)
def test_the_rest_is_a_400_naming_the_field(raw: dict, param: str) -> None:
    with pytest.raises(ApiError) as refused:
        tokens_sampling(raw, VOCAB)
    assert refused.value.status == 400
    assert refused.value.param == param


def test_minus_one_asks_for_the_vocabulary_where_the_server_allows_it() -> None:
    params = tokens_sampling({"logprobs": -1, "prompt_logprobs": -1}, VOCAB, max_logprobs=-1)
    assert params.logprobs == params.prompt_logprobs == VOCAB


def test_fields_left_off_are_accepted_whatever_they_are() -> None:
    """A client serializing all of vLLM's SamplingParams sends its unused fields off."""
    tokens_sampling(
        {"skip_reading_prefix_cache": False, "extra_args": {}, "truncate_prompt_tokens": 0},
        VOCAB,
    )
    with pytest.raises(ApiError):
        tokens_sampling({"skip_reading_prefix_cache": True}, VOCAB)


def test_a_left_out_max_tokens_takes_the_default_given_and_a_named_one_is_kept() -> None:
    assert tokens_sampling({}, VOCAB, default_max_tokens=7).max_tokens == 7
    assert tokens_sampling({"max_tokens": 50}, VOCAB, default_max_tokens=7).max_tokens == 50


def test_a_constraint_is_read_as_chats_structured_outputs() -> None:
    params = tokens_sampling(
        {"structured_outputs": {"choice": ["yes", "no"], "disable_any_whitespace": True}}, VOCAB
    )
    assert params.structured_output is not None
    assert params.structured_output.kind == "choice"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    json_params = tokens_sampling({"structured_outputs": {"json": schema}}, VOCAB)
    assert json_params.structured_output is not None
    assert json_params.structured_output.kind == "json"


def test_a_stated_reasoning_binding_is_read_and_checked() -> None:
    assert stated_think_start({}) is None
    assert stated_think_start({"extra_args": {"plugin": 1}}) is None
    stated = {"extra_args": {"conveyor_after_thinking": "answer"}}
    assert stated_think_start(stated) is ThinkStart.ANSWER
    tokens_sampling(stated, VOCAB)  # extra_args are vLLM's, for plugins: accepted
    with pytest.raises(ApiError) as refused:
        stated_think_start({"extra_args": {"conveyor_after_thinking": "later"}})
    assert refused.value.param == "sampling_params.extra_args.conveyor_after_thinking"
