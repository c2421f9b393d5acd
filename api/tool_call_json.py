"""What every tool-call parser shares: a call read from JSON, and the parsed output.

Parsers (`api/tool_parsers.py` lists them) read the calls a model writes in
its own syntax for `tool_choice: "auto"`; each turns the JSON of one call
into OpenAI's `tool_calls` entry here, so all of them accept the same
spellings ("arguments" or "parameters", an object or a JSON string).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from api.tool_choice import tool_call

# A feed's fields key for text written after one of that feed's calls: the caller
# sends it after the calls, in the order the model wrote them.
AFTER_CALLS = "content_after_calls"


@dataclass
class ParsedOutput:
    content: str | None
    tool_calls: list[dict[str, Any]]


@dataclass
class TextAroundCalls:
    """A parser's content around its tool calls, the same whatever the token splits: the
    text before the first call, and all text after it, are each dropped when whitespace
    alone (the layout around calls is no content), and otherwise kept as written. So a
    stream holds back whitespace until its part shows text (then sends both), and a
    whole answer parsed at once reads the same as the stream's chunks joined."""

    _after: bool = False  # a call was made: text now belongs to the part after calls
    _held: str = ""  # whitespace of a part that has shown no text yet
    _shown: bool = False  # this part has shown text: the rest goes out as it comes

    def fields(
        self, before: list[str], after: list[str], deltas: list[dict[str, Any]], final: bool
    ) -> dict[str, Any]:
        """A feed's delta fields: text before its first call (`content`), text after one
        (AFTER_CALLS), and its calls."""
        lead = self._take("".join(before))
        if deltas and not self._after:
            self._after, self._held, self._shown = True, "", False
        tail = self._take("".join(after))
        if final:
            if not self._after:
                lead += self._held  # no call after all: the text as written
            self._held = ""
        fields: dict[str, Any] = {}
        if lead:
            fields["content"] = lead
        if tail:
            fields[AFTER_CALLS] = tail
        if deltas:
            fields["tool_calls"] = deltas
        return fields

    def _take(self, text: str) -> str:
        if self._shown:
            return text
        self._held += text
        if not self._held.strip():
            return ""
        text, self._held, self._shown = self._held, "", True
        return text


def marker_prefix_len(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`: what a
    stream holds back, since the next text may complete the marker."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def call_from_json(block: str) -> dict[str, Any] | None:
    """A tool call from one call's JSON text, or None if it is not one."""
    try:
        data = json.loads(block)
    except (ValueError, RecursionError):  # not JSON, or past json's own limits
        return None
    return call_from_object(data)


def call_from_object(data: Any) -> dict[str, Any] | None:
    """A tool call from decoded JSON: an object with a string `name` and arguments that
    are an object (or its JSON text, kept as written); else None. Clients call
    `fn(**json.loads(arguments))`, so arguments that are a list or a word are no call."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", data.get("parameters"))
    if arguments is None:
        arguments = {}  # a call without arguments: strict clients expect an object
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments)
        except (ValueError, RecursionError):
            return None
        return tool_call(data["name"], arguments) if isinstance(decoded, dict) else None
    if not isinstance(arguments, dict):
        return None
    return tool_call(data["name"], json.dumps(arguments, ensure_ascii=False))


_DECODER = json.JSONDecoder()


def json_call_list(body: str) -> list[dict[str, Any]] | None:
    """The calls of `body` when it is exactly one JSON list of call objects, else None."""
    try:
        data, end = _DECODER.raw_decode(body)
    except (ValueError, RecursionError):  # not JSON, or past json's own limits
        return None
    if body[end:].strip() or not isinstance(data, list) or not data:
        return None
    calls = [call_from_object(item) for item in data]
    return None if any(call is None for call in calls) else calls  # type: ignore[return-value]
