"""An Anthropic Messages request as the chat completion it asks for.

The system prompt, with the conversation's own system messages placed as
api/messages_system_turns.py says, becomes a system message; text and image blocks become chat
content parts; an assistant's `tool_use` blocks become its tool calls and a
user's `tool_result` blocks tool messages (placed before the rest of that
user turn, as the calls' results come first); thinking blocks an assistant
turn carries back become its `reasoning_content`. Tools, tool_choice,
stop_sequences, sampling knobs and `output_config.format` map onto their chat
equivalents, so the chat path checks them as it checks its own.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from api.errors import ApiError
from api.messages_system_turns import place_system_messages, system_text
from api.messages_tool_pairs import check_tool_pairs
from api.schemas.chat import REASONING_EFFORTS, ChatCompletionRequest
from api.schemas.messages import ContentBlock, CountTokensRequest, InputMessage, MessagesRequest
from engine.structured_output import StructuredOutput


class MessagesChatRequest(ChatCompletionRequest):
    """A message's generation; errors name the Messages API's fields, not chat's."""

    named_tool_choice: ClassVar[str] = '{"type": "tool", "name": ...}'

    def structured_output(self) -> tuple[StructuredOutput | None, str]:
        constraint, param = super().structured_output()
        return constraint, "output_config.format" if param == "response_format" else param


def chat_request(body: CountTokensRequest) -> ChatCompletionRequest:
    """The chat completion `body` asks for (a count_tokens body: its prompt only). A
    conversation ending in the assistant's text is continued (Anthropic's prefill): the
    answer picks up where that text stops."""
    body.check_supported()
    messages: list[dict[str, Any]] = []
    leading, turns = place_system_messages(body.messages)
    system = "\n\n".join(t for t in (system_text(body.system, "system"), leading) if t)
    if system:
        messages.append({"role": "system", "content": system})
    for index, message in turns:
        messages.extend(_chat_messages(message, index))
    check_tool_pairs(body.messages)
    if not messages:
        raise ApiError(400, "messages: every message is empty", param="messages")
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "chat_template_kwargs": _template_kwargs(body),
    }
    if body.tools:
        fields["tools"] = [
            _chat_tool(tool.name, tool.description, tool.input_schema) for tool in body.tools
        ]
    if body.tool_choice is not None:
        fields["tool_choice"] = _chat_tool_choice(body)
        if body.tool_choice.disable_parallel_tool_use:
            fields["parallel_tool_calls"] = False
    if isinstance(body, MessagesRequest):
        fields.update(_sampling_fields(body))
    last = messages[-1]
    if last["role"] == "assistant" and "tool_calls" not in last:
        fields["add_generation_prompt"] = False
        fields["continue_final_message"] = True
    return MessagesChatRequest.model_validate(fields)


def _sampling_fields(body: MessagesRequest) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "max_tokens": body.max_tokens,
        "stop": body.stop_sequences,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "seed": body.seed,
        "priority": body.priority,
        "stream": body.stream,
        # The events report usage at the end, as Anthropic's message_delta does.
        "stream_options": {"include_usage": True} if body.stream else None,
    }
    user = (body.metadata or {}).get("user_id")
    if isinstance(user, str):
        fields["user"] = user
    effort = body.output_config.effort if body.output_config else None
    if effort in REASONING_EFFORTS:
        fields["reasoning_effort"] = effort
    output_format = body.output_config.format if body.output_config else None
    if output_format is not None:
        fields["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": output_format.json_schema},
        }
    return fields


def _template_kwargs(body: CountTokensRequest) -> dict[str, Any] | None:
    """`thinking` as the chat templates of thinking models read it (Qwen3's
    `enable_thinking`), under the request's own `chat_template_kwargs`."""
    kwargs = dict(body.chat_template_kwargs or {})
    if body.thinking is not None:
        kwargs.setdefault("enable_thinking", body.thinking.type != "disabled")
    return kwargs or None


