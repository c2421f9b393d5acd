"""Anthropic's Messages API (`POST /v1/messages`), as vLLM serves it: request shapes.

Clients written for Anthropic (its SDK, coding agents, LiteLLM's passthrough)
call this; the route turns a request into a chat completion
(api/messages_input.py), so everything a chat request gets (template, tools,
structured output, admission, billing) it gets too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.errors import ApiError
from api.schemas.null_means_default import NullMeansDefault


class ContentBlock(BaseModel):
    """One block of a message's content; which fields matter depends on `type`."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None
    # image: {"type": "base64", "media_type", "data"} or {"type": "url", "url"}
    source: dict[str, Any] | None = None
    # tool_use
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    # tool_result
    tool_use_id: str | None = None
    content: str | list[dict[str, Any]] | None = None
    is_error: bool | None = None
    # thinking
    thinking: str | None = None
    signature: str | None = None


# Claude Code's newer releases send these roles for what are user turns (vLLM reads
# them so too).
_USER_ROLES = ("ctx", "msg")


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # "system": a system message inside the conversation (api/messages_system_turns.py).
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]

    @field_validator("role", mode="before")
    @classmethod
    def _user_roles(cls, role: object) -> object:
        return "user" if role in _USER_ROLES else role


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1)
    description: str | None = None
    # Required of a client tool (check_supported); Anthropic's server tools have none.
    input_schema: dict[str, Any] | None = None
    # Anthropic's server tools (web search, ...) have a `type`; a client tool has none
    # or "custom".
    type: str | None = None


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class OutputFormat(BaseModel):
    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: OutputFormat | None = None
    # How hard a reasoning model thinks: low/medium/high reach the chat template as
    # `reasoning_effort` (gpt-oss's levels); Anthropic's higher ones have no equivalent.
    effort: str | None = None


class ThinkingConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None


class CountTokensRequest(NullMeansDefault):
    """What `/v1/messages/count_tokens` reads: the prompt side of a Messages request."""

    model_config = ConfigDict(extra="ignore")

    # Anthropic requires it; left out, the one model served (as vLLM's routes allow).
    model: str | None = None
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[ContentBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    # vLLM's extra: keyword arguments for the chat template.
    chat_template_kwargs: dict[str, Any] | None = None

    def check_supported(self) -> None:
        for tool in self.tools or ():
            if tool.type not in (None, "custom"):
                raise ApiError(
                    400,
                    f"tools: {tool.type!r} is one of Anthropic's server tools, which run on "
                    "Anthropic's servers; declare the tool with an input_schema instead",
                    param="tools",
                )
            if tool.input_schema is None:
                raise ApiError(400, f"tools: {tool.name!r} has no input_schema", param="tools")
        choice = self.tool_choice
        if choice is not None and choice.type == "tool" and not choice.name:
            raise ApiError(
                400, "tool_choice: type 'tool' needs the tool's name", param="tool_choice"
            )


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    stream: bool = False
    # Anthropic's ends at 1; vLLM's endpoint takes what chat takes.
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: dict[str, Any] | None = None
    output_config: OutputConfig | None = None
    # vLLM's sampling extras, for clients that send them alongside Anthropic's fields.
    seed: int | None = None
    priority: int = 0
