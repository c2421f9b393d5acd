"""OpenAI chat completions: request, response and streaming chunk shapes."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from api.errors import ApiError, not_supported
from api.schemas.common import (
    ChunkBase,
    PromptLogprob,
    SamplingRequest,
    UsageInfo,
    omitted_when_none,
)
from api.schemas.request_metadata import PROCESSED_SERVICE_TIER, Metadata, ServiceTier
from api.tool_choice import (
    CHAT_NAMED_TOOL_CHOICE,
    ForcedToolCall,
    forced_tool_call,
    wants_auto,
)
from engine.chat_template_kwargs import with_defaults
from engine.structured_output import StructuredOutput

if TYPE_CHECKING:
    from conveyor.settings import Settings


class ChatMessage(BaseModel):
    """One message; extra keys are kept because chat templates may read them."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


# How hard a reasoning model thinks: the levels gpt-oss was trained with, as vLLM takes them.
ReasoningEffort = Literal["low", "medium", "high"]
REASONING_EFFORTS: tuple[str, ...] = get_args(ReasoningEffort)


class ChatCompletionRequest(SamplingRequest):
    # The request field the prompt came from, as errors about the prompt name it.
    prompt_param: ClassVar[str] = "messages"
    # How this API spells a named tool_choice, for errors that suggest one.
    named_tool_choice: ClassVar[str] = CHAT_NAMED_TOOL_CHOICE

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # OpenAI's: how hard a reasoning model thinks. Given to the chat template as
    # `reasoning_effort` (gpt-oss's writes it into its system message); the levels
    # gpt-oss was trained with, as vLLM accepts them.
    reasoning_effort: ReasoningEffort | None = None
    # OpenAI's, checked as OpenAI checks them: nothing is kept for later retrieval
    # (`store`, as with vLLM) and every request runs in the one tier there is.
    store: bool | None = None
    metadata: Metadata = None
    service_tier: ServiceTier | None = None
    # Audio output is refused rather than answered with text alone.
    modalities: list[Literal["text", "audio"]] | None = None
    audio: dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    # vLLM extras
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # vLLM's: the answer starts with the last message's text when it is in the answer's
    # role (a continued final message), as if the model had written it all.
    echo: bool = False
    # With --reasoning-parser: false leaves the thinking out of the answer (vLLM's extra).
    include_reasoning: bool = True

    def check_supported(self) -> None:
        super().check_supported()
        _ = self.forced_tool_call  # tools and tool_choice are well formed
        if self.functions or self.function_call not in (None, "none"):
            raise not_supported("functions", "function calling")
        if self.audio is not None:
            raise not_supported("audio", "audio output (the models served here write text)")
        if "audio" in (self.modalities or []):
            raise not_supported("modalities", "audio output (the models served here write text)")
        if self.chat_template is not None:
            raise not_supported("chat_template", "a per-request chat template")
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs requires logprobs to be true", param="top_logprobs")
        if self.continue_final_message and self.add_generation_prompt:
            raise ApiError(
                400,
                "continue_final_message and add_generation_prompt cannot both be true",
                param="continue_final_message",
            )

    def apply_server_defaults(self, settings: Settings) -> None:
        """Also vLLM's --default-chat-template-kwargs (under the request's own) and
        --exclude-tools-when-tool-choice-none (the prompt shows no tools the model may
        not call)."""
        super().apply_server_defaults(settings)
        self.chat_template_kwargs = with_defaults(
            settings.default_chat_template_kwargs, self.chat_template_kwargs
        )
        if settings.exclude_tools_when_tool_choice_none and self.tool_choice == "none":
            self.tools = None

    @property
    def auto_tool_choice(self) -> bool:
        """The model decides whether to call: needs the server's tool-call parser."""
        return wants_auto(self.tools, self.tool_choice)

    @cached_property
    def forced_tool_call(self) -> ForcedToolCall | None:
        """The call tool_choice forces ("required" or a named function), or None; built once
        (its schema is rebuilt from the tools otherwise), a 400 for malformed tools."""
        return forced_tool_call(self.tools, self.tool_choice, self.parallel_tool_calls)

    def structured_output(self) -> tuple[StructuredOutput | None, str]:
        """A forced tool call is generated under its arguments' schema. response_format
        shapes a message's text, which a forced call has none of: it yields, as on OpenAI
        (agent frameworks send both); a vLLM guided constraint besides it is a 400."""
        constraint, param = super().structured_output()
        forced = self.forced_tool_call
        if forced is None:
            return constraint, param
        if constraint is not None and param != "response_format":
            raise ApiError(
                400,
                f"{param} cannot be combined with a forced tool call (tool_choice)",
                param=param,
            )
        return forced.constraint, "tools"

    @property
    def requested_max_tokens(self) -> tuple[int | None, str]:
        """max_completion_tokens (the current name) wins over the deprecated max_tokens."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class ChatResponseMessage(BaseModel):
    # --response-role's, or the last message's when the request added no generation prompt.
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    # A reasoning model's thinking (--reasoning-parser): vLLM's field, under its newer
    # name and its older one, both only when there is any.
    reasoning: str | None = None
    reasoning_content: str | None = None

    @model_serializer(mode="wrap")
    def _drop_absent_reasoning(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in ("reasoning", "reasoning_content"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    # vLLM's return_token_ids: the choice's tokens, its end-of-sequence token included.
    token_ids: list[int] | None = omitted_when_none()


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None
    service_tier: str = PROCESSED_SERVICE_TIER  # OpenAI reports the tier that served it
    # vLLM's return_token_ids and prompt_logprobs (absent unless asked for).
    prompt_token_ids: list[int] | None = omitted_when_none()
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = omitted_when_none()


class DeltaMessage(BaseModel):
    """A chunk's delta carries only what changed: `{}` on the last chunk."""

    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    # vLLM's return_token_ids: the tokens this chunk adds.
    token_ids: list[int] | None = omitted_when_none()


class ChatCompletionChunk(ChunkBase):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    system_fingerprint: str | None = None
    service_tier: str = PROCESSED_SERVICE_TIER
    # vLLM's return_token_ids: the prompt's, in a stream's first chunk only.
    prompt_token_ids: list[int] | None = omitted_when_none()
