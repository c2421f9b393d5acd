"""OpenAI's Responses API (`/v1/responses`): the request and the response object.

A response is a chat generation in another shape: `input` items instead of
messages, flat function tools, `text.format` for structured output, and an
`output` list of message and function_call items. What the engine cannot do
(hosted tools, images, server-side conversations, prompt
templates) is refused with a 400 naming the field, never silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from api.errors import ApiError, not_supported
from api.schemas.null_means_default import NullMeansDefault
from api.schemas.request_metadata import PROCESSED_SERVICE_TIER, Metadata, ServiceTier

# `include` values; the others ask for data of hosted tools or reasoning models we do not run.
INCLUDE_LOGPROBS = "message.output_text.logprobs"
TOP_LOGPROBS_MAX = 20

# vLLM's sampling extras, passed through to the chat request unchanged (`extra_body`).
SAMPLING_EXTRAS = (
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "min_tokens",
    "logit_bias",
    "include_stop_str_in_output",
    "skip_special_tokens",
    "priority",
    "cache_salt",
)


class TextFormat(NullMeansDefault):
    """`text.format`: "text", "json_object", or "json_schema" with the schema inline."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    def response_format(self) -> dict[str, Any] | None:
        """The chat request's `response_format` for this format (None: free text)."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        if self.json_schema is None:
            raise ApiError(
                400, "text.format.schema is required for json_schema", param="text.format"
            )
        if not self.name:
            raise ApiError(
                400,
                "text.format.name is required for json_schema: name the format, as OpenAI "
                "requires (a-z, A-Z, 0-9, _ and -)",
                param="text.format.name",
            )
        spec: dict[str, Any] = {"name": self.name, "schema": self.json_schema}
        if self.strict is not None:
            spec["strict"] = self.strict
        return {"type": "json_schema", "json_schema": spec}


class TextConfig(NullMeansDefault):
    model_config = ConfigDict(extra="allow")

    format: TextFormat = Field(default_factory=TextFormat)
    verbosity: str | None = None


class ResponsesRequest(NullMeansDefault):
    model_config = ConfigDict(extra="ignore")

    # Left out: the one base model served (the route fills it in), as in vLLM.
    model: str | None = None
    input: str | list[dict[str, Any]] = ""
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    store: bool = True
    previous_response_id: str | None = None
    metadata: Metadata = None
    user: str | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=TOP_LOGPROBS_MAX)
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    reasoning: dict[str, Any] | None = None
    service_tier: ServiceTier | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # Run after the call returns; poll GET /v1/responses/{id} (api/background_responses.py).
    background: bool | None = None
    # Refused: no server-side conversations or prompt templates here.
    conversation: Any = None
    prompt: Any = None
    max_tool_calls: int | None = None
    # vLLM extras (SAMPLING_EXTRAS)
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    logit_bias: dict[str, float] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    priority: int = 0
    cache_salt: str | None = Field(default=None, min_length=1)

    def check_supported(self) -> None:
        if self.conversation is not None:
            raise not_supported("conversation", "conversations (use previous_response_id)")
        if self.prompt is not None:
            raise not_supported("prompt", "prompt templates")
        if self.max_tool_calls is not None:
            raise not_supported("max_tool_calls", "max_tool_calls")
        if self.stream_options is not None and not self.stream:
            raise ApiError(
                400, "stream_options is only allowed when stream is true", param="stream_options"
            )
        if not self.input and self.previous_response_id is None:
            raise ApiError(400, "input is required", param="input")

    @property
    def wants_logprobs(self) -> bool:
        """As with OpenAI, only `include` adds them; `top_logprobs` says how many others."""
        return INCLUDE_LOGPROBS in (self.include or [])

    @property
    def response_format(self) -> dict[str, Any] | None:
        return self.text.format.response_format() if self.text is not None else None

    def echo(self) -> dict[str, Any]:
        """The request's settings as the response object repeats them."""
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata or {},
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "previous_response_id": self.previous_response_id,
            "reasoning": self.reasoning,
            "service_tier": PROCESSED_SERVICE_TIER,
            "store": self.store,
            "temperature": self.temperature if self.temperature is not None else 1.0,
            "text": (self.text or TextConfig()).model_dump(
                mode="json", by_alias=True, exclude_none=True
            ),
            "tool_choice": self.tool_choice if self.tool_choice is not None else "auto",
            "tools": self.tools or [],
            "top_logprobs": self.top_logprobs,
            "top_p": self.top_p if self.top_p is not None else 1.0,
            "truncation": self.truncation or "disabled",
            "user": self.user,
            "background": bool(self.background),
        }
