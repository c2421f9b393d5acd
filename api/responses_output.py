"""The Responses API object's parts: output items, status from the finish reason, usage."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from api.schemas.common import UsageInfo
from api.schemas.responses import ResponsesRequest
from conveyor.db.ids import new_id

RESPONSE_ID_PREFIX = "resp_"


@dataclass(frozen=True)
class Outcome:
    """How a generation ended, in the Responses API's words."""

    status: str  # completed | incomplete | failed
    incomplete_details: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @classmethod
    def of(cls, finish_reason: str | None, stop_reason: int | str | None) -> Outcome:
        if finish_reason == "length":
            return cls("incomplete", incomplete_details={"reason": "max_output_tokens"})
        if finish_reason == "abort":  # ended by POST /pause: cut short, for no reason of its own
            return cls("incomplete")
        if finish_reason == "error":
            message = str(stop_reason) if stop_reason is not None else "generation failed"
            return cls("failed", error={"code": "server_error", "message": message})
        return cls("completed")

    @property
    def item_status(self) -> str:
        """The last output item's status: cut short unless the response completed."""
        return "completed" if self.status == "completed" else "incomplete"


def message_item() -> dict[str, Any]:
    """An assistant message as it opens: no text part yet, in progress."""
    return {
        "type": "message",
        "id": new_id("msg_"),
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }


def reasoning_item() -> dict[str, Any]:
    """A reasoning model's thinking as it opens (--reasoning-parser): its raw text arrives
    as a reasoning_text part; no summary is made."""
    return {
        "type": "reasoning",
        "id": new_id("rs_"),
        "summary": [],
        "content": [],
        "status": "in_progress",
    }


def reasoning_part(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def text_part(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def function_call_item(call_id: str, name: str) -> dict[str, Any]:
    """A function call as it opens: its arguments arrive after it, in progress."""
    return {
        "type": "function_call",
        "id": new_id("fc_"),
        "call_id": call_id,
        "name": name,
        "arguments": "",
        "status": "in_progress",
    }


def usage_object(usage: UsageInfo | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    details = usage.prompt_tokens_details
    thinking = usage.completion_tokens_details
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": details.cached_tokens if details else 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": thinking.reasoning_tokens if thinking else 0},
        "total_tokens": usage.total_tokens,
    }


def response_object(
    body: ResponsesRequest,
    response_id: str,
    created_at: int,
    *,
    output: list[dict[str, Any]],
    usage: UsageInfo | None = None,
    outcome: Outcome | None = None,
) -> dict[str, Any]:
    """The response object; without an `outcome` it is still in progress."""
    status = outcome.status if outcome is not None else "in_progress"
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": outcome.error if outcome else None,
        "incomplete_details": outcome.incomplete_details if outcome else None,
        "model": body.model,
        "output": output,
        "usage": usage_object(usage),
        **body.echo(),
    }


def new_response_id() -> str:
    return new_id(RESPONSE_ID_PREFIX)
