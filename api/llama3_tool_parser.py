"""The "llama3_json" tool-call parser: Llama 3.1-3.3's JSON tool calls.

Offered tools (by its chat template), a Llama 3 model answers a call with the
whole message as one JSON object, `{"name": ..., "parameters": {...}}`,
several separated by ";", sometimes after the `<|python_tag|>` token. So the
first thing it writes decides: an answer that begins with "{" (or the tag) is
held back and read as calls when it ends; anything else streams as content at
once. Held text that is not all calls goes out unchanged, so nothing the model
wrote is lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from api.tool_call_json import call_from_object

PYTHON_TAG = "<|python_tag|>"
_DECODER = json.JSONDecoder()


@dataclass
class Llama3JsonStream:
    calls: int = 0
    mode: str = "undecided"  # "content" or "call" once the first text shows which
    _held: list[str] = field(default_factory=list)

    def feed(self, text: str, final: bool) -> tuple[dict[str, Any], bool]:
        """Delta fields for this text, and whether any tool call was made so far."""
        self._held.append(text)
        if self.mode == "undecided":
            start = "".join(self._held).lstrip()
            if start.startswith(("{", PYTHON_TAG)):
                self.mode = "call"
            elif (not start or PYTHON_TAG.startswith(start)) and not final:
                return {}, False  # too early to tell
            else:
                self.mode = "content"
        held = "".join(self._held)
        if self.mode == "content":
            self._held = []
            return ({"content": held} if held else {}), False
        if not final:
            return {}, False
        self._held = []
        calls = _calls(held)
        if calls is None:  # JSON-looking text that is not calls: it is the answer
            return ({"content": held} if held else {}), False
        self.calls = len(calls)
        return {"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}, True


def _calls(text: str) -> list[dict[str, Any]] | None:
    """Every call in `text` (objects separated by ";" or whitespace), or None unless the
    whole text is calls."""
    body = text.strip()
    if body.startswith(PYTHON_TAG):
        body = body[len(PYTHON_TAG) :]
    calls: list[dict[str, Any]] = []
    position = 0
    while True:
        while position < len(body) and (body[position].isspace() or body[position] == ";"):
            position += 1
        if position == len(body):
            return calls or None
        try:
            data, position = _DECODER.raw_decode(body, position)
        except (ValueError, RecursionError):
            return None
        call = call_from_object(data)
        if call is None:
            return None
        calls.append(call)
