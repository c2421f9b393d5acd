"""A chat chunk stream as the Responses API's semantic events.

OpenAI's order, which the SDK's stream helper checks as it builds its
snapshot: `response.created`, (a background run: `response.queued` until a
worker starts it), `response.in_progress`; per output item
`output_item.added`, then for a message `content_part.added`, text deltas,
`output_text.done`, `content_part.done`, and for a function call argument
deltas and `function_call_arguments.done`; `output_item.done`; and last
`response.completed` (or `.incomplete` / `.failed`) with the whole object.
Every event carries a `sequence_number`, counted from 0.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sse_starlette import ServerSentEvent

from api.responses_output import (
    Outcome,
    function_call_item,
    message_item,
    reasoning_item,
    reasoning_part,
    response_object,
    text_part,
)
from api.schemas.chat import ChatCompletionChunk
from api.schemas.common import UsageInfo
from api.schemas.responses import ResponsesRequest

Event = dict[str, Any]
FINAL_EVENTS = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
}
# The events after which a stream has nothing more to say.
TERMINAL_EVENTS = frozenset({*FINAL_EVENTS.values(), "error"})


class ResponseEventStream:
    """Turns one response's chat chunks into events; `on_final` sees the finished object
    (to store it) before the final event goes out.

    The whole (non-streamed) answer is built by this same class, from the same
    chunks, so a streamed response always ends with the object the whole one is.
    Whitespace with no message open is held back: before a tool call it is
    dropped (no item of only "\n"), before text it goes out with the text. The
    logprobs of tokens that are not message text (a call's arguments) are not
    reported, as OpenAI's function_call items carry none.
    """

    def __init__(
        self,
        body: ResponsesRequest,
        response_id: str,
        created_at: int,
        on_final: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        self.body = body
        self.response_id = response_id
        self.created_at = created_at
        self.on_final = on_final
        self.sequence_number = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being streamed, also in output
        self.text: list[str] = []
        self.logprobs: list[dict[str, Any]] = []
        self.reasoning: list[str] = []  # the open reasoning item's text so far
        # Held back while no message is open: whitespace, and the logprobs that go with it.
        self.pending_text = ""
        self.pending_logprobs: list[dict[str, Any]] = []

    def next_sequence_number(self) -> int:
        number = self.sequence_number
        self.sequence_number += 1
        return number

    def _event(self, kind: str, **fields: Any) -> Event:
        return {"type": kind, "sequence_number": self.next_sequence_number(), **fields}

    def _part_event(self, kind: str, item: dict[str, Any], **fields: Any) -> Event:
        """An event about the open message's one text part."""
        return self._event(
            kind, item_id=item["id"], output_index=self._index, content_index=0, **fields
        )

    def snapshot(
        self, usage: UsageInfo | None = None, outcome: Outcome | None = None
    ) -> dict[str, Any]:
        """The object so far; in progress until the outcome is known."""
        return response_object(
            self.body,
            self.response_id,
            self.created_at,
            output=copy.deepcopy(self.output),
            usage=usage,
            outcome=outcome,
        )

    async def final(self, chunks: AsyncIterator[ChatCompletionChunk]) -> dict[str, Any]:
        """The finished response object alone (the whole, non-streamed answer)."""
        last: Event = {}
        async for event in self.events(chunks):
            last = event
        return dict(last["response"])

    async def events(
        self, chunks: AsyncIterator[ChatCompletionChunk], queued: bool = False
    ) -> AsyncIterator[Event]:
        """`queued` (a background run): created and `response.queued` while it waits, and
        `response.in_progress` only once the first chunk shows a worker has started it."""
        if queued:
            waiting = {**self.snapshot(), "status": "queued"}
            yield self._event("response.created", response=waiting)
            yield self._event("response.queued", response=waiting)
        else:
            yield self._event("response.created", response=self.snapshot())
            yield self._event("response.in_progress", response=self.snapshot())
        started = not queued
        usage: UsageInfo | None = None
        finish_reason: str | None = None
        stop_reason: int | str | None = None
        async for chunk in chunks:
            if not started:
                started = True
                yield self._event("response.in_progress", response=self.snapshot())
            if chunk.usage is not None and not chunk.choices:
                usage = chunk.usage
            for choice in chunk.choices:  # a response has one choice
                delta = choice.delta
                logprobs = choice.logprobs.content if choice.logprobs is not None else None
                dumped = [lp.model_dump(mode="json") for lp in logprobs or []]
                # Thinking first (--reasoning-parser), then text, then calls: a whole
                # answer's one chunk has them all, in the order the model wrote them.
                if delta.reasoning:
                    for event in self._reasoning(delta.reasoning):
                        yield event
                    # The logprobs cover the thinking too: keep those of the answer only.
                    dumped = _covering(dumped, delta.content or "")
                if delta.content or (dumped and not delta.tool_calls):
                    for event in self._text(delta.content or "", dumped):
                        yield event
                for call in delta.tool_calls or []:
                    for event in self._call(call):
                        yield event
                if choice.finish_reason is not None:
                    finish_reason, stop_reason = choice.finish_reason, choice.stop_reason
        outcome = Outcome.of(finish_reason, stop_reason)
        if not started:
            yield self._event("response.in_progress", response=self.snapshot())
        if not self.output:  # nothing but whitespace, or nothing: a message all the same
            for event in self._open_message():
                yield event
            if self.text:
                yield self._text_delta(self.text[0], self.logprobs)
        for event in self._close(outcome.item_status):
            yield event
        final = self.snapshot(usage, outcome)
        await self.on_final(final)
        yield self._event(FINAL_EVENTS[outcome.status], response=final)

    def _reasoning(self, text: str) -> list[Event]:
        """A reasoning model's thinking: a reasoning item with its raw text, as OpenAI's
        reasoning_text events stream it."""
        events: list[Event] = []
        if self.open is None or self.open["type"] != "reasoning":
            events += self._close("completed")
            item = reasoning_item()
            self._add(item)
            self.reasoning = []
            events += [
                self._event(
                    "response.output_item.added", output_index=self._index, item=copy.deepcopy(item)
                ),
                self._part_event("response.content_part.added", item, part=reasoning_part("")),
            ]
        assert self.open is not None
        self.reasoning.append(text)
        events.append(self._part_event("response.reasoning_text.delta", self.open, delta=text))
        return events

    def _open_message(self) -> list[Event]:
        """A new message item, starting with the held-back text and logprobs."""
        item = message_item()
        self._add(item)
        self.text = [self.pending_text] if self.pending_text else []
        self.logprobs = list(self.pending_logprobs)  # a copy: `_text` adds to it
        self.pending_text, self.pending_logprobs = "", []
        return [
            self._event(
                "response.output_item.added", output_index=self._index, item=copy.deepcopy(item)
            ),
            self._part_event("response.content_part.added", item, part=text_part("")),
        ]

    def _text_delta(self, text: str, logprobs: list[dict[str, Any]]) -> Event:
        assert self.open is not None
        return self._part_event(
            "response.output_text.delta", self.open, delta=text, logprobs=logprobs
        )

    def _text(self, text: str, logprobs: list[dict[str, Any]]) -> list[Event]:
        if self.open is not None and self.open["type"] == "message":
            self.text.append(text)
            self.logprobs += logprobs
            return [self._text_delta(text, logprobs)]
        if not text.strip():  # maybe only the gap before a call: wait and see
            self.pending_text += text
            self.pending_logprobs += logprobs
            return []
        events = self._close("completed")
        held = self.pending_text, self.pending_logprobs
        events += self._open_message()
        self.text.append(text)
        self.logprobs += logprobs
        events.append(self._text_delta(held[0] + text, held[1] + logprobs))
        return events

    def _call(self, call: dict[str, Any]) -> list[Event]:
        """A chat tool-call delta: one with an id starts a call, the rest add arguments."""
        events = []
        arguments = call.get("function", {}).get("arguments", "")
        if "id" in call:
            events += self._close("completed")
            self.pending_text, self.pending_logprobs = "", []
            item = function_call_item(call["id"], call["function"]["name"])
            self._add(item)
            events.append(
                self._event(
                    "response.output_item.added",
                    output_index=self._index,
                    item=copy.deepcopy(item),
                )
            )
        if arguments and self.open is not None and self.open["type"] == "function_call":
            self.open["arguments"] += arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=self.open["id"],
                    output_index=self._index,
                    delta=arguments,
                )
            )
        return events

    def _add(self, item: dict[str, Any]) -> None:
        self.output.append(item)
        self.open = item

    @property
    def _index(self) -> int:
        return len(self.output) - 1

    def _close(self, status: str) -> list[Event]:
        item, self.open = self.open, None
        if item is None:
            return []
        item["status"] = status
        events = []
        if item["type"] == "reasoning":
            text = "".join(self.reasoning)
            part = reasoning_part(text)
            item["content"] = [part]
            events += [
                self._part_event("response.reasoning_text.done", item, text=text),
                self._part_event("response.content_part.done", item, part=part),
            ]
        elif item["type"] == "message":
            text = "".join(self.text)
            part = text_part(text, self.logprobs)
            item["content"] = [part]
            events += [
                self._part_event(
                    "response.output_text.done", item, text=text, logprobs=self.logprobs
                ),
                self._part_event("response.content_part.done", item, part=part),
            ]
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=self._index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        events.append(
            self._event(
                "response.output_item.done", output_index=self._index, item=copy.deepcopy(item)
            )
        )
        return events


