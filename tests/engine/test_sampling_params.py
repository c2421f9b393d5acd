"""SamplingParams' ranges: vLLM's where OpenAI has no such field."""

from __future__ import annotations

import math

import pytest

from engine.sampling_params import SamplingParamError, SamplingParams


@pytest.mark.parametrize("penalty", [1e-3, 1.0, 2.0, 2.5, 10.0])
def test_repetition_penalty_takes_any_positive_number_as_vllm_does(penalty: float) -> None:
    assert SamplingParams(repetition_penalty=penalty).repetition_penalty == penalty


@pytest.mark.parametrize("penalty", [0.0, -1.0, math.inf, math.nan])
def test_repetition_penalty_must_be_a_positive_number(penalty: float) -> None:
    with pytest.raises(SamplingParamError, match="repetition_penalty") as caught:
        SamplingParams(repetition_penalty=penalty)
    assert caught.value.param == "repetition_penalty"


@pytest.mark.parametrize("temperature", [0.0, 1.0, 2.0, 2.5, 5.0])
def test_temperature_past_openais_2_is_taken_as_vllm_takes_it(temperature: float) -> None:
    assert SamplingParams(temperature=temperature).temperature == temperature


@pytest.mark.parametrize("temperature", [-0.1, math.inf, math.nan])
def test_temperature_must_be_a_non_negative_number(temperature: float) -> None:
    with pytest.raises(SamplingParamError, match="temperature"):
        SamplingParams(temperature=temperature)
