"""Each `tool_use` answered by a `tool_result` in the next turn, as Anthropic requires.

A conversation that leaves a call without its result would be rendered as if the
tool had answered nothing and generated on from there; Anthropic refuses it with a
400, and so do we, in its words. Likewise a result must answer a call of the turn
just before it. System messages inside `messages` (Claude Code's) are not turns
here: api/messages_system_turns.py moves them after the results they precede.
"""

from __future__ import annotations

from api.errors import ApiError
from api.schemas.messages import InputMessage


def _ids(message: InputMessage, kind: str) -> list[str]:
    """The ids of `message`'s `kind` blocks (tool_use: `id`; tool_result: `tool_use_id`)."""
    if isinstance(message.content, str):
        return []
    field = "id" if kind == "tool_use" else "tool_use_id"
    return [getattr(block, field) or "" for block in message.content if block.type == kind]


def check_tool_pairs(messages: list[InputMessage]) -> None:
    """Raise Anthropic's 400 where a tool_use has no tool_result in the next turn, or a
    tool_result answers no tool_use of the turn before it."""
    turns = [(index, m) for index, m in enumerate(messages) if m.role != "system"]
    calls: list[str] = []
    calling_index = 0
    for index, message in turns:
        results = _ids(message, "tool_result")
        unexpected = [r for r in results if r not in calls]
        if unexpected:
            raise ApiError(
                400,
                f"messages.{index}.content: unexpected `tool_use_id` found in `tool_result` "
                f"blocks: {', '.join(unexpected)}. Each `tool_result` block must have a "
                "corresponding `tool_use` block in the previous message.",
                param="messages",
            )
        _check_answered([c for c in calls if c not in results], calling_index)
        calls = _ids(message, "tool_use")
        calling_index = index
    _check_answered(calls, calling_index)


def _check_answered(unanswered: list[str], index: int) -> None:
    if unanswered:
        raise ApiError(
            400,
            f"messages.{index}: `tool_use` ids were found without `tool_result` blocks "
            f"immediately after: {', '.join(unanswered)}. Each `tool_use` block must "
            "have a corresponding `tool_result` block in the next message.",
            param="messages",
        )
