"""OpenAI (legacy) completions: request, response and streaming chunk shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.errors import ApiError, not_supported
from api.schemas.common import (
    ChunkBase,
    PromptLogprob,
    SamplingRequest,
    UsageInfo,
    omitted_when_none,
)

# One prompt, several prompts, one token-id prompt, or several token-id prompts.
Prompt = str | list[str] | list[int] | list[list[int]]

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
MAX_PROMPTS = 256  # prompts in one request; each becomes its own queued request


class CompletionRequest(SamplingRequest):
    prompt: Prompt
    suffix: str | None = None
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    add_special_tokens: bool = True

    def check_supported(self) -> None:
        super().check_supported()
        if self.suffix:
            raise not_supported("suffix", "suffix (insertion)")
        if self.best_of is not None and self.best_of != self.n:
            raise not_supported("best_of", "best_of other than n")
        if self.max_tokens == 0 and not self.echo:
            raise ApiError(
                400, "max_tokens must be at least 1 (0 only with echo)", param="max_tokens"
            )

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list, each text or token ids; choices are numbered in this order."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise ApiError(400, "prompt must not be empty", param="prompt")
        if isinstance(prompt[0], int):
            return [list(prompt)]  # type: ignore[arg-type]
        if len(prompt) > MAX_PROMPTS:
            raise ApiError(400, f"at most {MAX_PROMPTS} prompts per request", param="prompt")
        out: list[str | list[int]] = []
        for item in prompt:
            if isinstance(item, list) and not item:
                raise ApiError(400, "a token-id prompt must not be empty", param="prompt")
            out.append(item)  # type: ignore[arg-type]
        return out


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    # vLLM's return_token_ids (a stream: the prompt's in each choice's first chunk, each
    # chunk's new tokens) and prompt_logprobs; absent unless asked for.
    prompt_token_ids: list[int] | None = omitted_when_none()
    token_ids: list[int] | None = omitted_when_none()
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = omitted_when_none()


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class CompletionChunk(ChunkBase):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str | None = None
