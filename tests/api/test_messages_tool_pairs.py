from __future__ import annotations

from typing import Any

import pytest

from api.errors import ApiError
from api.messages_tool_pairs import check_tool_pairs
from api.schemas.messages import InputMessage


def _turns(*raw: dict[str, Any]) -> list[InputMessage]:
    return [InputMessage.model_validate(message) for message in raw]


def _call(*ids: str) -> dict[str, Any]:
    blocks = [{"type": "tool_use", "id": i, "name": "f", "input": {}} for i in ids]
    return {"role": "assistant", "content": [{"type": "text", "text": "calling"}, *blocks]}


def _results(*ids: str, text: str | None = None) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = [
        {"type": "tool_result", "tool_use_id": i, "content": "42"} for i in ids
    ]
    if text is not None:
        blocks.append({"type": "text", "text": text})
    return {"role": "user", "content": blocks}


USER = {"role": "user", "content": "hi"}
SYSTEM = {"role": "system", "content": "be brief"}


@pytest.mark.parametrize(
    "messages",
    [
        [USER],
        [USER, _call("a", "b"), _results("b", "a", text="and now?")],
        # Claude Code's system messages between a call and its results are not turns.
        [USER, _call("a"), SYSTEM, _results("a"), SYSTEM],
        [USER, _call("a"), _results("a"), _call("c"), _results("c")],
        [USER, {"role": "assistant", "content": "no tools"}],
    ],
)
def test_answered_calls_pass(messages: list[dict[str, Any]]) -> None:
    check_tool_pairs(_turns(*messages))


@pytest.mark.parametrize(
    "messages,words",
    [
        (
            [USER, _call("a", "b"), _results("a")],
            "messages.1: `tool_use` ids were found without `tool_result` blocks immediately "
            "after: b. Each `tool_use` block must have a corresponding `tool_result` block in "
            "the next message.",
        ),
        # A user turn of text only: the calls went unanswered.
        ([USER, _call("a", "b"), USER], "messages.1: `tool_use` ids were found"),
        # The conversation ends on the calls: nothing answered them either.
        ([USER, _call("a")], "messages.1: `tool_use` ids were found without"),
        # Answered two turns late.
        ([USER, _call("a"), USER, _results("a")], "messages.1: `tool_use` ids"),
        (
            [USER, _call("a"), _results("a", "z")],
            "messages.2.content: unexpected `tool_use_id` found in `tool_result` blocks: z. "
            "Each `tool_result` block must have a corresponding `tool_use` block in the "
            "previous message.",
        ),
        ([_results("a")], "messages.0.content: unexpected `tool_use_id`"),
        # Counted in the request's own indices, system messages included.
        ([SYSTEM, USER, _call("a"), SYSTEM, USER], "messages.2: `tool_use` ids"),
    ],
)
def test_unpaired_calls_and_results_are_anthropics_400(
    messages: list[dict[str, Any]], words: str
) -> None:
    with pytest.raises(ApiError) as caught:
        check_tool_pairs(_turns(*messages))
    assert caught.value.status == 400
    assert words in caught.value.message
