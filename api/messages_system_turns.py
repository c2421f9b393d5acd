"""Where a Messages request's `system`-role messages go.

Anthropic's API takes the system prompt in `system`, but clients such as Claude Code
also put `{"role": "system"}` messages inside `messages` (a reminder on most turns),
as vLLM's endpoint accepts. Chat templates take one system message, first. So system
messages that lead the conversation extend the system prompt, and later ones are
folded into a neighbouring user turn: onto the end of the user turn before them, or,
after an assistant turn, onto the start of the next user turn (a user turn of their
own where none follows). Only the end of a growing conversation changes from one
request to the next, so the prefix cache keeps serving the earlier turns; and no text
is put between an assistant's `tool_use` and the `tool_result` that answers it (a
system message there goes after that answer).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from api.errors import ApiError
from api.schemas.messages import ContentBlock, InputMessage

# Claude Code prefixes its system prompt with a per-request billing line; dropped, as vLLM
# drops it, since it would defeat prefix caching and tells a local model nothing.
BILLING_HEADER = "x-anthropic-billing-header"

Indexed = tuple[int, InputMessage]  # a message and its place in the request's `messages`


def system_text(system: str | list[ContentBlock] | None, where: str) -> str:
    """The text of a system prompt or system message: its text blocks run together, as
    vLLM joins them, without Claude Code's billing block."""
    if system is None or isinstance(system, str):
        return system or ""
    texts = []
    for block in system:
        if block.type != "text":
            raise ApiError(400, f"{where}: a {block.type!r} block; only text is taken", param=where)
        if block.text and not block.text.startswith(BILLING_HEADER):
            texts.append(block.text)
    return "".join(texts)


def place_system_messages(messages: list[InputMessage]) -> tuple[str, list[Indexed]]:
    """The text the leading system messages add to the system prompt, and the other
    messages (each with its index in the request) with the later system messages folded
    in."""
    lead = 0
    while lead < len(messages) and messages[lead].role == "system":
        lead += 1
    leading = _joined(_text_of(m, i) for i, m in enumerate(messages[:lead]))
    rest = _after_tool_results(list(enumerate(messages))[lead:])
    out: list[Indexed] = []
    pending: list[tuple[int, str]] = []  # system texts after an assistant turn
    for index, message in rest:
        if message.role == "system":
            text = _text_of(message, index)
            if not text:
                continue
            if out and out[-1][1].role == "user" and not pending:
                before, user = out[-1]
                out[-1] = (before, _with_text(user, text, at_end=True))
            else:
                pending.append((index, text))
            continue
        if pending and message.role == "user":
            message = _with_text(message, _joined(t for _, t in pending), at_end=False)
        elif pending:
            out.append(_user_turn(pending))
        pending = []
        out.append((index, message))
    if pending:
        out.append(_user_turn(pending))
    return leading, out


def _user_turn(pending: list[tuple[int, str]]) -> Indexed:
    """System texts with no user turn to join: a user turn of their own, at the first's
    place."""
    return pending[0][0], InputMessage(role="user", content=_joined(t for _, t in pending))


def _text_of(message: InputMessage, index: int) -> str:
    return system_text(message.content, f"messages[{index}].content")


def _joined(texts: Iterable[str]) -> str:
    return "\n\n".join(text for text in texts if text)


def _calls_tools(message: InputMessage) -> bool:
    return (
        message.role == "assistant"
        and isinstance(message.content, list)
        and any(block.type == "tool_use" for block in message.content)
    )


def _after_tool_results(messages: list[Indexed]) -> list[Indexed]:
    """System messages between an assistant's tool_use and the user turn with its results,
    moved after that user turn."""
    out: list[Indexed] = []
    held: list[Indexed] = []
    awaiting_results = False
    for item in messages:
        message = item[1]
        if message.role == "system":
            (held if awaiting_results else out).append(item)
            continue
        if message.role == "assistant":  # no results came: the held ones go first
            out.extend(held)
            held = []
        out.append(item)
        if message.role == "user":
            out.extend(held)
            held = []
        awaiting_results = _calls_tools(message)
    return out + held


def _with_text(message: InputMessage, text: str, *, at_end: bool) -> InputMessage:
    """`message` (a user turn) with `text` joined onto the text at one of its ends; a turn
    of tool results only takes it at the end of the last result."""
    content = message.content
    if isinstance(content, str):
        return message.model_copy(update={"content": _join_ends(content, text, at_end)})
    if at_end and content and all(block.type == "tool_result" for block in content):
        last = content[-1]
        result = last.model_copy(update={"content": _result_with_text(last.content, text)})
        return message.model_copy(update={"content": [*content[:-1], result]})
    blocks = list(content)
    end = -1 if at_end else 0
    if blocks and blocks[end].type == "text":
        joined = _join_ends(blocks[end].text or "", text, at_end)
        blocks[end] = blocks[end].model_copy(update={"text": joined})
    else:
        blocks.insert(len(blocks) if at_end else 0, ContentBlock(type="text", text=text))
    return message.model_copy(update={"content": blocks})


def _join_ends(old: str, text: str, at_end: bool) -> str:
    return _joined((old, text) if at_end else (text, old))


def _result_with_text(content: str | list[dict[str, Any]] | None, text: str) -> Any:
    if content is None or isinstance(content, str):
        return _joined((content or "", text))
    items = list(content)
    if items and items[-1].get("type") == "text":
        items[-1] = {**items[-1], "text": _joined((str(items[-1].get("text") or ""), text))}
    else:
        items.append({"type": "text", "text": text})
    return items
