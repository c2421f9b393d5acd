"""vLLM's `SamplingParams` JSON and the engine's (engine/sampling_params.py, which speaks
the same vocabulary): read as POST /inference/v1/generate receives them, and written as
the render endpoints hand them out (api/routes/render.py), so that a render's output
posted to /inference/v1/generate samples as the chat or completion would have.

vLLM's own defaults apply where a field is left out (temperature 1, no generation-config
defaults), except `max_tokens`: left out, it is what the context leaves, or the served
max_new_tokens where that is less, as vLLM's endpoint makes it. Fields that change
nothing here are accepted (`detokenize`: the ids come back either way), and so is any
field left off (null, false, 0, empty: a client serializing all of vLLM's fields sends
the unused ones so); a field that would change the output and that this server does not
implement is a 400 naming it, never silently dropped.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from api.errors import ApiError, validation_error
from api.reasoning_parser import ThinkStart
from api.schemas.structured_output import StructuredOutputFields, StructuredOutputsParams
from engine.sampling_params import DEFAULT_MAX_LOGPROBS, SamplingParamError, SamplingParams
from engine.structured_output import StructuredOutput

PARAM = "sampling_params"
# Where a render writes the reasoning binding it computed, in vLLM's `extra_args` (free
# for plugins; vLLM itself reads none): "answer", "inside", "if_opened" or "harmony".
AFTER_THINKING_ARG = "conveyor_after_thinking"
# vLLM fields that do not change which tokens come back.
_NO_EFFECT = frozenset(
    {"detokenize", "output_kind", "spaces_between_special_tokens", "flat_logprobs", "skip_clone"}
)


class _VllmSamplingParams(BaseModel):
    """The fields read, typed (a wrong type is a 400, not a crash further in)."""

    model_config = ConfigDict(extra="allow")

    n: int = 1
    best_of: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = None
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    # vLLM's StructuredOutputsParams: json, json_object, regex, choice or grammar.
    structured_outputs: StructuredOutputsParams | None = None
    # vLLM's, for plugins: only AFTER_THINKING_ARG is read (stated_think_start).
    extra_args: dict[str, Any] | None = None


def tokens_sampling(
    raw: dict[str, Any],
    vocab_size: int,
    max_logprobs: int = DEFAULT_MAX_LOGPROBS,
    default_max_tokens: int | None = None,
) -> SamplingParams:
    """`default_max_tokens`: what a left-out max_tokens is (None: until the context is
    full); one the request names is taken as it is, as vLLM's endpoint takes it."""
    try:
        read = _VllmSamplingParams.model_validate(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": (PARAM, *e["loc"])} for e in exc.errors()]
        raise validation_error(errors) from None
    for name, value in (read.model_extra or {}).items():
        # A client that sends all of vLLM's fields sends the unused ones off (falsy).
        if value and name not in _NO_EFFECT:
            raise ApiError(
                400,
                f"{PARAM}.{name} is not supported by this server",
                param=f"{PARAM}.{name}",
                code="unsupported_parameter",
            )
    if read.best_of is not None and read.best_of != read.n:
        param = f"{PARAM}.best_of"
        raise ApiError(400, f"{param} other than n is not supported", param=param)
    if read.max_tokens is not None and read.max_tokens < 1:
        param = f"{PARAM}.max_tokens"
        raise ApiError(400, f"{param} must be at least 1", param=param)
    prompt_logprobs = read.prompt_logprobs
    if prompt_logprobs == -1:
        prompt_logprobs = vocab_size  # vLLM's -1: every token
    logprobs = read.logprobs
    if logprobs == -1:
        logprobs = vocab_size
    constraint = _constraint(read.structured_outputs)
    try:
        params = SamplingParams(
            n=read.n,
            temperature=read.temperature,
            top_p=read.top_p,
            top_k=read.top_k,
            min_p=read.min_p,
            presence_penalty=read.presence_penalty,
            frequency_penalty=read.frequency_penalty,
            repetition_penalty=read.repetition_penalty,
            logit_bias=read.logit_bias or None,
            seed=read.seed,
            max_tokens=read.max_tokens if read.max_tokens is not None else default_max_tokens,
            min_tokens=read.min_tokens,
            stop=[read.stop] if isinstance(read.stop, str) else list(read.stop or []),
            stop_token_ids=list(read.stop_token_ids or []),
            ignore_eos=read.ignore_eos,
            include_stop_str_in_output=read.include_stop_str_in_output,
            skip_special_tokens=read.skip_special_tokens,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            allowed_token_ids=read.allowed_token_ids,
            bad_words=tuple(read.bad_words or ()),
            structured_output=constraint,
        )
        params.validate_against_vocab(vocab_size, max_logprobs)
    except SamplingParamError as exc:
        param = f"{PARAM}.{exc.param}"
        raise ApiError(400, f"{param}: {str(exc).split(': ', 1)[-1]}", param=param) from None
    return params


def stated_think_start(raw: dict[str, Any]) -> ThinkStart | None:
    """The reasoning binding a render stated (None: none; the prompt's end decides)."""
    extra = raw.get("extra_args")
    value = extra.get(AFTER_THINKING_ARG) if isinstance(extra, dict) else None
    if value is None:
        return None
    try:
        return ThinkStart(value)
    except ValueError:
        param = f"{PARAM}.extra_args.{AFTER_THINKING_ARG}"
        choices = ", ".join(start.value for start in ThinkStart)
        raise ApiError(400, f"{param} must be one of {choices}", param=param) from None


def _constraint(params: StructuredOutputsParams | None) -> StructuredOutput | None:
    """The constraint, read as chat's `structured_outputs` is; its 400 names the field
    under sampling_params."""
    if params is None:
        return None
    try:
        return StructuredOutputFields(structured_outputs=params).structured_output()[0]
    except ApiError as exc:
        param = f"{PARAM}.{exc.param}" if exc.param else PARAM
        detail = exc.message.removeprefix(f"{exc.param}: ") if exc.param else exc.message
        raise ApiError(exc.status, f"{param}: {detail}", param=param, code=exc.code) from None


def vllm_sampling_params(params: SamplingParams) -> dict[str, Any]:
    """`params` as vLLM's SamplingParams JSON (every field `tokens_sampling` reads back to
    the same engine parameters); a constraint's reasoning binding goes in `extra_args`."""
    constraint = params.structured_output
    return {
        "n": params.n,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "repetition_penalty": params.repetition_penalty,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "min_p": params.min_p,
        "seed": params.seed,
        "stop": list(params.stop),
        "stop_token_ids": list(params.stop_token_ids),
        "ignore_eos": params.ignore_eos,
        "max_tokens": params.max_tokens,
        "min_tokens": params.min_tokens,
        "logprobs": params.logprobs,
        "prompt_logprobs": params.prompt_logprobs,
        "detokenize": True,
        "skip_special_tokens": params.skip_special_tokens,
        "spaces_between_special_tokens": True,
        "include_stop_str_in_output": params.include_stop_str_in_output,
        "logit_bias": (
            {str(token): bias for token, bias in params.logit_bias.items()}
            if params.logit_bias
            else None
        ),
        "allowed_token_ids": (
            list(params.allowed_token_ids) if params.allowed_token_ids is not None else None
        ),
        "bad_words": list(params.bad_words) or None,
        "structured_outputs": _vllm_constraint(constraint) if constraint is not None else None,
        # Computed from the model's own turn (chat) or not at all (completions): the
        # prompt's end posted alone could decide otherwise.
        "extra_args": (
            {AFTER_THINKING_ARG: constraint.after_thinking or ThinkStart.ANSWER.value}
            if constraint is not None
            else None
        ),
    }


def _vllm_constraint(constraint: StructuredOutput) -> dict[str, Any]:
    spec: Any = constraint.spec
    if constraint.kind in ("json", "choice"):
        spec = json.loads(spec)  # a schema, or the options, kept as JSON text
    return {
        constraint.kind: spec,
        "disable_any_whitespace": constraint.compact_json,
        "whitespace_pattern": constraint.whitespace_pattern,
    }