def _chat_messages(message: InputMessage, index: int) -> list[dict[str, Any]]:
    """The chat messages one Anthropic message becomes (a user turn with tool results:
    one tool message per result, then the rest of the turn)."""
    where = f"messages[{index}]"
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    thinking: list[str] = []
    for block in message.content:
        kind = block.type
        if kind == "text":
            parts.append({"type": "text", "text": block.text or ""})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block, where)}})
        elif kind == "tool_use" and message.role == "assistant":
            calls.append(_chat_call(block, where))
        elif kind == "tool_result" and message.role == "user":
            results.extend(_tool_messages(block, where))
        elif kind == "thinking" and message.role == "assistant":
            thinking.append(block.thinking or "")
        elif kind == "redacted_thinking" and message.role == "assistant":
            continue  # opaque (encrypted by Anthropic): nothing a local model can read
        else:
            raise ApiError(
                400,
                f"{where}.content: a {kind!r} block in a {message.role} message",
                param="messages",
            )
    chat: dict[str, Any] = {"role": message.role}
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        # Newline-joined, as the chat path joins text parts (engine/tokenizer.flatten_content).
        chat["content"] = "\n".join(p["text"] for p in parts) if only_text else parts
    if calls:
        chat["tool_calls"] = calls
        chat.setdefault("content", None)
    if thinking:
        chat["reasoning_content"] = "".join(thinking)
        chat.setdefault("content", "")
    keep = "content" in chat
    return results + ([chat] if keep else [])


def _image_url(block: ContentBlock, where: str) -> str:
    source = block.source or {}
    kind = source.get("type")
    if kind == "url" and isinstance(source.get("url"), str):
        return source["url"]
    if kind == "base64" and isinstance(source.get("data"), str):
        return f"data:{source.get('media_type') or 'image/png'};base64,{source['data']}"
    raise ApiError(400, f"{where}.content: an image needs a base64 or url source", param="messages")


def _chat_call(block: ContentBlock, where: str) -> dict[str, Any]:
    if not block.id or not block.name:
        raise ApiError(
            400, f"{where}.content: a tool_use block needs id and name", param="messages"
        )
    arguments = json.dumps(block.input or {}, ensure_ascii=False)
    return {
        "id": block.id,
        "type": "function",
        "function": {"name": block.name, "arguments": arguments},
    }


def _tool_messages(block: ContentBlock, where: str) -> list[dict[str, Any]]:
    """A tool_result as the tool message chat templates read (its text), and its images,
    which a tool message cannot hold, in a user message right after it (as vLLM does)."""
    if not block.tool_use_id:
        raise ApiError(400, f"{where}.content: a tool_result needs tool_use_id", param="messages")
    content = block.content
    images: list[dict[str, Any]] = []
    if isinstance(content, list):
        texts = []
        for item in content:
            kind = item.get("type")
            if kind == "text":
                texts.append(str(item.get("text") or ""))
            elif kind == "image":
                source = ContentBlock.model_validate(item)
                images.append(
                    {"type": "image_url", "image_url": {"url": _image_url(source, where)}}
                )
            elif kind != "tool_reference":  # Claude Code's tool search: names, no content
                raise ApiError(
                    400,
                    f"{where}.content: a {kind!r} block inside a tool_result (text and images "
                    "are taken)",
                    param="messages",
                )
        content = "\n".join(texts)
    text = content or ""
    if block.is_error:
        text = f"Error: {text}" if text else "Error"
    result = [{"role": "tool", "tool_call_id": block.tool_use_id, "content": text}]
    return result + ([{"role": "user", "content": images}] if images else [])


def _chat_tool(name: str, description: str | None, schema: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "parameters": {"type": "object", **schema}}
    if description is not None:
        function["description"] = description
    return {"type": "function", "function": function}


def _chat_tool_choice(body: CountTokensRequest) -> str | dict[str, Any]:
    choice = body.tool_choice
    assert choice is not None
    if choice.type == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]
