"""A chat completion's answer as Anthropic's Messages API gives it: the whole message,
or its stream of events.

A message's content is a list of blocks: the model's thinking (a reasoning
parser's), its text, then one `tool_use` block per call. Streaming opens a
block when its kind of output starts (`content_block_start`), adds to it
(`text_delta`, `thinking_delta`, `input_json_delta` with a call's arguments
as they come), and closes it when another kind starts or the answer ends;
`message_delta` then carries the stop reason and the usage, `message_stop`
ends the stream. Errors are Anthropic's shape (`{"type": "error", "error":
{"type", "message"}}`), in a body or as an `error` event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette import ServerSentEvent

from api.errors import anthropic_body_of
from api.schemas.chat import ChatCompletionChunk, ChatCompletionResponse
from api.schemas.common import UsageInfo

Event = dict[str, Any]


def message_id(chat_id: str) -> str:
    """Anthropic's `msg_` id for the chat completion's (the same hex, so logs match); one
    already in that form is kept."""
    if chat_id.startswith("msg_"):
        return chat_id
    return "msg_" + chat_id.removeprefix("chatcmpl-")


def stop_reason(
    finish_reason: str | None, stop: int | str | None, called: bool
) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence for how the choice ended."""
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason == "abort":
        # Cut short by POST /pause: Anthropic's word for a turn the server paused, which
        # the client may send back as-is for the model to carry on.
        return "pause_turn", None
    if called:
        return "tool_use", None
    if finish_reason == "stop" and isinstance(stop, str):
        return "stop_sequence", stop
    return "end_turn", None


def usage_object(usage: UsageInfo | None, prompt_tokens: int = 0) -> dict[str, int]:
    """Anthropic's usage: input_tokens leave out what was read from the prefix cache,
    which cache_read_input_tokens counts (their sum is the prompt)."""
    if usage is None:
        return {"input_tokens": prompt_tokens, "output_tokens": 0}
    details = usage.prompt_tokens_details
    cached = details.cached_tokens if details is not None else 0
    return {
        "input_tokens": usage.prompt_tokens - cached,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def _opening(chunk: ChatCompletionChunk) -> bool:
    """The role chunk a chat stream opens with, before the engine has answered."""
    return all(
        c.delta.role is not None and not c.delta.content and c.finish_reason is None
        for c in chunk.choices
    ) and bool(chunk.choices)


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the `input` object (a call cut short reads as {})."""
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def thinking_block(text: str, signature: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": signature}


def new_signature() -> str:
    """Anthropic signs thinking so it can check what a client sends back; nothing checks
    it here, but clients expect one (some drop unsigned thinking), as vLLM gives."""
    return uuid.uuid4().hex


def message_object(response: ChatCompletionResponse) -> dict[str, Any]:
    """The whole answer as an Anthropic message."""
    choice = response.choices[0]
    message = choice.message
    content: list[dict[str, Any]] = []
    if message.reasoning_content:
        content.append(thinking_block(message.reasoning_content, new_signature()))
    if message.content:  # an empty answer has no block, as its stream opens none
        content.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": tool_input(function.get("arguments") or ""),
            }
        )
    reason, sequence = stop_reason(
        choice.finish_reason, choice.stop_reason, bool(message.tool_calls)
    )
    return {
        "id": message_id(response.id),
        "type": "message",
        "role": "assistant",
        "model": response.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_object(response.usage),
    }


class MessageEvents:
    """Chat chunks in, Anthropic stream events out, for one choice (Anthropic has no n)."""

    def __init__(
        self,
        chat_id: str,
        model: str,
        prompt_tokens: int,
        cached_tokens: Callable[[], int] = lambda: 0,
    ) -> None:
        self.id = message_id(chat_id)
        self.model = model
        self.prompt_tokens = prompt_tokens
        # The prompt tokens read from the prefix cache, known once the engine answers.
        self.cached_tokens = cached_tokens
        self._open: str | None = None  # "text", "thinking", or a call's index as "call:N"
        self._index = -1
        self._called = False
        self._finish: tuple[str | None, int | str | None] = (None, None)

    async def events(self, chunks: AsyncIterator[ChatCompletionChunk]) -> AsyncIterator[Event]:
        """`message_start` waits for the engine's first answer (past the opening role
        chunk): its usage splits the prompt into input_tokens and cache_read_input_tokens
        as `message_delta`'s does, which a client may add to it."""
        started = False
        usage: UsageInfo | None = None
        async for chunk in chunks:
            if not started and not _opening(chunk):
                started = True
                yield self._message_start()
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                for event in self._delta(choice.delta.model_dump()):
                    yield event
                if choice.finish_reason is not None:
                    self._finish = (choice.finish_reason, choice.stop_reason)
        if not started:
            yield self._message_start()
        for event in self._close():
            yield event
        reason, sequence = stop_reason(*self._finish, self._called)
        yield {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage_object(usage, self.prompt_tokens),
        }
        yield {"type": "message_stop"}

    def _message_start(self) -> Event:
        cached = self.cached_tokens()
        return {
            "type": "message_start",
            "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": self.prompt_tokens - cached,
                    "output_tokens": 0,
                    "cache_read_input_tokens": cached,
                    "cache_creation_input_tokens": 0,
                },
            },
        }

    def _delta(self, delta: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        thinking = delta.get("reasoning_content")
        if thinking:
            events += self._ensure("thinking", thinking_block("", ""))
            events.append(self._block_delta({"type": "thinking_delta", "thinking": thinking}))
        text = delta.get("content")
        if text:
            events += self._ensure("text", {"type": "text", "text": ""})
            events.append(self._block_delta({"type": "text_delta", "text": text}))
        for call in delta.get("tool_calls") or ():
            function = call.get("function") or {}
            key = f"call:{call.get('index', 0)}"
            if call.get("id"):
                self._called = True
                block = {
                    "type": "tool_use",
                    "id": call["id"],
                    "name": function.get("name"),
                    "input": {},
                }
                events += self._close() + self._start(key, block)
            arguments = function.get("arguments")
            if arguments and self._open == key:
                events.append(
                    self._block_delta({"type": "input_json_delta", "partial_json": arguments})
                )
        return events

    def _ensure(self, kind: str, block: dict[str, Any]) -> list[Event]:
        if self._open == kind:
            return []
        return self._close() + self._start(kind, block)

    def _start(self, kind: str, block: dict[str, Any]) -> list[Event]:
        self._open = kind
        self._index += 1
        return [{"type": "content_block_start", "index": self._index, "content_block": block}]

    def _block_delta(self, delta: dict[str, Any]) -> Event:
        return {"type": "content_block_delta", "index": self._index, "delta": delta}

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        events = []
        if self._open == "thinking":  # signed as it ends, as Anthropic's streams sign it
            events.append(
                self._block_delta({"type": "signature_delta", "signature": new_signature()})
            )
        self._open = None
        return [*events, {"type": "content_block_stop", "index": self._index}]


class MessagesFraming:
    """`event: <type>` + `data: {event}`; a failure is an `error` event; no `[DONE]`."""

    def frame(self, event: Event) -> ServerSentEvent:
        return ServerSentEvent(event=event["type"], data=json.dumps(event), sep="\n")

    def error(self, body: dict[str, Any]) -> ServerSentEvent:
        data = json.dumps(anthropic_body_of(body))
        return ServerSentEvent(event="error", data=data, sep="\n")

    def done(self) -> ServerSentEvent | None:
        return None


def new_chat_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
