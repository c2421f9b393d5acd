"""Request fields and response pieces shared by chat and completions.

Field names follow OpenAI, plus vLLM's sampling extras (top_k, min_p, ...) so
clients written for `vllm serve` work unchanged. Unknown fields are ignored
(as vLLM does), but features we do not implement are declared here so they
are refused with a 400 rather than silently dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from api.errors import ApiError, not_supported
from api.prompt_truncation import check_truncate_prompt_tokens
from api.request_id_header import USABLE_ID_PATTERN
from api.schemas.null_means_default import NullMeansDefault
from api.schemas.structured_output import StructuredOutputFields

if TYPE_CHECKING:
    from api.auth import Principal
    from conveyor.settings import Settings

# vLLM request fields we do not implement; any non-empty value is refused.
_REFUSED_EXTRAS: dict[str, str] = {
    "logits_processors": "custom logits processors",
}


def check_priority(priority: int, settings: Settings) -> None:
    """vLLM's --scheduling-policy fcfs: a request naming a priority other than 0 is a 400."""
    if settings.scheduling_policy == "fcfs" and priority != 0:
        raise ApiError(
            400,
            f"priority {priority}: priority scheduling is not enabled on this server "
            "(--scheduling-policy priority)",
            param="priority",
        )


def check_tenant_priority(priority: int, principal: Principal) -> None:
    """A project key's request may only lower its priority (0, the default, or more;
    lower numbers run first): otherwise any tenant could run ahead of every other
    tenant's requests, and have theirs preempted. Trusted callers (no tenancy, the
    static --api-key) may raise it, as in vLLM."""
    if priority < 0 and principal.is_project:
        raise ApiError(
            400,
            f"priority {priority}: a project's requests may only lower their priority "
            "(0 or more), so that no project runs ahead of the others",
            param="priority",
        )


class StreamOptions(NullMeansDefault):
    include_usage: bool = False
    continuous_usage_stats: bool = False

    @property
    def continuous_usage(self) -> bool:
        """vLLM's: per-chunk usage is a refinement of include_usage, never on without it."""
        return self.include_usage and self.continuous_usage_stats


class SamplingRequest(StructuredOutputFields):
    """What chat and completions requests share: the model, streaming and sampling knobs."""

    model_config = ConfigDict(extra="ignore")

    # Optional, as in vLLM: left out, the one model served (catalog.default_model).
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = None
    # vLLM extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # vLLM's: logprobs name tokens `token_id:N` (None: the server's
    # --return-tokens-as-token-ids).
    return_tokens_as_token_ids: bool | None = None
    priority: int = 0
    # vLLM's: only requests with the same salt (in the same project) share cached prompt
    # blocks (api/cache_salt.py).
    cache_salt: str | None = Field(default=None, min_length=1)
    # vLLM's: the response's id is "<chatcmpl|cmpl>-<request_id>" (a client's X-Request-Id
    # header wins), so a client can name it before the answer comes (api/response_ids.py).
    request_id: str | None = Field(default=None, pattern=USABLE_ID_PATTERN)
    # vLLM's: only these token ids may be sampled.
    allowed_token_ids: list[int] | None = None
    # vLLM's: words the answer must not contain (engine/bad_words.py).
    bad_words: list[str] | None = None
    # vLLM's: each prompt token's logprob, rank and this many alternatives (-1: the
    # vocabulary), in vLLM's shape (api/prompt_logprobs.py); not when streaming.
    prompt_logprobs: int | None = None

    @property
    def answered_prompt_logprobs(self) -> int | None:
        """The prompt_logprobs the answer carries: none in a stream (only 0 gets there)."""
        return None if self.stream else self.prompt_logprobs

    # vLLM's: the answer also carries the prompt's token ids and each choice's (a stream:
    # the prompt's in its first chunk, each chunk its own new ones).
    return_token_ids: bool | None = None
    # vLLM's: beam search of width n (engine/beam_search.py, HF's algorithm); each of
    # the n hypotheses is a choice, all sent when the search ends.
    use_beam_search: bool = False
    length_penalty: float = 1.0
    # vLLM's: keep only the prompt's last k tokens (-1: the model's length), cut after
    # the chat template is applied (api/prompt_truncation.py).
    truncate_prompt_tokens: int | None = None
    # refused vLLM extras (see _REFUSED_EXTRAS)
    logits_processors: Any = None

    def check_supported(self) -> None:
        """Refuse what we cannot honour; a silently ignored constraint gives wrong output."""
        for name, what in _REFUSED_EXTRAS.items():
            if getattr(self, name) not in (None, False, [], {}, ""):
                raise not_supported(name, what)
        check_truncate_prompt_tokens(self.truncate_prompt_tokens)
        if self.stream_options is not None and not self.stream:
            raise ApiError(
                400, "stream_options is only allowed when stream is true", param="stream_options"
            )
        if self.prompt_logprobs is not None:
            if self.prompt_logprobs < -1:
                raise ApiError(
                    400,
                    f"prompt_logprobs must be -1 (the vocabulary) or more, got "
                    f"{self.prompt_logprobs}",
                    param="prompt_logprobs",
                )
            if self.stream and self.prompt_logprobs != 0:
                # vLLM's rule: 0 (the prompt token alone) is accepted, and gives nothing.
                raise ApiError(
                    400,
                    "prompt_logprobs are not available when stream is true",
                    param="prompt_logprobs",
                )

    def apply_server_defaults(self, settings: Settings) -> None:
        """vLLM's --return-tokens-as-token-ids (where the request does not say),
        --scheduling-policy fcfs (no `priority` but 0) and --enable-force-include-usage
        (every stream ends with usage)."""
        if self.return_tokens_as_token_ids is None:
            self.return_tokens_as_token_ids = settings.return_tokens_as_token_ids
        check_priority(self.priority, settings)
        if settings.enable_force_include_usage and self.stream:
            options = self.stream_options or StreamOptions()
            self.stream_options = options.model_copy(update={"include_usage": True})

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage)


def omitted_when_none() -> Any:
    """A field that defaults to None and is left out of the JSON while None: vLLM's
    extras (token ids, prompt logprobs) appear only in answers that asked for them."""
    return Field(default=None, exclude_if=lambda value: value is None)


class PromptLogprob(BaseModel):
    """One entry of vLLM's `prompt_logprobs`: a token's logprob, its rank among the
    position's candidates (1: the most likely) and its text."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    # Only with a reasoning parser (absent otherwise): how many completion tokens
    # were thinking.
    completion_tokens_details: CompletionTokensDetails | None = Field(
        default=None, exclude_if=lambda details: details is None
    )

    @classmethod
    def of(
        cls,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        reasoning_tokens: int | None = None,
    ) -> UsageInfo:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
            completion_tokens_details=(
                None
                if reasoning_tokens is None
                else CompletionTokensDetails(reasoning_tokens=reasoning_tokens)
            ),
        )


class ChunkBase(BaseModel):
    """Streaming chunks omit `usage` unless it was asked for, as OpenAI does."""

    usage: UsageInfo | None = None

    @model_serializer(mode="wrap")
    def _drop_absent_usage(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("usage") is None:
            data.pop("usage", None)
        return data
