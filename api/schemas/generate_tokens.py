"""vLLM's tokens-in, tokens-out endpoint (POST /inference/v1/generate): request, response
and streaming chunk shapes.

An RL trainer or a disaggregated front end renders its own prompts: it sends token ids
and vLLM's `SamplingParams` as they are, and reads token ids back, with no chat template
and no text in between.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.request_id_header import USABLE_ID_PATTERN
from api.schemas.chat import ChatLogprobs
from api.schemas.common import PromptLogprob, StreamOptions, UsageInfo


class GenerateTokensRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # The response's id is "generate-tokens-<request_id>" (a client's X-Request-Id wins).
    request_id: str | None = Field(default=None, pattern=USABLE_ID_PATTERN)
    token_ids: list[int] = Field(min_length=1)
    # vLLM's SamplingParams, field for field (api/tokens_sampling.py reads them).
    sampling_params: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    cache_salt: str | None = Field(default=None, min_length=1)
    priority: int = 0
    # Disaggregated serving's: refused when set (no KV transfer, no media inputs here).
    kv_transfer_params: dict[str, Any] | None = None
    features: dict[str, Any] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage)


class GenerateTokensChoice(BaseModel):
    index: int
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = "stop"
    token_ids: list[int] | None = None


class GenerateTokensResponse(BaseModel):
    """vLLM's `GenerateResponse`: `request_id`, plus the `id`, `created`, `model` and
    `usage` its newer releases add, so a client of either reads it."""

    request_id: str
    id: str
    object: str = "generate_tokens"
    created: int
    model: str
    choices: list[GenerateTokensChoice]
    usage: UsageInfo
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = None
    kv_transfer_params: dict[str, Any] | None = None


class GenerateTokensStreamChoice(BaseModel):
    index: int
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    token_ids: list[int] | None = None


class GenerateTokensChunk(BaseModel):
    request_id: str
    choices: list[GenerateTokensStreamChoice]
    usage: UsageInfo | None = None
