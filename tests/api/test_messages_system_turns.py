"""System-role messages inside a Messages request: leading ones extend the system
prompt, later ones fold into a neighbouring user turn, never between a tool_use and its
result, and Claude Code's `ctx`/`msg` roles are user turns."""

from __future__ import annotations

from typing import Any

import pytest

from api.errors import ApiError
from api.messages_system_turns import place_system_messages, system_text
from api.schemas.messages import ContentBlock, InputMessage


def messages(*items: tuple[str, Any]) -> list[InputMessage]:
    return [InputMessage.model_validate({"role": r, "content": c}) for r, c in items]


def shown(turns: list[tuple[int, InputMessage]]) -> list[tuple[int, str, Any]]:
    return [(i, m.role, m.model_dump(exclude_none=True)["content"]) for i, m in turns]


def test_leading_system_messages_extend_the_system_prompt() -> None:
    cite = [{"type": "text", "text": "Cite."}]
    leading, turns = place_system_messages(
        messages(("system", "Be terse."), ("system", cite), ("user", "Hi"))
    )
    assert leading == "Be terse.\n\nCite."
    assert shown(turns) == [(2, "user", "Hi")]


def test_a_later_one_ends_the_user_turn_before_it_or_starts_the_next() -> None:
    leading, turns = place_system_messages(
        messages(
            ("user", "Hi"),
            ("system", "Reminder A"),
            ("assistant", "Hello"),
            ("system", "Reminder B"),
            ("user", [{"type": "text", "text": "More"}]),
            ("assistant", "Sure"),
            ("system", "Reminder C"),
            ("assistant", "And"),
            ("system", "Reminder D"),
        )
    )
    assert leading == ""
    assert shown(turns) == [
        (0, "user", "Hi\n\nReminder A"),
        (2, "assistant", "Hello"),
        (4, "user", [{"type": "text", "text": "Reminder B\n\nMore"}]),
        (5, "assistant", "Sure"),
        (6, "user", "Reminder C"),  # a turn of its own: an assistant turn follows
        (7, "assistant", "And"),
        (8, "user", "Reminder D"),
    ]


def test_one_between_a_tool_use_and_its_result_goes_after_the_result() -> None:
    call = {"type": "tool_use", "id": "t1", "name": "f", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "42"}
    _, turns = place_system_messages(
        messages(
            ("user", "Go"),
            ("assistant", [call]),
            ("system", "Be careful."),
            ("user", [result]),
        )
    )
    folded = {"type": "tool_result", "tool_use_id": "t1", "content": "42\n\nBe careful."}
    assert shown(turns)[1:] == [(1, "assistant", [call]), (3, "user", [folded])]


def test_claude_code_s_ctx_and_msg_roles_are_user_turns() -> None:
    assert [m.role for m in messages(("ctx", "a"), ("msg", "b"))] == ["user", "user"]


def test_system_blocks_run_together_as_vllm_joins_them_without_the_billing_line() -> None:
    blocks = [
        ContentBlock(type="text", text="x-anthropic-billing-header: cc_version=1"),
        ContentBlock(type="text", text="You are Claude Code."),
        ContentBlock(type="text", text=" Be brief."),
    ]
    assert system_text(blocks, "system") == "You are Claude Code. Be brief."
    with pytest.raises(ApiError, match="only text"):
        system_text([ContentBlock(type="image")], "messages[0].content")
