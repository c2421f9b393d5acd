"""A Responses request as the chat request it runs as: input items -> messages, flat tools.

Input items are first normalised to the form OpenAI stores and lists them in
(typed, with ids, content as parts), so a stored response's items can be
replayed as history under `previous_response_id` exactly as they were first
read. Output items are valid input items, so a response's output joins the
history the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ValidationError

from api.errors import ApiError, not_supported, validation_error
from api.schemas.chat import REASONING_EFFORTS, ChatCompletionRequest
from api.schemas.responses import SAMPLING_EXTRAS, ResponsesRequest
from conveyor.db.ids import new_id
from engine.structured_output import StructuredOutput

MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
TEXT_PARTS = frozenset({"input_text", "output_text"})
MEDIA_PARTS = frozenset({"input_image", "input_file", "input_audio"})
# Kept in the history as sent, but nothing a text model reads (reasoning models' thoughts).
SILENT_ITEMS = frozenset({"reasoning"})


class ResponsesChatRequest(ChatCompletionRequest):
    """A response's generation; errors name the Responses API's fields, not chat's."""

    prompt_param: ClassVar[str] = "input"
    named_tool_choice: ClassVar[str] = '{"type": "function", "name": ...}'

    @property
    def requested_max_tokens(self) -> tuple[int | None, str]:
        return self.max_completion_tokens, "max_output_tokens"

    def structured_output(self) -> tuple[StructuredOutput | None, str]:
        constraint, param = super().structured_output()
        return constraint, "text.format" if param == "response_format" else param