def _covering(logprobs: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The last entries of `logprobs` whose tokens spell (at least) `text`: a delta's
    answer is the end of its tokens, its thinking the start."""
    if not text:
        return []
    spelled = 0
    for index in range(len(logprobs) - 1, -1, -1):
        spelled += len(_token_text(logprobs[index]))
        if spelled >= len(text):
            return logprobs[index:]
    return logprobs


def _token_text(logprob: dict[str, Any]) -> str:
    """The text a logprob's token spells: from its bytes, since its `token` may be
    `token_id:N` (return_tokens_as_token_ids)."""
    raw = logprob.get("bytes")
    if isinstance(raw, list):
        return bytes(raw).decode("utf-8", errors="replace")
    return str(logprob.get("token", ""))


def error_event(sequence_number: int, body: dict[str, Any]) -> Event:
    """The `error` event a failed stream ends with, from an OpenAI error body."""
    error = body.get("error") or {}
    return {
        "type": "error",
        "sequence_number": sequence_number,
        "code": error.get("code"),
        "message": error.get("message") or "the response failed",
        "param": error.get("param"),
    }


class ResponsesFraming:
    """`event: <type>` + `data: {event}`; a failure is an `error` event in the same count
    (`next_sequence_number` gives its number), and the stream ends without `[DONE]`, as
    OpenAI's Responses streams do."""

    def __init__(self, next_sequence_number: Callable[[], int]) -> None:
        self.next_sequence_number = next_sequence_number

    def frame(self, event: Event) -> ServerSentEvent:
        return ServerSentEvent(event=event["type"], data=json.dumps(event), sep="\n")

    def error(self, body: dict[str, Any]) -> ServerSentEvent:
        event = error_event(self.next_sequence_number(), body)
        return ServerSentEvent(event="error", data=json.dumps(event), sep="\n")

    def done(self) -> ServerSentEvent | None:
        return None
