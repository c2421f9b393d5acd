"""During a rolling upgrade the API queues for workers of the release before it too:
what a request does not use must not reach them as a field they would refuse."""

from __future__ import annotations

import json

import pytest

from engine.pooling_params import PoolingParams
from engine.sampling_params import SamplingParamError, SamplingParams
from engine.structured_output import StructuredOutput
from workers.intake import pooling_params_from_wire, sampling_params_from_wire

# What workers of the release before vLLM's allowed_token_ids/bad_words/activation know.
OLDER_SAMPLING_FIELDS = frozenset(
    {
        "n", "temperature", "top_p", "top_k", "min_p", "presence_penalty",
        "frequency_penalty", "repetition_penalty", "logit_bias", "seed", "max_tokens",
        "min_tokens", "stop", "stop_token_ids", "ignore_eos", "include_stop_str_in_output",
        "skip_special_tokens", "logprobs", "prompt_logprobs", "structured_output",
    }
)  # fmt: skip
OLDER_POOLING_FIELDS = frozenset({"dimensions", "normalize"})


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),
        SamplingParams(
            n=2,
            temperature=0.7,
            logit_bias={3: 1.0},
            stop=("x",),
            logprobs=2,
            prompt_logprobs=1,
            structured_output=StructuredOutput(kind="regex", spec="a+"),
        ),
    ],
)
def test_requests_without_the_new_fields_reach_older_workers(params: SamplingParams) -> None:
    wire = json.loads(json.dumps(params.wire()))
    assert set(wire) <= OLDER_SAMPLING_FIELDS
    assert sampling_params_from_wire(wire) == params
    assert set(PoolingParams(dimensions=8).wire()) <= OLDER_POOLING_FIELDS


def test_the_new_fields_travel_when_set_and_derived_ones_never() -> None:
    params = SamplingParams(
        allowed_token_ids=(1, 2), bad_words=("Paris",), bad_words_token_ids=((5, 6),)
    )
    wire = json.loads(json.dumps(params.wire()))
    assert wire["allowed_token_ids"] == [1, 2] and wire["bad_words"] == ["Paris"]
    assert "bad_words_token_ids" not in wire
    assert sampling_params_from_wire(wire).bad_words_token_ids is None  # the engine's work
    with pytest.raises(SamplingParamError, match="bad_words_token_ids"):
        sampling_params_from_wire({**wire, "bad_words_token_ids": [[5, 6]]})
    pooling = json.loads(json.dumps(PoolingParams(activation=False).wire()))
    assert pooling_params_from_wire(pooling) == PoolingParams(activation=False)