def normalize_input(raw: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's input as stored items; a malformed or unsupported item is a 400."""
    if isinstance(raw, str):  # "" adds nothing (a bare continuation of a previous response)
        raw = [{"role": "user", "content": raw}] if raw else []
    return [_normalize_item(item, f"input[{index}]") for index, item in enumerate(raw)]


def _normalize_item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ApiError(400, f"{where} must be an object", param=where)
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in MESSAGE_ROLES:
            raise ApiError(
                400,
                f"{where}.role must be one of {', '.join(sorted(MESSAGE_ROLES))}",
                param=f"{where}.role",
            )
        return {
            "type": "message",
            "id": _id(item, "msg_"),
            "role": role,
            "content": _parts(item.get("content"), role, f"{where}.content"),
            "status": "completed",
        }
    if kind == "function_call":
        fields = _strings(item, where, "call_id", "name", "arguments")
        return {"type": "function_call", "id": _id(item, "fc_"), **fields, "status": "completed"}
    if kind == "function_call_output":
        (call_id,) = _strings(item, where, "call_id").values()
        return {
            "type": "function_call_output",
            "id": _id(item, "fco_"),
            "call_id": call_id,
            "output": _output_text(item.get("output"), f"{where}.output"),
            "status": "completed",
        }
    if kind in SILENT_ITEMS:
        return {**item, "id": _id(item, "rs_")}
    raise not_supported(f"{where}.type", f"input items of type {kind!r}")


def _id(item: dict[str, Any], prefix: str) -> str:
    given = item.get("id")
    return given if isinstance(given, str) and given else new_id(prefix)


def _strings(item: dict[str, Any], where: str, *names: str) -> dict[str, str]:
    fields = {}
    for name in names:
        value = item.get(name)
        if not isinstance(value, str):
            raise ApiError(400, f"{where}.{name} must be a string", param=f"{where}.{name}")
        fields[name] = value
    return fields


def _parts(content: Any, role: str, where: str) -> list[dict[str, Any]]:
    """Content as typed parts: a string becomes one input_text (output_text for assistant)."""
    if isinstance(content, str):
        if role == "assistant":
            return [{"type": "output_text", "text": content, "annotations": []}]
        return [{"type": "input_text", "text": content}]
    if not isinstance(content, list):
        raise ApiError(400, f"{where} must be a string or a list of parts", param=where)
    parts = []
    for index, part in enumerate(content):
        at = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in MEDIA_PARTS:
            raise not_supported(at, f"{kind} parts (the models served here read text)")
        if kind in TEXT_PARTS:
            text = part.get("text")
        elif kind == "refusal":
            text = part.get("refusal")
        else:
            raise ApiError(400, f"{at}.type must be input_text, output_text or refusal", param=at)
        if not isinstance(text, str):
            raise ApiError(400, f"{at} has no text", param=at)
        parts.append(dict(part))
    return parts


def _output_text(output: Any, where: str) -> str:
    """A function call's output: a string, or text parts joined."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(part["text"] for part in _parts(output, "user", where))
    raise ApiError(400, f"{where} must be a string or a list of parts", param=where)


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Normalised items (history, then this input) as chat messages.

    Function calls join the assistant message before them (its `tool_calls`), as
    chat templates expect one assistant turn with its text and its calls; a
    call's output is a `tool` message that also carries the function's name, and an
    output for a call neither the history nor the input holds is a 400, as at OpenAI;
    so is a call left without its output (a turn continued after a function call
    must send what the function returned).
    """
    messages: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    answered: set[str] = set()
    for item in items:
        kind = item["type"]
        if kind == "message":
            role = item["role"]  # developer too: the tokenizer knows what its template reads
            text = "\n".join(
                part["refusal"] if part["type"] == "refusal" else part["text"]
                for part in item["content"]
            )
            messages.append({"role": role, "content": text})
        elif kind == "function_call":
            names[item["call_id"]] = item["name"]
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item["call_id"]
            if call_id not in names:  # OpenAI's 400: the model would answer a call it never made
                raise ApiError(
                    400,
                    f"No tool call found for function call output with call_id {call_id}.",
                    param="input",
                )
            answered.add(call_id)
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call_id,
                    "content": item["output"],
                    "name": names[call_id],
                }
            )
    unanswered = [call_id for call_id in names if call_id not in answered]
    if unanswered:  # OpenAI's 400: the model would go on as if the function had answered
        raise ApiError(
            400,
            f"No tool output found for function call {unanswered[0]}.",
            param="input",
        )
    return messages


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses' flat function tools in chat's nested form; hosted tools are refused."""
    if not tools:
        return None
    converted = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise not_supported(where, f"{kind!r} tools (function tools run here)")
        if not isinstance(tool.get("name"), str):
            raise ApiError(400, f"{where}.name is required", param=f"{where}.name")
        function = {
            key: tool[key]
            for key in ("name", "description", "parameters", "strict")
            if tool.get(key) is not None
        }
        converted.append({"type": "function", "function": function})
    return converted


def chat_tool_choice(tool_choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if tool_choice is None or isinstance(tool_choice, str):
        return tool_choice
    kind = tool_choice.get("type")
    if kind == "function" and isinstance(tool_choice.get("name"), str):
        return {"type": "function", "function": {"name": tool_choice["name"]}}
    if kind == "function":
        raise ApiError(400, "tool_choice.name is required", param="tool_choice")
    raise not_supported("tool_choice", f"tool_choice of type {kind!r}")


def reasoning_effort(reasoning: dict[str, Any] | None) -> str | None:
    """`reasoning.effort`, which the chat request carries as `reasoning_effort`."""
    effort = (reasoning or {}).get("effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        names = ", ".join(REASONING_EFFORTS)
        raise ApiError(400, f"reasoning.effort must be one of {names}", param="reasoning.effort")
    return effort


def chat_request(
    body: ResponsesRequest, history: list[dict[str, Any]], items: list[dict[str, Any]]
) -> ResponsesChatRequest:
    """The chat request that generates this response. `instructions` lead as a system
    message; they are not carried over from a previous response, as with OpenAI."""
    messages = chat_messages(history + items)
    if body.instructions:
        messages.insert(0, {"role": "system", "content": body.instructions})
    if not messages:
        raise ApiError(400, "input has no message for the model to answer", param="input")
    logprobs = body.wants_logprobs
    data: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "user": body.user,
        "tools": chat_tools(body.tools),
        "tool_choice": chat_tool_choice(body.tool_choice),
        "parallel_tool_calls": body.parallel_tool_calls,
        "response_format": body.response_format,
        "logprobs": logprobs,
        "top_logprobs": (body.top_logprobs or 0) if logprobs else None,
        "stream": body.stream,
        "reasoning_effort": reasoning_effort(body.reasoning),
        **{name: getattr(body, name) for name in SAMPLING_EXTRAS},
    }
    try:
        return ResponsesChatRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None
